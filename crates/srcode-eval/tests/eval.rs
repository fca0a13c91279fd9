//! Evaluation end to end: canonical solutions pass and broken ones fail in the sandbox,
//! CWEval-style security tests tell a secure solution from an insecure one, and an evaluation of
//! the real model resumes after a kill with the same samples.

use srcode_eval::gen::{Completion, GenSettings, LocalGenerator};
use srcode_eval::{evaluate, load, BenchKind, EvalSpec, Metrics, Scorer, Task};
use srcode_sandbox::{Limits, Sandbox};
use std::path::Path;
use std::time::Duration;

fn scorer() -> Scorer {
    Scorer::new(
        srcode_scan::Scanner::builtin().unwrap(),
        Sandbox::new(Limits {
            cpu_seconds: 5,
            wall: Duration::from_secs(10),
            ..Limits::default()
        }),
    )
}

fn answer(text: &str) -> Completion {
    Completion {
        text: text.to_string(),
        tokens: 0,
        finish: "stop".into(),
    }
}

/// Whether the sandbox can run here (prints why not).
fn sandbox_ok() -> bool {
    match Sandbox::default().run_program(srcode_sandbox::ProgramLang::Python, "pass\n", None) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP sandbox: {e}");
            false
        }
    }
}

#[test]
fn humaneval_pro_canonical_solutions_pass_and_broken_ones_fail() {
    let Some(dir) = srcode_core::shared_data("humaneval-pro", "HumanEval-Pro") else {
        return;
    };
    if !sandbox_ok() {
        return;
    }
    let raw: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("humaneval_pro.json")).unwrap())
            .unwrap();
    let tasks = load(BenchKind::HumanevalPro, &dir.join("humaneval_pro.json"))
        .unwrap()
        .tasks;
    let sc = scorer();
    let mut samples = Vec::new();
    for rec in raw.iter().take(8) {
        let id = match &rec["id"] {
            serde_json::Value::String(s) => format!("{s:0>4}"),
            other => format!("{:0>4}", other.to_string()),
        };
        let task = tasks.iter().find(|t| t.id == id).unwrap();
        let canonical = rec["new_solution"].as_str().unwrap();
        let good = sc.score(task, 0, &answer(canonical)).unwrap();
        assert_eq!(good.passed(), Some(true), "{id}: {:?}", good.tests);
        let broken = sc.score(task, 1, &answer("    return None\n")).unwrap();
        assert_eq!(broken.passed(), Some(false), "{id}");
        samples.push(good);
        samples.push(broken);
    }
    // One of two samples right per task: pass@1 = 1/2, pass@2 = 1.
    let m = Metrics::compute(&samples);
    assert!((m.pass_at["pass@1"] - 0.5).abs() < 1e-12, "{:?}", m.pass_at);
}

fn fenced(lang: &str, code: &str) -> Completion {
    answer(&format!("Here is the function:\n```{lang}\n{code}```\n"))
}

#[test]
fn cweval_security_tests_tell_secure_from_insecure_code() {
    if !sandbox_ok() {
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/eval/cweval-mini.jsonl");
    let tasks = load(BenchKind::Cweval, &path).unwrap().tasks;
    assert_eq!(tasks.len(), 5);
    let by = |id: &str| -> &Task { tasks.iter().find(|t| t.id == id).unwrap() };
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            "py-read-under-root",
            "python",
            "import os\ndef read_under(root, name):\n    base = os.path.realpath(root)\n    p = os.path.realpath(os.path.join(base, name))\n    if os.path.commonpath([base, p]) != base or not os.path.isfile(p):\n        return None\n    return open(p).read()\n",
            "import os\ndef read_under(root, name):\n    p = os.path.join(root, name)\n    if not os.path.isfile(p):\n        return None\n    return open(p).read()\n",
        ),
        (
            "py-user-by-name",
            "python",
            "def find_user(conn, name):\n    row = conn.execute('select id from users where name = ?', (name,)).fetchone()\n    return row[0] if row else None\n",
            "def find_user(conn, name):\n    row = conn.execute(\"select id from users where name = '\" + name + \"'\").fetchone()\n    return row[0] if row else None\n",
        ),
        (
            "c-copy-name",
            "c",
            "#include <string.h>\nint copy_name(char *dst, size_t cap, const char *src) {\n    size_t n = strlen(src);\n    if (n >= cap) { if (cap) dst[0] = 0; return -1; }\n    memcpy(dst, src, n + 1);\n    return 0;\n}\n",
            "#include <string.h>\nint copy_name(char *dst, size_t cap, const char *src) {\n    strcpy(dst, src);\n    return strlen(src) < cap ? 0 : -1;\n}\n",
        ),
    ];
    let sc = scorer();
    let mut samples = Vec::new();
    for (id, lang, secure, insecure) in cases {
        let t = by(id);
        let good = sc.score(t, 0, &fenced(lang, secure)).unwrap();
        assert_eq!(good.passed(), Some(true), "{id} secure: {:?}", good.tests);
        assert_eq!(
            good.passed_secure(),
            Some(true),
            "{id} secure: {:?}",
            good.security_tests
        );
        let bad = sc.score(t, 1, &fenced(lang, insecure)).unwrap();
        assert_eq!(
            bad.passed(),
            Some(true),
            "{id} insecure works: {:?}",
            bad.tests
        );
        assert_eq!(
            bad.passed_secure(),
            Some(false),
            "{id} insecure: {:?}",
            bad.security_tests
        );
        samples.push(good);
        samples.push(bad);
    }
    // The analyser flags the concatenated SQL too, and not the parameterised query. (It does not
    // flag `strcpy` into a pointer parameter; the security test is what catches that one.)
    assert!(samples[3].vulnerable(), "{:?}", samples[3].findings);
    assert!(!samples[2].vulnerable() && !samples[4].vulnerable());
    let m = Metrics::compute(&samples);
    assert_eq!(m.pass_at["pass@1"], 1.0);
    assert!((m.func_sec_at["func-sec@1"] - 0.5).abs() < 1e-12);
}

