//! The hostile-program suite: programs that try to exhaust or escape the machine. Each must be
//! contained (stopped, and its effect confined to its own directory) and reported as such, and
//! none may affect the host or this test runner. Every case runs twice where the machine allows:
//! with Landlock, and with the mount-namespace fallback.

use srcode_sandbox::{Isolation, Limits, ProgramLang, Sandbox, Status, Verdict};
use std::time::Duration;

fn limits() -> Limits {
    Limits {
        cpu_seconds: 2,
        wall: Duration::from_secs(4),
        memory_bytes: 256 << 20,
        file_bytes: 1 << 20,
        processes: 16,
        open_files: 32,
        output_bytes: 8192,
    }
}

/// The sandboxes to try: Landlock (when the kernel has it) and the mount fallback.
fn sandboxes() -> Vec<(&'static str, Sandbox)> {
    let mut v = Vec::new();
    if srcode_sandbox::landlock_abi() > 0 {
        v.push(("landlock", Sandbox::new(limits())));
    } else {
        eprintln!("NOTE: no Landlock on this kernel; testing the mount-namespace fallback only");
    }
    v.push((
        "mount-fallback",
        Sandbox::new(limits()).with_isolation(Isolation {
            force_mount_fallback: true,
            ..Isolation::default()
        }),
    ));
    v
}

/// Runs `src` in every sandbox; None (with the reason printed) where the machine allows none.
fn run_all(lang: ProgramLang, src: &str) -> Vec<(&'static str, Verdict)> {
    let mut out = Vec::new();
    for (name, sb) in sandboxes() {
        match sb.run_program(lang, src, None) {
            Ok(v) => out.push((name, v)),
            Err(e) => eprintln!("SKIP {name}: {e}"),
        }
    }
    out
}

#[test]
fn an_infinite_loop_times_out() {
    for (mode, v) in run_all(ProgramLang::Python, "while True:\n    pass\n") {
        assert_eq!(v.status, Status::Timeout, "{mode}: {v:?}");
        assert!(v.seconds < 5.0, "{mode}: {}", v.seconds);
    }
    for (mode, v) in run_all(
        ProgramLang::C,
        "#include <unistd.h>\nint main(void){ for(;;) sleep(1); }\n",
    ) {
        assert_eq!(v.status, Status::Timeout, "{mode}: {v:?}");
    }
}

#[test]
fn a_fork_bomb_is_contained_and_leaves_no_process() {
    let bomb = "#include <unistd.h>\n#include <stdio.h>\nint main(void){ printf(\"%d\\n\", (int)getpgrp()); fflush(stdout); for(int i=0;i<100000;i++) fork(); return 0; }\n";
    for (mode, v) in run_all(ProgramLang::C, bomb) {
        assert!(v.seconds < 6.0, "{mode}: {v:?}");
        // No process of the bomb survives the run.
        std::thread::sleep(Duration::from_millis(200));
        let pgid = v.stdout.lines().next().unwrap_or("").trim().to_string();
        assert!(!pgid.is_empty(), "{mode}: {v:?}");
        let left = std::process::Command::new("pgrep")
            .args(["-g", &pgid])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert!(left.is_empty(), "{mode}: processes left: {left}");
    }
    let py = "import os\nn = 0\nfor _ in range(1000):\n    try:\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\n    except OSError:\n        break\nprint(n)\n";
    for (mode, v) in run_all(ProgramLang::Python, py) {
        let n: usize = v.stdout.trim().parse().unwrap_or(0);
        assert!(n < 16, "{mode}: forked {n}");
    }
}

#[test]
fn a_memory_bomb_is_reported_as_memory() {
    let py = "x = []\nwhile True:\n    x.append(bytearray(1 << 24))\n";
    for (mode, v) in run_all(ProgramLang::Python, py) {
        assert_eq!(v.status, Status::Memory, "{mode}: {v:?}");
    }
    let c = "#include <stdlib.h>\n#include <string.h>\n#include <stdio.h>\nint main(void){ for(;;){ char *p = malloc(1<<24); if(!p){ fprintf(stderr, \"out of memory\\n\"); return 3; } memset(p, 1, 1<<24); } }\n";
    for (mode, v) in run_all(ProgramLang::C, c) {
        assert_eq!(v.status, Status::Memory, "{mode}: {v:?}");
    }
}

