//! `srcode data` as a user runs it: ingest output and bad-line reports, clear errors for bad
//! input, and a build whose teacher is unreachable stops with exit status 3 and resumes.

use std::path::Path;
use std::process::Command;

fn srcode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srcode"))
}

fn demo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/pairs.jsonl")
}

#[test]
fn ingest_writes_records_and_reports_bad_lines_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let good = std::fs::read_to_string(demo()).unwrap();
    let first_two: Vec<&str> = good.lines().take(2).collect();
    std::fs::write(
        &input,
        format!("{}\nnot json\n{}\n", first_two[0], first_two[1]),
    )
    .unwrap();
    let out = dir.path().join("records.jsonl");
    let r = srcode()
        .args(["data", "ingest"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("{}:2: not JSON", input.display())),
        "{err}"
    );
    assert!(err.contains("ingested 2 record(s)"), "{err}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "demo-c-001");
    assert_eq!(lines[0]["language"], "c");
    assert!(lines[0]["fixed"].is_string());
}

#[test]
fn bad_input_and_bad_config_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let r = srcode()
        .args(["data", "ingest"])
        .arg(&missing)
        .arg("-o")
        .arg(dir.path().join("o.jsonl"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("missing.jsonl"));

    let r = srcode()
        .args(["data", "ingest", "--format", "xml"])
        .arg(demo())
        .arg("-o")
        .arg(dir.path().join("o.jsonl"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("`xml`"));

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[data.repair]\nmin_confidence = 1.5\n").unwrap();
    let r = srcode()
        .args(["data", "build", "--teacher", "openai", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("run"))
        .arg(demo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("min_confidence"),
        "{err}"
    );

    std::fs::write(&cfg, "[teacher]\nkind = \"local\"\nmodle = \"x\"\n").unwrap();
    let r = srcode()
        .args(["data", "build", "--config"])
        .arg(&cfg)
        .arg(demo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("modle"), "{err}");
}

#[test]
fn a_build_with_an_unreachable_teacher_stops_with_status_3_and_keeps_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "[teacher.openai]\nmax_retries = 1\nbackoff_secs = 0.05\ntimeout_secs = 5\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let run = || {
        srcode()
            .args(["data", "build", "--teacher", "openai", "--limit", "3"])
            .arg("--base-url")
            .arg(format!("http://127.0.0.1:{port}/v1"))
            .arg("--config")
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .arg(demo())
            .output()
            .unwrap()
    };
    let r = run();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(3), "{err}");
    assert!(err.contains("the build stopped"), "{err}");
    assert!(err.contains("gave up after 1 retries"), "{err}");
    assert!(
        err.contains("run the same command again to resume"),
        "{err}"
    );
    // The ingested records and the cache are there for the resumed run; no dataset yet.
    assert!(out.join("records.jsonl").is_file());
    assert!(out.join("teacher_cache.sqlite").is_file());
    assert!(!out.join("primevul_plus.jsonl").exists());
    // Still unreachable: the same answer, nothing lost.
    assert_eq!(run().status.code(), Some(3));
}

#[test]
fn tasks_hold_out_the_pairs_a_dataset_trains_on() {
    let dir = tempfile::tempdir().unwrap();
    // A PrimeVul+ file that trains on the first demo pair only.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(demo())
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    let pv = dir.path().join("pv.jsonl");
    let sample = serde_json::json!({
        "id": format!("{id}#0"), "prompt": "p", "language": "c", "secure": "s", "vulnerable": "v",
        "fix_spans": [], "source": "demo", "teacher": "real-fix", "confidence": null,
        "pair_id": id, "prompt_style": "description",
    });
    std::fs::write(&pv, format!("{sample}\n")).unwrap();
    let out = dir.path().join("tasks.jsonl");
    let r = srcode()
        .args(["data", "tasks"])
        .arg(demo())
        .arg("--exclude")
        .arg(&pv)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    let tasks: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let records = std::fs::read_to_string(demo()).unwrap().lines().count();
    assert_eq!(tasks.len(), records - 1, "{err}");
    assert!(tasks.iter().all(|t| t["id"] != id.as_str()));
    let t = &tasks[0];
    let prompt = t["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("Implement it with this signature:"),
        "{prompt}"
    );
    assert_eq!(t["mode"], "instruct");
    assert!(t["cwe"].as_str().is_some_and(|c| c.starts_with("CWE-")));
    // The implicit prompt never names the weakness.
    assert!(!prompt.to_lowercase().contains("overflow") && !prompt.contains("CWE"));
    // A missing exclusion file is an error naming it.
    let r = srcode()
        .args(["data", "tasks"])
        .arg(demo())
        .args(["--exclude", "/no/such/pv.jsonl", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("/no/such/pv.jsonl"), "{err}");
}
