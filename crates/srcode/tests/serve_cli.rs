//! `srcode serve` as users run it: the official `openai` client and the trainer adapters in
//! `integrations/` against the live server, and bad clients (malformed, huge, wrongly typed,
//! slow, unauthenticated, too many) that get clean JSON errors without taking it down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Starts `srcode serve` on a free port with `args`; None (with a printed reason) without the
/// default model.
fn start(args: &[&str], env: &[(&str, &str)]) -> Option<Server> {
    let Some(model) = srcode_lm::tokenizer::default_test_gguf() else {
        eprintln!("SKIP serve: the default model is not fetched (srcode model fetch)");
        return None;
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_srcode"));
    cmd.args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("srcode serve exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Some(Server {
        child,
        url: format!("http://{addr}"),
        addr,
    })
}

/// One raw HTTP/1.1 exchange: returns (status, body).
fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn post(addr: &str, path: &str, body: &[u8], extra: &str) -> (u16, String) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req)
}

/// The JSON error's message, asserting the OpenAI error shape.
fn error_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    assert!(v["error"]["type"].is_string(), "{body}");
    v["error"]["message"].as_str().unwrap().to_string()
}

fn python_tests(python: &Path, file: &str, url: &str) {
    let out = Command::new(python)
        .args(["-m", "unittest", "-v", file])
        .current_dir(repo().join("integrations/tests"))
        .env("SRCODE_URL", url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{file}:\n{err}");
    assert!(err.contains("OK"), "{err}");
}

fn serve_venv() -> Option<PathBuf> {
    let py = repo().join(".venv-serve/bin/python");
    if py.exists() {
        Some(py)
    } else {
        eprintln!("SKIP python clients: .venv-serve is missing (scripts/test.sh installs openai and numpy there)");
        None
    }
}

#[test]
fn openai_client_and_trainer_adapters_work_against_the_live_server() {
    let Some(s) = start(&[], &[]) else { return };
    let Some(py) = serve_venv() else { return };
    python_tests(&py, "test_openai_client.py", &s.url);
    python_tests(&py, "test_adapters.py", &s.url);
    // The server kept count.
    let (code, metrics) = raw(
        &s.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert!(
        metrics.contains("srcode_requests_total{route=\"/v1/chat/completions\",status=\"200\"}")
    );
    assert!(
        metrics.contains("srcode_requests_total{route=\"/v1/chat/completions\",status=\"400\"}")
    );
    let generated: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("srcode_generated_tokens_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(generated > 50.0, "{metrics}");
}

#[test]
fn bad_requests_get_json_errors_and_the_server_stays_up() {
    let Some(s) = start(
        &[
            "--rewards-only",
            "--max-body-bytes",
            "65536",
            "--timeout",
            "2",
        ],
        &[],
    ) else {
        return;
    };
    let a = &s.addr;
    let cases: &[(&str, &[u8], u16, &str)] = &[
        (
            "/v1/rewards/token",
            b"{not json",
            400,
            "not a valid request",
        ),
        ("/v1/rewards/token", b"", 400, "empty"),
        ("/v1/rewards/token", b"42", 400, "JSON object"),
        (
            "/v1/rewards/token",
            br#"{"response": 7}"#,
            400,
            "invalid type",
        ),
        (
            "/v1/rewards/token",
            br#"{"response": "x", "language": "cobol"}"#,
            400,
            "cobol",
        ),
        (
            "/v1/rewards/token",
            br#"{"response": "x"}"#,
            400,
            "language",
        ),
        (
            "/v1/rewards/token",
            br#"{"response": "x", "language": "c", "response_token_ids": [999999999]}"#,
            400,
            "vocabulary",
        ),
        (
            "/v1/rewards/token",
            br#"{"response": "x", "language": "c", "tests": "assert 1"}"#,
            400,
            "--tests",
        ),
        ("/v1/rewards/token", br#"[]"#, 400, "empty"),
        (
            "/v1/rewards/token",
            br#"[{"response": "x", "language": "c"}, {"respons": "y"}]"#,
            400,
            "item 1",
        ),
        (
            "/get_reward",
            br#"{"query": ["a"], "prompts": ["a", "b"]}"#,
            400,
            "2 prompts for 1 queries",
        ),
        (
            "/v1/scan",
            br#"{"code": "\u0000\u0001\u00ff", "language": "c"}"#,
            200,
            "",
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": [{"role": "user", "content": "hi"}]}"#,
            503,
            "--rewards-only",
        ),
        ("/detokenize", br#"{"tokens": [-1]}"#, 400, "invalid value"),
    ];
    for (path, body, want, needle) in cases {
        let (code, resp) = post(a, path, body, "");
        assert_eq!(
            code,
            *want,
            "{path} {}: {resp}",
            String::from_utf8_lossy(body)
        );
        if *want != 200 {
            let m = error_message(&resp);
            assert!(m.contains(needle), "{path}: {m:?} lacks {needle:?}");
        }
    }
    // Too big: refused before it is read whole.
    let huge = format!(
        r#"{{"response": "{}", "language": "c"}}"#,
        "a".repeat(200_000)
    );
    let (code, resp) = post(a, "/v1/rewards/token", huge.as_bytes(), "");
    assert_eq!(code, 413, "{resp}");
    error_message(&resp);
    // Unknown routes and methods.
    let (code, resp) = raw(
        a,
        b"GET /v2/none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 404);
    error_message(&resp);
    let (code, resp) = raw(
        a,
        b"GET /v1/scan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 405);
    error_message(&resp);
    // Garbage instead of HTTP does not hurt.
    let mut g = TcpStream::connect(a).unwrap();
    let _ = g.write_all(&[0xff; 4096]);
    drop(g);

    // A slow client: headers promise 100 bytes, 10 arrive, then nothing. It gets a timeout
    // answer while others are served.
    let mut slow = TcpStream::connect(a).unwrap();
    slow.write_all(b"POST /v1/scan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"code\": \"")
        .unwrap();
    let t0 = Instant::now();
    let (code, _) = post(
        a,
        "/v1/scan",
        br#"{"code": "gets(b);", "language": "c"}"#,
        "",
    );
    assert_eq!(code, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "served while the slow client waits"
    );
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("took longer than"), "{text}");

    // Still healthy, and a good request still works.
    let (code, resp) = post(
        a,
        "/v1/rewards/token",
        br#"{"response": "```c\nchar b[8]; strcpy(b, s);\n```", "language": "c"}"#,
        "",
    );
    assert_eq!(code, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    let rewards = v["token_rewards"].as_array().unwrap();
    assert_eq!(rewards.len(), v["token_ids"].as_array().unwrap().len());
    assert!(rewards.iter().any(|r| r.as_f64().unwrap() < 0.0));
    let (code, _) = raw(
        a,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);
}

#[test]
fn an_api_key_guards_every_route_but_health() {
    let Some(s) = start(
        &["--rewards-only", "--api-key-env", "SRCODE_TEST_KEY"],
        &[("SRCODE_TEST_KEY", "s3cret")],
    ) else {
        return;
    };
    let body = br#"{"code": "gets(b);", "language": "c"}"#;
    let (code, resp) = post(&s.addr, "/v1/scan", body, "");
    assert_eq!(code, 401);
    assert!(error_message(&resp).contains("API key"));
    let (code, _) = post(&s.addr, "/v1/scan", body, "Authorization: Bearer wrong\r\n");
    assert_eq!(code, 401);
    let (code, resp) = post(
        &s.addr,
        "/v1/scan",
        body,
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("c.gets"), "{resp}");
    let (code, _) = raw(
        &s.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);
}

#[test]
fn a_full_generation_queue_answers_429() {
    let Some(s) = start(&["--queue", "1", "--max-batch", "1"], &[]) else {
        return;
    };
    let body = br#"{"messages": [{"role": "user", "content": "Count to one hundred."}], "max_tokens": 200, "temperature": 0}"#;
    let addr = s.addr.clone();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || post(&addr, "/v1/chat/completions", body, ""))
        })
        .collect();
    let results: Vec<(u16, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(ok >= 1, "{results:?}");
    assert!(
        !busy.is_empty(),
        "one running and one queued leave the rest refused: {results:?}"
    );
    for (_, b) in busy {
        assert!(error_message(b).contains("queue is full"));
    }
    assert_eq!(ok + results.iter().filter(|r| r.0 == 429).count(), 4);
}
