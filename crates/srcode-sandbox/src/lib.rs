//! The sandbox for untrusted code. Every run gets a fresh temporary directory as its working
//! directory and home, an empty environment (plus a fixed `PATH`), and:
//!
//! - **no network**: a new, empty network namespace (`unshare(CLONE_NEWNET)`, inside a new user
//!   namespace when the process is not privileged), plus a Landlock rule set that denies TCP
//!   bind and connect where the kernel has it; when no network namespace can be made the run is
//!   refused with an error, unless the caller opted in to [`Isolation::allow_network`];
//! - **no writes outside its directory**: Landlock (Linux ≥ 5.13) allows creating, writing,
//!   removing and renaming files only beneath the run's directory (and writing `/dev/null`);
//!   where Landlock is missing, a private mount namespace remounts every other mount read-only.
//!   Landlock also scopes signals, so the code cannot signal processes outside the sandbox;
//! - **limits** (`setrlimit`): CPU seconds, address space, size of written files, open files and
//!   processes, plus a wall-clock deadline after which the whole process group is killed;
//! - **a user of its own** when srcode runs as root (a fresh unprivileged uid per run), so the
//!   limit on processes holds per run and runs cannot signal each other;
//! - **bounded output**: stdout and stderr are kept up to a byte limit each.
//!
//! [`Sandbox::run_program`] runs a C or Python program (C compiled with gcc first) and returns a
//! [`Verdict`]. Linux only.

use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
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
    #[error("sandbox: unsupported language `{0}` (c and python run here)")]
    Language(String),
}

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub cpu_seconds: u64,
    #[serde(with = "secs")]
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

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
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

/// What isolation a run insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Isolation {
    /// Run even when no network namespace can be created (the code could then reach the
    /// network). Off by default: such runs are refused.
    pub allow_network: bool,
    /// Skip Landlock and contain writes with the mount-namespace fallback (for testing the
    /// fallback; Landlock is used whenever the kernel has it otherwise).
    pub force_mount_fallback: bool,
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
    /// Whether stdout or stderr was longer than the limit (and cut).
    pub truncated: bool,
    pub wall: Duration,
}

impl RunOutput {
    /// Exited with status 0 before the deadline.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// The outcome class of a program run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Wall-clock deadline or CPU-time limit.
    Timeout,
    /// The address-space limit (allocation failed).
    Memory,
    /// Killed by another signal.
    Killed,
    CompileError,
    /// Exited with a non-zero status.
    RuntimeError,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Timeout => "timeout",
            Status::Memory => "memory",
            Status::Killed => "killed",
            Status::CompileError => "compile_error",
            Status::RuntimeError => "runtime_error",
        }
    }
}

/// The verdict on one program run, as `srcode sandbox run` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout or stderr exceeded the output limit and was cut.
    pub truncated: bool,
    pub seconds: f64,
    /// How the run was contained: `netns`, `landlock-fs`, `landlock-net`, `mount-ro`, `own-uid`.
    pub isolation: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.status == Status::Ok
    }
}

/// A program language the sandbox can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgramLang {
    C,
    Python,
}

impl std::str::FromStr for ProgramLang {
    type Err = SandboxError;
    fn from_str(s: &str) -> Result<Self, SandboxError> {
        match s.to_ascii_lowercase().as_str() {
            "c" => Ok(ProgramLang::C),
            "python" | "py" | "python3" => Ok(ProgramLang::Python),
            other => Err(SandboxError::Language(other.to_string())),
        }
    }
}

/// A sandbox configuration; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    pub limits: Limits,
    pub isolation: Isolation,
}

/// Reads up to `limit` bytes, draining the rest so the child never blocks on a full pipe.
fn read_limited(mut r: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                cut |= n > room;
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (out, cut)
}

/// Sets one resource limit (soft and hard).
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    set_limits(resource, value, value)
}