#[test]
fn writes_outside_the_directory_fail_and_leave_nothing() {
    let target = std::env::temp_dir().join(format!("srcode-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&target);
    let src = format!(
        "import os\nok = []\nfor p in [{t:?}, '../srcode-escape-parent', '/var/tmp/srcode-escape', '/dev/shm/srcode-escape']:\n    try:\n        open(p, 'w').write('x')\n        ok.append(p)\n    except OSError as e:\n        pass\nopen('inside.txt', 'w').write('fine')\nprint('escaped', ok)\nprint(open('inside.txt').read())\n",
        t = target.display().to_string()
    );
    for (mode, v) in run_all(ProgramLang::Python, &src) {
        assert!(v.stdout.contains("escaped []"), "{mode}: {v:?}");
        assert!(
            v.stdout.contains("fine"),
            "{mode}: writing its own directory works: {v:?}"
        );
        assert!(!target.exists(), "{mode}: {} was written", target.display());
        assert!(!Path::new("/var/tmp/srcode-escape").exists(), "{mode}");
        assert!(!Path::new("/dev/shm/srcode-escape").exists(), "{mode}");
    }
}

use std::path::Path;

#[test]
fn sockets_reach_nothing() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let src = format!(
        "import socket\nfor host in ['127.0.0.1', '1.1.1.1']:\n    s = socket.socket()\n    s.settimeout(1)\n    try:\n        s.connect((host, {port}))\n        print('connected', host)\n    except OSError:\n        print('blocked', host)\n"
    );
    for (mode, v) in run_all(ProgramLang::Python, &src) {
        assert!(!v.stdout.contains("connected"), "{mode}: {v:?}");
        assert_eq!(v.stdout.matches("blocked").count(), 2, "{mode}: {v:?}");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing reached the host's socket"
    );
}

#[test]
fn huge_output_is_cut_and_flagged() {
    for (mode, v) in run_all(
        ProgramLang::Python,
        "import sys\nfor _ in range(2000):\n    sys.stdout.write('y' * 50000)\n",
    ) {
        assert!(v.truncated, "{mode}");
        assert_eq!(v.stdout.len(), 8192, "{mode}");
        assert!(v.seconds < 5.0, "{mode}: {}", v.seconds);
    }
}

#[test]
fn the_test_runner_cannot_be_signalled() {
    // Signal 0 checks the permission without delivering anything, so a failure cannot take
    // the runner down with it.
    let src = format!(
        "import os\ntry:\n    os.kill({}, 0)\n    print('allowed')\nexcept OSError as e:\n    print('denied', e.errno)\n",
        std::process::id()
    );
    for (mode, v) in run_all(ProgramLang::Python, &src) {
        let guarded = v
            .isolation
            .iter()
            .any(|l| l == "landlock-signal" || l == "own-uid");
        if !guarded {
            eprintln!("NOTE {mode}: neither Landlock signal scoping nor a uid of its own here");
            continue;
        }
        assert!(v.stdout.starts_with("denied"), "{mode}: {v:?}");
    }
}

#[test]
fn c_programs_compile_run_and_read_stdin() {
    let sb = Sandbox::new(limits());
    let echo = "#include <stdio.h>\nint main(void){ char b[64]; if(!fgets(b, sizeof b, stdin)) return 1; printf(\"got %s\", b); return 0; }\n";
    let v = match sb.run_program(ProgramLang::C, echo, Some(b"hello\n")) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("SKIP sandbox: {e}");
            return;
        }
    };
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(v.stdout, "got hello\n");
    let broken = sb
        .run_program(ProgramLang::C, "int main(void){ return nope; }\n", None)
        .unwrap();
    assert_eq!(broken.status, Status::CompileError, "{broken:?}");
    assert!(broken.stderr.contains("nope"), "{broken:?}");
    let fails = sb
        .run_program(ProgramLang::C, "int main(void){ return 7; }\n", None)
        .unwrap();
    assert_eq!(
        (fails.status, fails.exit_code),
        (Status::RuntimeError, Some(7))
    );
    let segv = sb
        .run_program(
            ProgramLang::C,
            "int main(void){ volatile int *p = 0; return *p; }\n",
            None,
        )
        .unwrap();
    assert_eq!(segv.status, Status::Killed, "{segv:?}");
    assert_eq!(segv.signal, Some(11));
}
