//! `srcode scan`: the analyser on files, directories or standard input.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use rayon::prelude::*;
use srcode_scan::external::{self, ExternalOptions, Tool};
use srcode_scan::{extract, lang, Finding, Language, Scanner, Severity};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct ScanArgs {
    /// Files or directories to scan (directories recursively, by extension); `-` reads standard
    /// input. Default: standard input.
    paths: Vec<PathBuf>,
    /// Language of standard input or of files whose extension says nothing (c, cpp, python,
    /// java, javascript). Guessed from the text when absent.
    #[arg(long)]
    lang: Option<Language>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// A directory of extra `*.toml` rule files (repeatable). A rule with a built-in id
    /// replaces the built-in one.
    #[arg(long = "rules", value_name = "DIR")]
    rules: Vec<PathBuf>,
    /// Also run external analysers, comma-separated: semgrep, cppcheck, flawfinder, bandit.
    #[arg(long = "with", value_delimiter = ',', value_name = "TOOL,...")]
    with: Vec<String>,
    /// Rules file or directory for semgrep (it runs offline, so it needs local rules).
    #[arg(long, value_name = "PATH")]
    semgrep_config: Option<PathBuf>,
    /// Time limit per external analyser run, in seconds.
    #[arg(long, default_value_t = 120)]
    tool_timeout: u64,
    /// Treat inputs as LLM answers and scan the code of their Markdown fences (`auto`: for
    /// standard input and .md/.txt files).
    #[arg(long, value_enum, default_value_t = Extract::Auto)]
    extract: Extract,
    /// Only report findings at or above this severity.
    #[arg(long, value_enum)]
    min_severity: Option<SeverityArg>,
    /// List the rules (id, CWE, severity, languages, message) and exit.
    #[arg(long)]
    list_rules: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Sarif,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Extract {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum SeverityArg {
    Low,
    Medium,
    High,
    Critical,
}

impl From<SeverityArg> for Severity {
    fn from(s: SeverityArg) -> Self {
        match s {
            SeverityArg::Low => Severity::Low,
            SeverityArg::Medium => Severity::Medium,
            SeverityArg::High => Severity::High,
            SeverityArg::Critical => Severity::Critical,
        }
    }
}

/// One input: a file or standard input, with its bytes.
struct Input {
    name: String,
    path: Option<PathBuf>,
    lang: Option<Language>,
    answer: bool,
}

/// Directory names never descended into.
const SKIP_DIRS: &[&str] = &[
    ".git",
    "node_modules",
    "target",
    "__pycache__",
    ".venv",
    "venv",
];

fn collect(
    path: &Path,
    lang: Option<Language>,
    extract: Extract,
    out: &mut Vec<Input>,
) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if !SKIP_DIRS.contains(&name) && !name.starts_with('.') {
                    collect(&p, lang, extract, out)?;
                }
            } else if lang::from_path(&p).is_some() {
                collect(&p, lang, extract, out)?;
            }
        }
        return Ok(());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let is_text = matches!(ext, "md" | "markdown" | "txt");
    out.push(Input {
        name: path.display().to_string(),
        path: Some(path.to_path_buf()),
        lang: lang::from_path(path).or(lang),
        answer: match extract {
            Extract::Always => true,
            Extract::Never => false,
            Extract::Auto => is_text,
        },
    });
    Ok(())
}