fn set_limits(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is shared.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Landlock (raw system calls; the constants are the kernel's UAPI)

const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const SYS_LANDLOCK_ADD_RULE: libc::c_long = 445;
const SYS_LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

const FS_WRITE_FILE: u64 = 1 << 1;
const FS_REMOVE_DIR: u64 = 1 << 4;
const FS_REMOVE_FILE: u64 = 1 << 5;
const FS_MAKE_CHAR: u64 = 1 << 6;
const FS_MAKE_DIR: u64 = 1 << 7;
const FS_MAKE_REG: u64 = 1 << 8;
const FS_MAKE_SOCK: u64 = 1 << 9;
const FS_MAKE_FIFO: u64 = 1 << 10;
const FS_MAKE_BLOCK: u64 = 1 << 11;
const FS_MAKE_SYM: u64 = 1 << 12;
const FS_REFER: u64 = 1 << 13;
const FS_TRUNCATE: u64 = 1 << 14;
const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel (0: none).
pub fn landlock_abi() -> i64 {
    // SAFETY: the version query reads no memory.
    let v = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// Write accesses Landlock handles at `abi`.
fn fs_write_access(abi: i64) -> u64 {
    let mut a = FS_WRITE_FILE
        | FS_REMOVE_DIR
        | FS_REMOVE_FILE
        | FS_MAKE_CHAR
        | FS_MAKE_DIR
        | FS_MAKE_REG
        | FS_MAKE_SOCK
        | FS_MAKE_FIFO
        | FS_MAKE_BLOCK
        | FS_MAKE_SYM;
    if abi >= 2 {
        a |= FS_REFER;
    }
    if abi >= 3 {
        a |= FS_TRUNCATE;
    }
    a
}

/// Restricts the calling (child) process: writes only beneath `dir_fd` (and to `null_fd`), no
/// TCP (ABI ≥ 4), no signals or abstract sockets outside (ABI ≥ 6). Async-signal-safe.
fn landlock_restrict(abi: i64, dir_fd: i32, null_fd: i32) -> std::io::Result<()> {
    let fs = fs_write_access(abi);
    let attr = RulesetAttr {
        handled_access_fs: fs,
        handled_access_net: if abi >= 4 {
            NET_BIND_TCP | NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if abi >= 6 {
            SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL
        } else {
            0
        },
    };
    let size = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: `attr` outlives the call and `size` does not exceed it.
    let ruleset = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            &attr as *const RulesetAttr,
            size,
            0u32,
        )
    };
    if ruleset < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ruleset = ruleset as i32;
    let rules = [
        PathBeneathAttr {
            allowed_access: fs,
            parent_fd: dir_fd,
        },
        PathBeneathAttr {
            allowed_access: FS_WRITE_FILE | if abi >= 3 { FS_TRUNCATE } else { 0 },
            parent_fd: null_fd,
        },
    ];
    for rule in &rules {
        // SAFETY: `rule` is a valid path-beneath attribute for the duration of the call.
        if unsafe {
            libc::syscall(
                SYS_LANDLOCK_ADD_RULE,
                ruleset,
                LANDLOCK_RULE_PATH_BENEATH,
                rule as *const PathBeneathAttr,
                0u32,
            )
        } != 0
        {
            let e = std::io::Error::last_os_error();
            // SAFETY: closes the fd we created.
            unsafe { libc::close(ruleset) };
            return Err(e);
        }
    }
    // SAFETY: prctl and the restrict call only change this process's security state.
    let r = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            -1
        } else {
            libc::syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0u32)
        }
    };
    let e = std::io::Error::last_os_error();
    // SAFETY: closes the fd we created.
    unsafe { libc::close(ruleset) };
    if r != 0 {
        return Err(e);
    }
    Ok(())
}

/// Mount points of this process (from `/proc/self/mountinfo`), for the read-only fallback.
fn mount_points() -> std::io::Result<Vec<CString>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(mp) = line.split(' ').nth(4) {
            // The kernel escapes spaces and the like as a backslash and three octal digits.
            let b = mp.as_bytes();
            let mut s = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let octal = b.get(i + 1..i + 4).and_then(|d| {
                    std::str::from_utf8(d)
                        .ok()
                        .and_then(|d| u8::from_str_radix(d, 8).ok())
                });
                match octal {
                    Some(v) if b[i] == b'\\' => {
                        s.push(v);
                        i += 4;
                    }
                    _ => {
                        s.push(b[i]);
                        i += 1;
                    }
                }
            }
            if let Ok(c) = CString::new(s) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The mount-namespace fallback (child side, async-signal-safe): a private mount namespace in
/// which the run's directory is bind-mounted onto itself (staying writable) and every other
/// mount is remounted read-only.
/// The caller has already entered the new mount namespace.
fn mount_readonly(dir: &CString, mounts: &[CString]) -> std::io::Result<()> {
    // SAFETY: the calls below take NUL-terminated strings that outlive them.
    unsafe {
        let none = c"none".as_ptr();
        let root = c"/".as_ptr();
        if libc::mount(
            none,
            root,
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        for m in mounts {
            if m.as_bytes() == dir.as_bytes() || m.as_bytes().starts_with(b"/proc") {
                continue;
            }
            // Mounts that cannot be remounted (hidden, or locked by the parent namespace) are
            // left; the kernel refuses writes through locked read-only mounts anyway.
            let _ = libc::mount(
                none,
                m.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            );
        }
    }
    Ok(())
}

/// Which namespaces and user the child gets (decided in the parent).
#[derive(Clone, Copy)]
struct Plan {
    root: bool,
    landlock: i64,
    mount_fallback: bool,
    allow_network: bool,
}

/// A user id of its own for each run when srcode runs as root: the process quota
/// (`RLIMIT_NPROC`) is counted per user, so runs in parallel (or a fork bomb in one of them)
/// cannot starve each other, and runs cannot signal each other. The ids have no passwd entry;
/// the code reads the system's files through their "other" permissions.
fn run_uid() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
    1_000_000 + (std::process::id() % 1000) * 1000 + n
}

