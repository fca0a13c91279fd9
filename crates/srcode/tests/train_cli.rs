//! `srcode train sft` as a user runs it on the default model: a LoRA run paused after one step
//! resumes from its checkpoint and writes a PEFT adapter; bad input is an error naming it.

use std::path::Path;
use std::process::Command;

fn srcode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srcode"))
}

/// PrimeVul+ samples made from the demo corpus's real fixes.
fn samples(path: &Path, n: usize) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/pairs.jsonl");
    let text = std::fs::read_to_string(demo).unwrap();
    let mut out = String::new();
    for line in text.lines().take(n) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = serde_json::json!({
            "id": format!("{}#0", r["id"].as_str().unwrap()),
            "prompt": r["description"], "language": r["language"], "cwe": r["cwe"],
            "secure": r["fixed"], "vulnerable": r["vulnerable"], "fix_spans": [],
            "source": "demo", "teacher": "real-fix", "confidence": null,
            "pair_id": r["id"], "prompt_style": "ticket",
        });
        out.push_str(&s.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_paused_lora_run_resumes_and_writes_an_adapter() {
    let Some(gguf) = srcode_lm::tokenizer::default_test_gguf() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pv.jsonl");
    samples(&data, 6);
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "[sft]\nbatch_size = 2\nmax_seq_len = 384\nwarmup_steps = 0\nlr = 1e-3\n\
         eval_fraction = 0.2\nsave_every = 10\n[sft.lora]\nrank = 4\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let run = |extra: &[&str]| {
        srcode()
            .args(["train", "sft", "--max-steps", "2", "--data"])
            .arg(&data)
            .arg("--model")
            .arg(&gguf)
            .arg("--config")
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let r = run(&["--pause-after", "1"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("paused with a checkpoint"), "{err}");
    assert!(out.join("checkpoint/state.json").is_file());
    assert!(!out.join("final").exists());

    let r = run(&[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("resumed from step 1"), "{err}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    ] {
        assert!(out.join("final").join(f).is_file(), "{f}");
    }
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[1]["step"], 2);
    assert!(metrics[1]["eval_loss"].as_f64().is_some_and(f64::is_finite));

    // The adapter, merged into the weights, changes what the model says.
    let gen = |extra: &[&str]| {
        let o = srcode()
            .args(["generate", "--json", "--max-new-tokens", "8", "--weights"])
            .args(extra)
            .args([
                "--prompt",
                "int copy_name(char *dst, const char *src)",
                "--model",
            ])
            .arg(&gguf)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            err,
        )
    };
    let logprobs = |out: &str| -> Vec<f64> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let fin = out.join("final");
    let fin = fin.to_str().unwrap();
    let (ok, base, err) = gen(&["f32"]);
    assert!(ok, "{err}");
    let (ok, adapted, err) = gen(&["f32", "--adapter", fin]);
    assert!(ok, "{err}");
    let (b, a) = (logprobs(&base), logprobs(&adapted));
    assert!(
        b.iter().zip(&a).any(|(x, y)| (x - y).abs() > 1e-5),
        "the adapter changed nothing: {b:?} vs {a:?}"
    );
    // Folded in and quantised again (q8_0), the adapted model stays close to the dense one;
    // candle's own formats cannot take it.
    let (ok, adapted_q, err) = gen(&["q8_0", "--adapter", fin]);
    assert!(ok, "{err}");
    let aq = logprobs(&adapted_q);
    assert!(
        (aq[0] - a[0]).abs() < 0.2,
        "first-token log-prob: q8_0 {} vs f32 {}",
        aq[0],
        a[0]
    );
    let (ok, _, err) = gen(&["q4_0", "--adapter", fin]);
    assert!(!ok && err.contains("q8_0"), "{err}");
}

#[test]
fn bad_data_and_config_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pv.jsonl");
    std::fs::write(&data, "{\"id\": 1}\n").unwrap();
    let r = srcode()
        .args(["train", "sft", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("pv.jsonl"), "{err}");

    samples(&data, 2);
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[sft]\nschedule = \"steps\"\n").unwrap();
    let r = srcode()
        .args(["train", "sft", "--dry-run", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("`steps`"), "{err}");
    std::fs::write(&cfg, "[sft]\nlearning_rate = 1.0\n").unwrap();
    let r = srcode()
        .args(["train", "sft", "--dry-run", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("learning_rate"), "{err}");
}

#[test]
fn an_rl_step_on_the_default_model_writes_metrics_and_an_adapter() {
    let Some(gguf) = srcode_lm::tokenizer::default_test_gguf() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pv.jsonl");
    samples(&data, 4);
    let cfg = dir.path().join("rl.toml");
    std::fs::write(
        &cfg,
        "[rl]\nsteps = 1\nprompts_per_step = 2\ngroup_size = 2\nmax_new_tokens = 16\n\
         epochs = 1\nminibatch = 4\n[rl.lora]\nrank = 4\n",
    )
    .unwrap();
    let out = dir.path().join("rl");
    let r = srcode()
        .args([
            "train",
            "rl",
            "--algorithm",
            "grpo",
            "--reward-granularity",
            "token",
            "--data",
        ])
        .arg(&data)
        .arg("--model")
        .arg(&gguf)
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    let m: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m["step"], 1);
    // At the first step the policy is the reference.
    assert!(m["kl"].as_f64().unwrap().abs() < 1e-3, "{m}");
    assert!(m["response_length"].as_f64().unwrap() > 0.0);
    assert!(out.join("final/adapter_model.safetensors").is_file());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<polyline") && html.contains("analyser-flagged"));
    // Two runs' curves in one page.
    let page = dir.path().join("curves.html");
    let r = srcode()
        .args(["train", "plot"])
        .arg(&out)
        .arg(&out)
        .arg("--out")
        .arg(&page)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        std::fs::read_to_string(&page)
            .unwrap()
            .matches("<polyline")
            .count(),
        16
    );

    let r = srcode()
        .args(["train", "rl", "--algorithm", "dpo", "--dry-run", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("`dpo`"));
}

#[test]
fn an_exported_model_generates_what_the_gguf_does() {
    let Some(gguf) = srcode_lm::tokenizer::default_test_gguf() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let r = srcode()
        .args(["model", "export"])
        .arg(&gguf)
        .arg("--out")
        .arg(&hf)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(hf.join(f).is_file(), "export wrote no {f}");
    }
    let greedy = |model: &Path, extra: &[&str]| -> serde_json::Value {
        let r = srcode()
            .args([
                "generate",
                "--device",
                "cpu",
                "--chat",
                "--temperature",
                "0",
            ])
            .args([
                "--max-new-tokens",
                "12",
                "--json",
                "--prompt",
                "Write a C add function.",
            ])
            .arg("--model")
            .arg(model)
            .args(extra)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        serde_json::from_slice(&r.stdout).unwrap()
    };
    let a = greedy(&gguf, &["--weights", "f32"]);
    let b = greedy(&hf, &["--weights", "f32"]);
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_eq!(a["text"], b["text"]);
}

#[test]
fn device_and_dtype_flags_reject_what_this_build_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pv.jsonl");
    samples(&data, 2);
    let r = srcode()
        .args(["train", "sft", "--dtype", "f16", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("sft"))
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--dtype `f16`"), "{err}");
    let r = srcode()
        .args(["generate", "--device", "tpu", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--device `tpu`"), "{err}");
    let r = srcode()
        .args([
            "train",
            "rl",
            "--rollout-weights",
            "q4_0",
            "--dry-run",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--rollout-weights `q4_0`") && err.contains("auto, q8_0 or policy"),
        "{err}"
    );
    #[cfg(not(feature = "cuda"))]
    {
        let r = srcode()
            .args(["generate", "--device", "cuda", "--prompt", "x"])
            .output()
            .unwrap();
        assert!(!r.status.success());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("built without CUDA"), "{err}");
    }
}
