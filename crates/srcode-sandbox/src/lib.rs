//! The sandbox for untrusted code. Every run gets a fresh temporary directory as its working
//! directory and home, an empty environment (plus a fixed `PATH`), no standard input, and:
//!
//! - **no network**: a new, empty network namespace (`unshare(CLONE_NEWNET)`, inside a new user
//!   namespace when the process is not privileged); when neither is allowed the run is refused
//!   with an error rather than run with network access;
//! - **limits** (`setrlimit`): CPU seconds, address space, size of written files, open files and
//!   processes, plus a wall-clock deadline after which the whole process group is killed;
//! - **another user** when srcode runs as root (uid/gid 65534, `nobody`), so the limits on
//!   processes hold and the code cannot touch the caller's files;
//! - **bounded output**: stdout and stderr are kept up to a byte limit each.
//!
//! Linux only.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the sandbox itself (not of the code it runs).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: {0}")]
    Io(#[from] std::io::Error),
    /// The child could not be isolated as required (network namespace, limits).
    #[error("sandbox: cannot start `{program}` isolated: {reason}")]
    Isolation { program: String, reason: String },
    #[error("sandbox: bad file name {0:?} (must be a plain relative name)")]
    BadFileName(String),
}

/// Resource limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cpu_seconds: u64,
    pub wall: Duration,
    /// Address-space limit in bytes.
    pub memory_bytes: u64,
    /// Largest file the code may write, in bytes.
    pub file_bytes: u64,
    pub processes: u64,
    pub open_files: u64,
    /// Bytes of stdout and of stderr kept.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_seconds: 10,
            wall: Duration::from_secs(20),
            memory_bytes: 1 << 30,
            file_bytes: 16 << 20,
            processes: 32,
            open_files: 64,
            output_bytes: 64 << 10,
        }
    }
}

/// What happened to a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// Exit code, when the process exited.
    pub code: Option<i32>,
    /// Terminating signal, when it was killed.
    pub signal: Option<i32>,
    /// Killed at the wall-clock deadline.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub wall: Duration,
}

impl RunOutput {
    /// Exited with status 0 before the deadline.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// A sandbox configuration; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    pub limits: Limits,
}

fn read_limited(mut r: impl Read, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
                // Keep draining so the child never blocks on a full pipe.
            }
        }
    }
    out
}

/// Sets one resource limit (soft and hard).
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is shared.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling (child) process into a new network namespace; unprivileged processes
/// need a new user namespace for that.
fn isolate_network() -> std::io::Result<()> {
    // SAFETY: unshare only changes namespaces of the calling process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}

impl Sandbox {
    pub fn new(limits: Limits) -> Self {
        Sandbox { limits }
    }

    /// Runs `program args...` in a fresh directory holding `files` (name, content).
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        files: &[(&str, &[u8])],
    ) -> Result<RunOutput, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix("srcode-sandbox-")
            .tempdir()?;
        for (name, content) in files {
            let p = Path::new(name);
            if p.is_absolute() || p.components().count() != 1 || name.starts_with('.') {
                return Err(SandboxError::BadFileName(name.to_string()));
            }
            std::fs::write(dir.path().join(p), content)?;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let nobody: u32 = 65534;
        if root {
            std::os::unix::fs::chown(dir.path(), Some(nobody), Some(nobody))?;
            for (name, _) in files {
                std::os::unix::fs::chown(dir.path().join(name), Some(nobody), Some(nobody))?;
            }
        }
        let l = self.limits;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir.path())
            .env("TMPDIR", dir.path())
            .env("LANG", "C.UTF-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setsid, unshare, setrlimit, setgroups/setgid/setuid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                isolate_network()?;
                set_limit(libc::RLIMIT_CPU, l.cpu_seconds)?;
                set_limit(libc::RLIMIT_AS, l.memory_bytes)?;
                set_limit(libc::RLIMIT_FSIZE, l.file_bytes)?;
                set_limit(libc::RLIMIT_NOFILE, l.open_files)?;
                set_limit(libc::RLIMIT_CORE, 0)?;
                if root
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(nobody) != 0
                        || libc::setuid(nobody) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                set_limit(libc::RLIMIT_NPROC, l.processes)?;
                Ok(())
            });
        }
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| SandboxError::Isolation {
            program: program.to_string(),
            reason: format!(
                "{e} (the network namespace needs root or unprivileged user namespaces; \
                 the program must exist)"
            ),
        })?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let limit = l.output_bytes;
        let t_out =
            std::thread::spawn(move || out.map(|o| read_limited(o, limit)).unwrap_or_default());
        let t_err =
            std::thread::spawn(move || err.map(|e| read_limited(e, limit)).unwrap_or_default());
        let pgid = child.id() as libc::pid_t;
        let mut timed_out = false;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if start.elapsed() >= l.wall {
                timed_out = true;
                // SAFETY: signals the child's own process group (it called setsid).
                unsafe {
                    libc::killpg(pgid, libc::SIGKILL);
                }
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Leftover background processes of the group go too.
        // SAFETY: as above; harmless when the group is gone.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(RunOutput {
            code: status.code(),
            signal: status.signal(),
            timed_out,
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
            wall: start.elapsed(),
        })
    }

    /// Runs a Python program (`main.py` holding `source`) with `python3 -I` (isolated mode:
    /// no user site-packages, no environment-controlled paths).
    pub fn run_python(&self, source: &str) -> Result<RunOutput, SandboxError> {
        self.run(
            "/usr/bin/env",
            &["python3", "-I", "main.py"],
            &[("main.py", source.as_bytes())],
        )
    }
}
