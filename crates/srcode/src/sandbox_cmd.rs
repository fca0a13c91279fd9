//! `srcode sandbox run`: one untrusted program through the sandbox, with a JSON verdict.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use srcode_sandbox::{Isolation, Limits, ProgramLang, Sandbox};

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Run a C or Python program isolated (no network, writes only in a fresh directory,
    /// CPU/wall/memory/file/process limits) and print a JSON verdict: status (ok, timeout,
    /// memory, killed, compile_error, runtime_error), exit_code, stdout, stderr, seconds.
    ///
    /// Exit status: 0 when the program ran and exited 0, 1 otherwise, 2 on a sandbox error.
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Language of FILE: c (compiled with gcc first) or python.
    #[arg(long)]
    pub lang: String,
    /// The program's source file.
    pub file: PathBuf,
    /// File fed to the program's standard input.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Wall-clock limit in seconds (the CPU limit is the same, rounded up).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Address-space limit in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mib: u64,
    /// Largest process count.
    #[arg(long, default_value_t = 32)]
    pub processes: u64,
    /// Bytes of stdout and of stderr kept.
    #[arg(long, default_value_t = 65536)]
    pub output_bytes: usize,
    /// Run even where no network namespace can be created (the program could reach the
    /// network). Without it such runs are refused.
    #[arg(long)]
    pub allow_network: bool,
}

pub fn run(c: SandboxCommand) -> Result<i32> {
    let SandboxCommand::Run(a) = c;
    let lang: ProgramLang = a.lang.parse().context("--lang")?;
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        bail!(
            "--timeout must be a positive number of seconds, got {}",
            a.timeout
        );
    }
    let source = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading the program {}", a.file.display()))?;
    let stdin = match &a.stdin {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("reading --stdin {}", p.display()))?)
        }
        None => None,
    };
    let limits = Limits {
        cpu_seconds: a.timeout.ceil() as u64,
        wall: Duration::from_secs_f64(a.timeout),
        memory_bytes: a.memory_mib << 20,
        processes: a.processes,
        output_bytes: a.output_bytes,
        ..Limits::default()
    };
    let sb = Sandbox::new(limits).with_isolation(Isolation {
        allow_network: a.allow_network,
        ..Isolation::default()
    });
    let v = sb
        .run_program(lang, &source, stdin.as_deref())
        .with_context(|| format!("running {} in the sandbox", a.file.display()))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(if v.passed() { 0 } else { 1 })
}