pub fn run(a: ScanArgs) -> Result<i32> {
    // Only the languages being scanned compile their queries; `--list-rules` compiles all,
    // which also checks user rules.
    let scanner = if a.list_rules {
        Scanner::with_rule_dirs(&a.rules)
    } else {
        Scanner::with_rule_dirs_lazy(&a.rules)
    }
    .context("loading rules")?;
    if a.list_rules {
        list_rules(&scanner);
        return Ok(0);
    }
    let tools: Vec<Tool> = a
        .with
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse::<Tool>().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let mut inputs = Vec::new();
    let mut stdin_used = false;
    if a.paths.is_empty() {
        stdin_used = true;
    }
    for p in &a.paths {
        if p.as_os_str() == "-" {
            stdin_used = true;
        } else {
            collect(p, a.lang, a.extract, &mut inputs)?;
        }
    }
    let mut stdin_bytes = Vec::new();
    if stdin_used {
        std::io::stdin()
            .read_to_end(&mut stdin_bytes)
            .context("reading standard input")?;
        inputs.push(Input {
            name: "-".into(),
            path: None,
            lang: a.lang,
            answer: a.extract != Extract::Never,
        });
    }
    let mut langs: Vec<Language> = inputs.iter().filter_map(|i| i.lang).collect();
    langs.sort_by_key(|l| l.name());
    langs.dedup();
    scanner.prepare(&langs).context("compiling rules")?;
    let results: Vec<(Vec<Finding>, Option<String>, Vec<u8>)> = inputs
        .par_iter()
        .map(|inp| {
            let bytes = match &inp.path {
                Some(p) => match std::fs::read(p) {
                    Ok(b) => b,
                    Err(e) => return (Vec::new(), Some(format!("{}: {e}", inp.name)), Vec::new()),
                },
                None => stdin_bytes.clone(),
            };
            let guessed = if inp.answer {
                extract::answer_language(&bytes)
            } else {
                lang::guess(&bytes)
            };
            let Some(l) = inp.lang.or(guessed) else {
                return (
                    Vec::new(),
                    Some(format!(
                        "{}: cannot tell the language; pass --lang (c, cpp, python, java, javascript)",
                        inp.name
                    )),
                    bytes,
                );
            };
            let r = if inp.answer {
                scanner.scan_answer(&bytes, l, &inp.name)
            } else {
                scanner.scan_code(&bytes, l, &inp.name)
            };
            match r {
                Ok(f) => (f, None, bytes),
                Err(e) => (Vec::new(), Some(format!("{}: {e}", inp.name)), bytes),
            }
        })
        .collect();
    let mut findings = Vec::new();
    let mut errors = Vec::new();
    let mut sources = std::collections::HashMap::new();
    for ((f, e, bytes), inp) in results.into_iter().zip(&inputs) {
        if !f.is_empty() {
            sources.insert(inp.name.clone(), bytes);
        }
        findings.extend(f);
        errors.extend(e);
    }
    if !tools.is_empty() {
        let files: Vec<PathBuf> = inputs.iter().filter_map(|i| i.path.clone()).collect();
        let opts = ExternalOptions {
            timeout: Duration::from_secs(a.tool_timeout),
            semgrep_config: a.semgrep_config.clone(),
            search_path: std::env::var_os("SRCODE_TOOLS_BIN")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
            use_path: true,
        };
        for t in tools {
            if files.is_empty() {
                errors.push(format!(
                    "{t}: external analysers need files, not standard input"
                ));
                continue;
            }
            match external::run(t, &files, &opts) {
                Ok(f) => findings.extend(f),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if let Some(min) = a.min_severity {
        let min: Severity = min.into();
        findings.retain(|f| f.severity >= min);
    }
    findings.sort_by(|x, y| {
        (&x.file, x.byte_start, x.byte_end, &x.rule_id).cmp(&(
            &y.file,
            y.byte_start,
            y.byte_end,
            &y.rule_id,
        ))
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match a.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &findings)?;
            writeln!(out)?;
        }
        Format::Sarif => {
            let infos = scanner.rule_infos();
            let source = |name: &str| -> Option<std::borrow::Cow<'_, [u8]>> {
                match sources.get(name) {
                    Some(b) => Some(std::borrow::Cow::Borrowed(b.as_slice())),
                    None => std::fs::read(name).ok().map(std::borrow::Cow::Owned),
                }
            };
            let log =
                srcode_scan::sarif::to_sarif(&findings, &infos, env!("CARGO_PKG_VERSION"), &source);
            serde_json::to_writer_pretty(&mut out, &log)?;
            writeln!(out)?;
        }
        Format::Text => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            for f in &findings {
                print_text(
                    &mut out,
                    f,
                    sources.get(&f.file).map(|b| b.as_slice()),
                    color,
                )?;
            }
            if !findings.is_empty() || inputs.len() > 1 {
                writeln!(
                    out,
                    "{} finding(s) in {} input(s)",
                    findings.len(),
                    inputs.len()
                )?;
            }
        }
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if !errors.is_empty() {
        return Ok(2);
    }
    if inputs.is_empty() {
        bail!("no C, C++, Python, Java or JavaScript file found under the given paths");
    }
    Ok(i32::from(!findings.is_empty()))
}

fn print_text(out: &mut impl Write, f: &Finding, src: Option<&[u8]>, color: bool) -> Result<()> {
    let (sev_color, reset, dim) = if color {
        let c = match f.severity {
            Severity::Critical | Severity::High => "\x1b[1;31m",
            Severity::Medium => "\x1b[33m",
            Severity::Low => "\x1b[36m",
        };
        (c, "\x1b[0m", "\x1b[2m")
    } else {
        ("", "", "")
    };
    let sev = match f.severity {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    };
    let cwe = f.cwe.map(|c| format!(" {c}")).unwrap_or_default();
    writeln!(
        out,
        "{}:{}:{}: {sev_color}{sev}{reset} [{}{cwe}] {}{}",
        f.file,
        f.line,
        f.column,
        f.rule_id,
        f.message,
        if f.tool == "srcode" {
            String::new()
        } else {
            format!(" ({})", f.tool)
        }
    )?;
    if let Some(src) = src {
        let ix = srcode_scan::LineIndex::new(src);
        if let Some(start) = ix.offset(f.line, 1) {
            let end = src[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(src.len(), |i| start + i);
            let line = String::from_utf8_lossy(&src[start..end]);
            let col = f.column.saturating_sub(1).min(end - start);
            let width = if f.end_line == f.line {
                f.end_column.saturating_sub(f.column).max(1)
            } else {
                (end - start).saturating_sub(col).max(1)
            };
            let pad: String = src[start..start + col]
                .iter()
                .map(|&b| if b == b'\t' { '\t' } else { ' ' })
                .collect();
            // Columns are bytes; the caret line is exact for ASCII lines, which code mostly is.
            writeln!(out, "{dim}{:>5} |{reset} {line}", f.line)?;
            writeln!(
                out,
                "{dim}      |{reset} {pad}{sev_color}{}{reset}",
                "^".repeat(width.min(200))
            )?;
        }
    }
    Ok(())
}

fn list_rules(scanner: &Scanner) {
    for r in scanner.rules() {
        let i = &r.info;
        let langs: Vec<&str> = i.languages.iter().map(|l| l.name()).collect();
        println!(
            "{:<36} {:<8} {:<8} {:<22} {}",
            i.id,
            i.cwe.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            format!("{:?}", i.severity).to_lowercase(),
            langs.join(","),
            i.message
        );
    }
}