fn check_name(name: &str) -> Result<(), SandboxError> {
    let p = Path::new(name);
    if p.is_absolute() || p.components().count() != 1 || name.starts_with('.') || name.is_empty() {
        return Err(SandboxError::BadFileName(name.to_string()));
    }
    Ok(())
}

/// A fresh directory for one or more commands of a run.
struct Workdir {
    dir: tempfile::TempDir,
    fd: OwnedFd,
    /// The user the run's processes get when srcode runs as root.
    uid: u32,
}

impl Workdir {
    fn new(files: &[(&str, &[u8])], root: bool) -> Result<Self, SandboxError> {
        for (name, _) in files {
            check_name(name)?;
        }
        let dir = tempfile::Builder::new()
            .prefix("srcode-sandbox-")
            .tempdir()?;
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content)?;
        }
        let uid = run_uid();
        if root {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid))?;
            for (name, _) in files {
                std::os::unix::fs::chown(dir.path().join(name), Some(uid), Some(uid))?;
            }
        }
        let fd: OwnedFd = std::fs::File::open(dir.path())?.into();
        Ok(Workdir { dir, fd, uid })
    }
}

impl Sandbox {
    pub fn new(limits: Limits) -> Self {
        Sandbox {
            limits,
            isolation: Isolation::default(),
        }
    }

    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    fn plan(&self) -> Plan {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let abi = if self.isolation.force_mount_fallback {
            0
        } else {
            landlock_abi()
        };
        Plan {
            root,
            landlock: abi,
            mount_fallback: abi == 0,
            allow_network: self.isolation.allow_network,
        }
    }

    /// The isolation layers a run gets on this machine.
    pub fn isolation_layers(&self) -> Vec<String> {
        let p = self.plan();
        let mut v = vec!["netns".to_string()];
        if p.landlock > 0 {
            v.push("landlock-fs".into());
            if p.landlock >= 4 {
                v.push("landlock-net".into());
            }
            if p.landlock >= 6 {
                v.push("landlock-signal".into());
            }
        } else {
            v.push("mount-ro".into());
        }
        if p.root {
            v.push("own-uid".into());
        }
        v
    }

