//! The `srcode scan` and `srcode reward` commands as a user runs them.

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

fn srcode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srcode"))
}

#[test]
fn scan_json_is_an_array_of_exact_findings_and_exit_codes_follow_linters() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.c");
    std::fs::write(
        &bad,
        "#include <stdio.h>\nvoid f(void) {\n  char b[8];\n  gets(b);\n}\n",
    )
    .unwrap();
    let out = srcode()
        .args(["scan", "--format", "json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let arr = v.as_array().expect("a JSON array");
    let f = arr
        .iter()
        .find(|f| f["rule_id"] == "c.gets")
        .expect("gets flagged");
    let keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "rule_id",
        "cwe",
        "severity",
        "message",
        "file",
        "byte_start",
        "byte_end",
        "line",
        "column",
        "end_line",
        "end_column",
        "tool",
    ];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want);
    let src = std::fs::read_to_string(&bad).unwrap();
    let (s, e) = (
        f["byte_start"].as_u64().unwrap() as usize,
        f["byte_end"].as_u64().unwrap() as usize,
    );
    assert_eq!(&src[s..e], "gets(b)");
    assert_eq!(f["cwe"], "CWE-242");
    assert_eq!(f["line"], 4);

    let good = dir.path().join("good.c");
    std::fs::write(&good, "int add(int a, int b) { return a + b; }\n").unwrap();
    let out = srcode().args(["scan"]).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    let out = srcode()
        .args(["scan"])
        .arg(dir.path().join("missing.c"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.c"));

    // Directories are walked by extension; text output names file:line:column.
    let out = srcode().args(["scan"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.c:4:3"), "{text}");
}

#[test]
fn scan_reads_an_llm_answer_from_stdin_and_writes_sarif() {
    let mut child = srcode()
        .args(["scan", "--format", "sarif", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Sure:\n```c\nvoid f(char *s) { char b[4]; strcpy(b, s); }\n```\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let results = v["runs"][0]["results"].as_array().unwrap();
    assert!(results.iter().any(|r| r["ruleId"] == "c.strcpy-unbounded"));
}

#[test]
fn reward_writes_token_rewards_resumes_and_draws_a_heat_map() {
    let Some(model) = srcode_lm::tokenizer::default_test_gguf() else {
        return; // printed why
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rollouts.jsonl");
    let pair = serde_json::json!({
        "vulnerable": "def get(cur, name):\n    cur.execute(\"SELECT * FROM u WHERE n = '%s'\" % name)\n",
        "fixed": "def get(cur, name):\n    cur.execute(\"SELECT * FROM u WHERE n = %s\", (name,))\n"
    });
    let lines = [
        serde_json::json!({"prompt": "Look up a user by name.", "language": "python", "pair": pair,
            "completion": "```python\ndef find(db, who):\n    db.execute(\"SELECT id FROM t WHERE u = %s\", (who,))\n```"}),
        serde_json::json!({"prompt": "Look up a user by name.", "language": "python", "pair": pair,
            "completion": "```python\ndef find(db, who):\n    db.execute(\"SELECT id FROM t WHERE u = '%s'\" % who)\n```"}),
        serde_json::json!({"prompt": "Copy a string.", "completion": "```c\nvoid f(char *s) { char b[4]; strcpy(b, s); }\n```"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, &text).unwrap();
    let output = dir.path().join("rewards.jsonl");
    let html = dir.path().join("heat.html");
    let run = |extra: &[&str]| {
        srcode()
            .args(["reward", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--html", html.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let n = r["token_ids"].as_array().unwrap().len();
        assert!(n > 0);
        assert_eq!(r["tokens"].as_array().unwrap().len(), n);
        assert_eq!(r["token_rewards"].as_array().unwrap().len(), n);
        assert!(r["instance_reward"].is_number());
    }
    let total = |r: &Value| r["total_reward"].as_f64().unwrap();
    assert!(
        total(&rows[0]) > total(&rows[1]),
        "parameterised beats formatted SQL"
    );
    assert_eq!(rows[2]["language"], "c");
    assert!(rows[2]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["rule_id"] == "c.strcpy-unbounded"));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("rgba(220,40,40") && page.contains("rgba(30,160,60"));

    // Resume: a torn last line is redone, complete lines are kept.
    let full = std::fs::read_to_string(&output).unwrap();
    let cut = full.len() - 40;
    std::fs::write(&output, &full[..cut]).unwrap();
    let out = run(&["--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = std::fs::read_to_string(&output).unwrap();
    assert_eq!(again.lines().count(), 3);
    assert_eq!(again, full);
}