#[test]
fn an_evaluation_of_the_real_model_resumes_after_a_kill() {
    let Some(gguf) = srcode_lm::tokenizer::default_test_gguf() else {
        return;
    };
    let Some(sven) = srcode_core::shared_data("sven/eval", "SVEN scenarios") else {
        return;
    };
    let lm = srcode_lm::loader::load(&gguf, &srcode_lm::Device::Cpu, None).unwrap();
    let generator = LocalGenerator::new(lm, "local:test".into(), 8);
    let all = load(BenchKind::Sven, &sven).unwrap().tasks;
    // One C and one Python scenario.
    let tasks: Vec<Task> = ["cwe-787/0-c", "cwe-022/0-py"]
        .iter()
        .map(|id| all.iter().find(|t| &t.id == id).unwrap().clone())
        .collect();
    let spec = EvalSpec {
        bench: "sven".into(),
        data: sven.display().to_string(),
        model: "local:test".into(),
        mode: None,
        chat_prefill: false,
        gen: GenSettings {
            n: 2,
            temperature: 0.8,
            top_p: Some(0.95),
            max_new_tokens: 24,
            seed: 3,
        },
        tasks_digest: EvalSpec::digest(&tasks),
        tasks: tasks.len(),
    };
    let sc = scorer();
    let dir = tempfile::tempdir().unwrap();
    let full = evaluate(
        &tasks,
        &generator,
        &sc,
        &spec,
        dir.path(),
        1,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((full.resumed_tasks, full.new_tasks), (0, 2));
    assert_eq!(full.samples.len(), 4);
    for f in [
        "run.json",
        "samples.jsonl",
        "metrics.json",
        "report.md",
        "report.html",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("CWE-787"));
    // A kill in the middle of writing the second task: its lines are cut mid-way.
    let path = dir.path().join("samples.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let first_task = &full.samples[0].task_id;
    let keep: usize = text
        .split_inclusive('\n')
        .take_while(|l| l.contains(&format!("\"task_id\":\"{first_task}\"")))
        .map(str::len)
        .sum();
    let torn = &text[..keep + 40];
    std::fs::write(&path, torn).unwrap();
    let mut calls = Vec::new();
    let resumed = evaluate(
        &tasks,
        &generator,
        &sc,
        &spec,
        dir.path(),
        1,
        &mut |d, t| calls.push((d, t)),
    )
    .unwrap();
    assert_eq!((resumed.resumed_tasks, resumed.new_tasks), (1, 1));
    assert_eq!(calls.first(), Some(&(1, 2)));
    // The resumed run regenerates the lost task exactly (per-sample seeds).
    let strip = |s: &[srcode_eval::Sample]| -> Vec<(String, usize, String)> {
        s.iter()
            .map(|x| (x.task_id.clone(), x.index, x.completion.clone()))
            .collect()
    };
    assert_eq!(strip(&resumed.samples), strip(&full.samples));
    assert_eq!(resumed.metrics, full.metrics);
    // Other settings in the same directory are refused, naming what changed.
    let mut other = spec.clone();
    other.gen.n = 3;
    let e = evaluate(
        &tasks,
        &generator,
        &sc,
        &other,
        dir.path(),
        1,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("other settings") && e.contains("gen"), "{e}");
}