    /// Runs `program args...` in a fresh directory holding `files` (name, content).
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        files: &[(&str, &[u8])],
    ) -> Result<RunOutput, SandboxError> {
        let plan = self.plan();
        let wd = Workdir::new(files, plan.root)?;
        self.exec(&wd, plan, program, args, None, &self.limits)
    }

    /// One command inside `wd`.
    fn exec(
        &self,
        wd: &Workdir,
        plan: Plan,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
        l: &Limits,
    ) -> Result<RunOutput, SandboxError> {
        let path = wd.dir.path();
        let l = *l;
        let dir_c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            SandboxError::Isolation {
                program: program.into(),
                reason: "temporary directory path holds a NUL byte".into(),
            }
        })?;
        let mounts = if plan.mount_fallback {
            mount_points()?
        } else {
            Vec::new()
        };
        let null: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")?
            .into();
        let dir_fd = wd.fd.as_raw_fd();
        let null_fd = null.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(path)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", path)
            .env("TMPDIR", path)
            .env("LANG", "C.UTF-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let uid = wd.uid;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setsid, unshare, mount, setrlimit, setgroups/setgid/
        // setuid, prctl, landlock); everything it reads was prepared by the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ns = if plan.mount_fallback {
                    libc::CLONE_NEWNET | libc::CLONE_NEWNS
                } else {
                    libc::CLONE_NEWNET
                };
                if libc::unshare(ns) != 0
                    && libc::unshare(libc::CLONE_NEWUSER | ns) != 0
                    && (!plan.allow_network || plan.mount_fallback)
                {
                    return Err(std::io::Error::last_os_error());
                }
                if plan.mount_fallback {
                    mount_readonly(&dir_c, &mounts)?;
                    // The working directory was entered before the bind mount covered it.
                    if libc::chdir(dir_c.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later.
                set_limits(libc::RLIMIT_CPU, l.cpu_seconds, l.cpu_seconds + 1)?;
                set_limit(libc::RLIMIT_AS, l.memory_bytes)?;
                set_limit(libc::RLIMIT_FSIZE, l.file_bytes)?;
                set_limit(libc::RLIMIT_NOFILE, l.open_files)?;
                set_limit(libc::RLIMIT_CORE, 0)?;
                if plan.root
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                if plan.landlock > 0 {
                    landlock_restrict(plan.landlock, dir_fd, null_fd)?;
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
        drop(null);
        let writer = match (child.stdin.take(), stdin) {
            (Some(mut w), Some(data)) => {
                let data = data.to_vec();
                Some(std::thread::spawn(move || {
                    let _ = w.write_all(&data);
                }))
            }
            _ => None,
        };
        let out = child.stdout.take();
        let err = child.stderr.take();
        let limit = l.output_bytes;
        let t_out = std::thread::spawn(move || {
            out.map(|o| read_limited(o, limit))
                .unwrap_or((Vec::new(), false))
        });
        let t_err = std::thread::spawn(move || {
            err.map(|e| read_limited(e, limit))
                .unwrap_or((Vec::new(), false))
        });
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
            std::thread::sleep(Duration::from_millis(2));
        };
        // Leftover background processes of the group go too (they would otherwise keep the
        // output pipes open and the user's process quota full); a fork bomb may still be
        // forking, so repeat until the group is gone (bounded).
        let reap_deadline = Instant::now() + Duration::from_secs(2);
        // SAFETY: as above; harmless when the group is gone.
        while unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 && Instant::now() < reap_deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        use std::os::unix::process::ExitStatusExt;
        let (stdout, cut_out) = t_out.join().unwrap_or_default();
        let (stderr, cut_err) = t_err.join().unwrap_or_default();
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok(RunOutput {
            code: status.code(),
            signal: status.signal(),
            timed_out,
            stdout,
            stderr,
            truncated: cut_out || cut_err,
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

    /// Runs a program and classifies the outcome. C is compiled with gcc (`-O1 -std=gnu11
    /// -lm`, under the same isolation, with a 4× time budget) into the same directory first.
    pub fn run_program(
        &self,
        lang: ProgramLang,
        source: &str,
        stdin: Option<&[u8]>,
    ) -> Result<Verdict, SandboxError> {
        let plan = self.plan();
        let isolation = self.isolation_layers();
        let start = Instant::now();
        let out = match lang {
            ProgramLang::Python => {
                let wd = Workdir::new(&[("main.py", source.as_bytes())], plan.root)?;
                self.exec(
                    &wd,
                    plan,
                    "/usr/bin/env",
                    &["python3", "-I", "main.py"],
                    stdin,
                    &self.limits,
                )?
            }
            ProgramLang::C => {
                let wd = Workdir::new(&[("main.c", source.as_bytes())], plan.root)?;
                let mut cl = self.limits;
                cl.cpu_seconds = cl.cpu_seconds.max(1) * 4;
                cl.wall *= 4;
                cl.memory_bytes = cl.memory_bytes.max(1 << 30);
                cl.processes = cl.processes.max(16);
                cl.file_bytes = cl.file_bytes.max(64 << 20);
                let cc = self.exec(
                    &wd,
                    plan,
                    "/usr/bin/env",
                    &[
                        "gcc",
                        "-O1",
                        "-std=gnu11",
                        "-w",
                        "-o",
                        "main",
                        "main.c",
                        "-lm",
                    ],
                    None,
                    &cl,
                )?;
                if !cc.success() {
                    return Ok(Verdict {
                        status: if cc.timed_out {
                            Status::Timeout
                        } else {
                            Status::CompileError
                        },
                        exit_code: cc.code,
                        signal: cc.signal,
                        stdout: String::from_utf8_lossy(&cc.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&cc.stderr).into_owned(),
                        truncated: cc.truncated,
                        seconds: start.elapsed().as_secs_f64(),
                        isolation,
                    });
                }
                self.exec(&wd, plan, "./main", &[], stdin, &self.limits)?
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let status = classify(&out, &stderr);
        Ok(Verdict {
            status,
            exit_code: out.code,
            signal: out.signal,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            truncated: out.truncated,
            seconds: out.wall.as_secs_f64(),
            isolation,
        })
    }
}

/// The outcome class of a finished run.
fn classify(out: &RunOutput, stderr: &str) -> Status {
    if out.timed_out || out.signal == Some(libc::SIGXCPU) {
        return Status::Timeout;
    }
    let oom = [
        "MemoryError",
        "std::bad_alloc",
        "Cannot allocate memory",
        "out of memory",
    ]
    .iter()
    .any(|m| stderr.contains(m));
    if oom {
        return Status::Memory;
    }
    match (out.code, out.signal) {
        (Some(0), _) => Status::Ok,
        (Some(_), _) => Status::RuntimeError,
        (None, Some(_)) => Status::Killed,
        (None, None) => Status::Killed,
    }
}
