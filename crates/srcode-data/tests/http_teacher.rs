//! The OpenAI-compatible teacher against a real server over loopback: llama.cpp's server
//! (`python -m llama_cpp.server`, from the PyPI package `llama-cpp-python[server]`) serving
//! the default GGUF. `scripts/test.sh` installs it into `.venv-llama`; without it (or without
//! the model) these tests print why they skip. One test kills the server in the middle of a
//! build: the build reports the failure, keeps every finished record, and resumes when the
//! server is back.

use srcode_data::build::{read_checkpoint, Stages};
use srcode_data::vul2safe::RepairOutcome;
use srcode_data::{
    build, ingest, BuildPaths, CachedTeacher, ChatRequest, DataConfig, DataError, Format,
    HttpTeacher, HttpTeacherConfig, Teacher,
};
use srcode_lm::chat::ChatMessage;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python that has `llama_cpp.server`: `$SRCODE_LLAMA_PYTHON`, else `.venv-llama` at the
/// repository root.
fn llama_python() -> Option<PathBuf> {
    let py = std::env::var_os("SRCODE_LLAMA_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-llama/bin/python"),
        PathBuf::from,
    );
    let ok = Command::new(&py)
        .args(["-c", "import llama_cpp.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(py)
    } else {
        eprintln!(
            "SKIP: {} cannot import llama_cpp.server (scripts/test.sh installs \
             llama-cpp-python[server] into .venv-llama; or set SRCODE_LLAMA_PYTHON)",
            py.display()
        );
        None
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A llama.cpp server process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(py: &Path, gguf: &Path, port: u16, log: PathBuf) -> Server {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(py)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "4096", "--n_threads", "2", "--verbose", "False"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut s = Server { child, port, log };
        s.wait_ready();
        s
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        let url = format!("{}/models", self.base_url());
        while t0.elapsed() < Duration::from_secs(180) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "llama.cpp server exited with {st}:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if ureq::get(&url).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("llama.cpp server on port {} did not come up", self.port);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn setup() -> Option<(PathBuf, PathBuf)> {
    let gguf = srcode_lm::tokenizer::default_test_gguf()?;
    let py = llama_python()?;
    Some((py, gguf))
}

fn teacher(base_url: String) -> HttpTeacher {
    HttpTeacher::new(HttpTeacherConfig {
        base_url,
        model: "smollm2".into(),
        timeout_secs: 120.0,
        max_retries: 2,
        backoff_secs: 0.2,
        max_backoff_secs: 1.0,
        ..HttpTeacherConfig::default()
    })
    .unwrap()
}

#[test]
fn a_chat_request_is_answered_and_cached() {
    let Some((py, gguf)) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&py, &gguf, free_port(), dir.path().join("server.log"));
    let t = teacher(server.base_url());
    let req = ChatRequest::new(
        vec![ChatMessage::user(
            "Write a Python function that returns the square of a number.",
        )],
        48,
    );
    let answer = t.complete(&req).unwrap();
    assert!(!answer.trim().is_empty());

    let cache = srcode_data::cache::ResponseCache::open(&dir.path().join("c.sqlite")).unwrap();
    let cached = CachedTeacher::new(&t, &cache);
    let a = cached.complete(&req).unwrap();
    let b = cached.complete(&req).unwrap();
    assert_eq!(a, b);
    assert_eq!((cached.calls(), cached.hits()), (1, 1));
    // Another sampling setting is another key.
    let mut other = req.clone();
    other.max_tokens = 8;
    cached.complete(&other).unwrap();
    assert_eq!(cached.calls(), 2);
}

#[test]
fn an_unreachable_endpoint_is_retried_then_reported_as_a_teacher_failure() {
    // No server at all on this port: connection refused, retried with back-off, then given up.
    let t = teacher(format!("http://127.0.0.1:{}/v1", free_port()));
    let t0 = Instant::now();
    let e = t
        .complete(&ChatRequest::new(vec![ChatMessage::user("hi")], 4))
        .unwrap_err();
    assert!(e.is_teacher_failure(), "{e}");
    assert!(e.to_string().contains("gave up after 2 retries"), "{e}");
    // Two back-offs: 0.2 s then 0.4 s.
    assert!(
        t0.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t0.elapsed()
    );
    let e = HttpTeacher::new(HttpTeacherConfig {
        base_url: "localhost:8000".into(),
        ..HttpTeacherConfig::default()
    })
    .err()
    .unwrap();
    assert!(matches!(e, DataError::Config(_)), "{e}");
    assert!(e.to_string().contains("localhost:8000"), "{e}");
}

#[test]
fn a_build_survives_the_server_being_killed_and_resumes_when_it_is_back() {
    let Some((py, gguf)) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(&py, &gguf, port, dir.path().join("server.log"));
    let t = teacher(server.base_url());

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/pairs.jsonl");
    let all = ingest(&path, Format::Auto).unwrap().records;
    let records: Vec<_> = ["demo-py-001", "demo-c-001", "demo-py-010", "demo-c-010"]
        .iter()
        .map(|id| all.iter().find(|r| r.id == *id).unwrap().clone())
        .collect();
    let mut cfg = DataConfig::default();
    cfg.repair.max_rounds = 1;
    cfg.repair.analysis_max_tokens = 48;
    cfg.repair.repair_extra_tokens = 48;
    cfg.repair.reflect_max_tokens = 64;
    cfg.prompts.per_pair = 1;
    cfg.prompts.max_tokens = 40;
    cfg.repair.fallback_to_real_fix = true;
    let scanner = srcode_scan::Scanner::builtin().unwrap();
    let out = dir.path().join("data");
    let paths = BuildPaths::new(&out);
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    // Kill the server as soon as the first record is finished.
    let report = std::thread::scope(|s| {
        let h = s.spawn(|| {
            build(
                &records,
                &t,
                &scanner,
                &cfg,
                &paths,
                1,
                Stages::All,
                &|_| {},
            )
        });
        let t0 = Instant::now();
        while lines(&paths.repairs()) == 0 && !h.is_finished() {
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "no record finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.kill();
        h.join().unwrap().unwrap()
    });
    let failure = report
        .failure
        .clone()
        .expect("the build reports the failure");
    assert!(failure.contains("gave up"), "{failure}");
    let kept = lines(&paths.repairs());
    assert!((1..records.len()).contains(&kept), "{kept} finished");
    assert_eq!(report.repaired_now, kept);
    assert!(report.dataset.is_none(), "no dataset from a failed build");
    let before: Vec<RepairOutcome> = read_checkpoint(&paths.repairs()).unwrap();

    // The server is back: the build resumes with the unfinished records only.
    let server = Server::start(&py, &gguf, port, dir.path().join("server2.log"));
    let report = build(
        &records,
        &t,
        &scanner,
        &cfg,
        &paths,
        1,
        Stages::All,
        &|_| {},
    )
    .unwrap();
    assert_eq!(report.failure, None);
    assert_eq!(report.repaired_before, kept);
    assert_eq!(report.repaired_now, records.len() - kept);
    let after: Vec<RepairOutcome> = read_checkpoint(&paths.repairs()).unwrap();
    assert_eq!(after.len(), records.len());
    assert_eq!(
        &after[..kept],
        &before[..],
        "finished records are untouched"
    );
    assert!(paths.dataset().is_file() && paths.card().is_file());

    // And once more: nothing left to ask.
    let report = build(
        &records,
        &t,
        &scanner,
        &cfg,
        &paths,
        1,
        Stages::All,
        &|_| {},
    )
    .unwrap();
    assert_eq!(report.teacher_calls, 0);
    drop(server);
}

/// `srcode eval` against the endpoint: the evaluation's generator is this same client (through
/// its response cache); samples come back, their tests run in the sandbox, and a second run
/// resumes without asking the server again.
#[test]
fn an_endpoint_is_evaluated_on_cweval_style_tasks() {
    let Some((py, gguf)) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&py, &gguf, free_port(), dir.path().join("server.log"));
    let tasks = srcode_eval::load(
        srcode_eval::BenchKind::Cweval,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/eval/cweval-mini.jsonl"),
    )
    .unwrap()
    .tasks;
    let cache = srcode_data::cache::ResponseCache::open(&dir.path().join("cache.sqlite")).unwrap();
    let generator = srcode_eval::HttpGenerator::new(teacher(server.base_url()), cache, 2);
    let scorer = srcode_eval::Scorer::new(
        srcode_scan::Scanner::builtin().unwrap(),
        srcode_sandbox::Sandbox::default(),
    );
    let spec = srcode_eval::EvalSpec {
        bench: "cweval".into(),
        data: "examples/eval/cweval-mini.jsonl".into(),
        model: srcode_eval::Generator::id(&generator).to_string(),
        mode: None,
        chat_prefill: false,
        gen: srcode_eval::GenSettings {
            n: 2,
            temperature: 0.7,
            top_p: Some(0.95),
            max_new_tokens: 96,
            seed: 0,
        },
        tasks_digest: srcode_eval::EvalSpec::digest(&tasks),
        tasks: tasks.len(),
    };
    let out = dir.path().join("eval");
    let first =
        srcode_eval::evaluate(&tasks, &generator, &scorer, &spec, &out, 2, &mut |_, _| {}).unwrap();
    assert!(spec.model.starts_with("openai:smollm2@"), "{}", spec.model);
    assert_eq!(first.samples.len(), 10);
    assert!(
        first.samples.iter().all(|s| s.error.is_none()),
        "{:?}",
        first.samples[0].error
    );
    assert!(first.samples.iter().all(|s| !s.completion.is_empty()));
    // Every sample's tests ran (passing or not), none was left unrun.
    assert!(first
        .samples
        .iter()
        .all(|s| s.tests.as_ref().is_some_and(|t| t.status != "not_run")));
    assert!(first.metrics.pass_at.contains_key("pass@1"));
    assert!(first.metrics.func_sec_at.contains_key("func-sec@1"));
    drop(server);
    // The server is gone: the same evaluation resumes from its directory.
    let again =
        srcode_eval::evaluate(&tasks, &generator, &scorer, &spec, &out, 2, &mut |_, _| {}).unwrap();
    assert_eq!((again.resumed_tasks, again.new_tasks), (5, 0));
    assert_eq!(again.metrics, first.metrics);
}
