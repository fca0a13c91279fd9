//! The sandbox contains what generated code might do: loop, allocate, fork, write, connect.

use srcode_sandbox::{Limits, Sandbox};
use std::time::Duration;

fn sandbox() -> Sandbox {
    Sandbox::new(Limits {
        cpu_seconds: 2,
        wall: Duration::from_secs(5),
        memory_bytes: 256 << 20,
        file_bytes: 1 << 20,
        processes: 8,
        open_files: 32,
        output_bytes: 4096,
    })
}

/// Runs a Python snippet, or prints why the sandbox cannot run here and returns None.
fn py(src: &str) -> Option<srcode_sandbox::RunOutput> {
    match sandbox().run_python(src) {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("SKIP sandbox: {e}");
            None
        }
    }
}

#[test]
fn passing_and_failing_programs_are_told_apart() {
    let Some(ok) = py("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')\n")
    else {
        return;
    };
    assert!(ok.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ok");
    let bad = py("assert 1 + 1 == 3\n").unwrap();
    assert!(!bad.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("AssertionError"));
}

#[test]
fn the_network_is_unreachable() {
    // A server the parent can reach: without isolation the child would connect to it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let Some(o) = py(&format!(
        "import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', {port}))\n    print('connected')\nexcept OSError as e:\n    print('blocked', e)\n"
    )) else {
        return;
    };
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("blocked"),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn runaway_programs_are_stopped() {
    let Some(spin) = py("while True:\n    pass\n") else {
        return;
    };
    assert!(!spin.success());
    assert!(spin.signal.is_some() || spin.timed_out, "{spin:?}");
    assert!(spin.wall < Duration::from_secs(6));
    let sleepy = py("import time\ntime.sleep(60)\n").unwrap();
    assert!(
        sleepy.timed_out && sleepy.wall < Duration::from_secs(7),
        "{sleepy:?}"
    );
    let hog = py("x = bytearray(1 << 30)\nprint('allocated')\n").unwrap();
    assert!(!hog.success());
    assert!(
        String::from_utf8_lossy(&hog.stderr).contains("MemoryError"),
        "{hog:?}"
    );
    let big = py("open('f', 'wb').write(b'x' * (4 << 20))\nprint('wrote')\n").unwrap();
    assert!(!big.success(), "{big:?}");
    let forks = py(
        "import os\nn = 0\ntry:\n    for _ in range(64):\n        if os.fork() == 0:\n            import time; time.sleep(3); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n",
    )
    .unwrap();
    let n: usize = String::from_utf8_lossy(&forks.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n < 8, "forked {n} processes");
    let noisy = py("print('x' * 100000)\n").unwrap();
    assert_eq!(noisy.stdout.len(), 4096);
}

#[test]
fn files_stay_inside_a_fresh_directory() {
    std::env::set_var("SRCODE_SECRET", "leaked");
    let Some(o) = py("import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))\nprint(os.environ.get('SRCODE_SECRET'))\n") else { return };
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("srcode-sandbox-") && out.contains("['main.py']") && out.contains("None"),
        "{out}"
    );
    let e = sandbox()
        .run("/bin/true", &[], &[("../evil", b"x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad file name"), "{e}");
}
