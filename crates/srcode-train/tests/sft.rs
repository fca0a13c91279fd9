//! SFT on a tiny random model (fixed seed): the loss is the weighted response-token NLL however
//! rows are padded, unlikelihood matches its formula, training lowers the eval loss, and a run
//! paused at a checkpoint resumes to the same metrics as an uninterrupted one. With the real
//! default model's tokenizer: prompt and response are separated exactly and fix tokens carry
//! the fix weight.

use candle_core::{Device, Tensor};
use srcode_lm::train::token_logprobs;
use srcode_lm::{Llama, LlamaConfig};
use srcode_train::sft::{self, batch_loss, Example, Negative, SftConfig, SftMetrics};

const VOCAB: usize = 40;

fn tiny() -> Llama {
    Llama::random(&LlamaConfig::tiny(VOCAB), 7, true, &Device::Cpu).unwrap()
}

/// Prompt `[1, a, b, 2]`, response `[a, b, a+b mod 30 + 5, 3]`: learnable from the prompt.
fn example(i: usize) -> Example {
    let a = (5 + i * 7 % 23) as u32;
    let b = (5 + i * 11 % 19) as u32;
    let c = (a + b) % 30 + 5;
    Example {
        id: format!("e{i}"),
        pair_id: format!("p{i}"),
        ids: vec![1, a, b, 2, a, b, c, 3],
        prompt_len: 4,
        weights: vec![1.0, 1.0, 2.0, 1.0],
        negative: None,
    }
}

fn own_nll(m: &Llama, e: &Example) -> (f32, f32) {
    let ids = Tensor::from_vec(e.ids.clone(), (1, e.ids.len()), &Device::Cpu).unwrap();
    let lp = token_logprobs(m, &ids, e.prompt_len, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let num: f32 = lp.iter().zip(&e.weights).map(|(l, w)| -l * w).sum();
    (num, e.weights.iter().sum())
}

#[test]
fn the_loss_is_the_weighted_response_nll_whatever_the_padding() {
    let m = tiny();
    let a = example(0);
    let mut b = example(1);
    // A longer prompt and a longer response: rows differ in both.
    b.ids = vec![1, 9, 9, 9, 2, 6, 7, 8, 9, 10, 3];
    b.prompt_len = 5;
    b.weights = vec![1.0, 3.0, 1.0, 1.0, 1.0, 0.5];
    let cfg = SftConfig::default();
    let (loss, parts) = batch_loss(&m, &[&a, &b], &cfg, 0).unwrap();
    let (na, wa) = own_nll(&m, &a);
    let (nb, wb) = own_nll(&m, &b);
    let want = (na + nb) / (wa + wb);
    let got = loss.to_scalar::<f32>().unwrap();
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    assert_eq!(parts.tokens, 4 + 6);
    assert_eq!(parts.unlikelihood, 0.0);
    // Every trainable tensor gets a gradient from it.
    let g = loss.backward().unwrap();
    for (name, v) in m.trainable() {
        assert!(g.get(v.as_tensor()).is_some(), "{name} has no gradient");
    }
}

#[test]
fn unlikelihood_is_the_mean_of_minus_log_one_minus_p_over_the_masked_tokens() {
    let m = tiny();
    let mut e = example(2);
    let neg = Negative {
        ids: vec![1, 4, 4, 2, 11, 12, 13, 3],
        prompt_len: 4,
        mask: vec![false, true, true, false],
    };
    e.negative = Some(neg.clone());
    let cfg = SftConfig {
        unlikelihood_weight: 0.5,
        ..SftConfig::default()
    };
    let (loss, parts) = batch_loss(&m, &[&e], &cfg, 0).unwrap();
    let ids = Tensor::from_vec(neg.ids.clone(), (1, 8), &Device::Cpu).unwrap();
    let lp = token_logprobs(&m, &ids, 4, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let ul = (-(1.0 - lp[1].exp()).ln() - (1.0 - lp[2].exp()).ln()) / 2.0;
    assert!(
        (parts.unlikelihood - ul).abs() < 1e-5,
        "{} vs {ul}",
        parts.unlikelihood
    );
    let (n, w) = own_nll(&m, &e);
    let total = loss.to_scalar::<f32>().unwrap();
    assert!((total - (n / w + 0.5 * ul)).abs() < 1e-5);
}

#[test]
fn the_schedule_warms_up_then_decays_to_its_floor() {
    let cfg = SftConfig {
        lr: 1.0,
        warmup_steps: 4,
        min_lr_ratio: 0.1,
        ..SftConfig::default()
    };
    let lrs: Vec<f64> = (0..4).map(|s| cfg.lr_at(s, 14)).collect();
    assert_eq!(lrs, vec![0.2, 0.4, 0.6, 0.8]);
    assert!((cfg.lr_at(4, 14) - 1.0).abs() < 1e-12);
    // Half-way through the cosine: (1 + 0.1) / 2.
    assert!((cfg.lr_at(9, 14) - 0.55).abs() < 1e-12);
    assert!((cfg.lr_at(14, 14) - 0.1).abs() < 1e-12);
    let lin = SftConfig {
        schedule: "linear".into(),
        ..cfg.clone()
    };
    assert!((lin.lr_at(9, 14) - 0.55).abs() < 1e-12);
    assert!((lin.lr_at(6, 14) - (0.1 + 0.9 * 0.8)).abs() < 1e-12);
    let bad = SftConfig {
        schedule: "step".into(),
        ..cfg
    };
    assert!(bad.validate().unwrap_err().to_string().contains("`step`"));
}

fn read_metrics(dir: &std::path::Path) -> Vec<SftMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn training_lowers_the_eval_loss_and_a_paused_run_resumes_exactly() {
    let train: Vec<Example> = (0..24).map(example).collect();
    let eval: Vec<Example> = (24..30).map(example).collect();
    let cfg = SftConfig {
        batch_size: 4,
        grad_accum: 2,
        epochs: 4,
        lr: 1e-2,
        warmup_steps: 2,
        save_every: 4,
        eval_every: 4,
        ..SftConfig::default()
    };
    let whole = tempfile::tempdir().unwrap();
    let m = tiny();
    let r = sft::train(&m, &train, &eval, &cfg, 0, whole.path(), None, &|_, _| {}).unwrap();
    assert_eq!(r.total_steps, 12, "24 examples / (4 × 2) × 4 epochs");
    assert_eq!(r.steps, 12);
    let (before, after) = (r.eval_loss_before.unwrap(), r.eval_loss_after.unwrap());
    assert!(after < before * 0.8, "eval loss {before} -> {after}");
    let full = read_metrics(whole.path());
    assert_eq!(full.len(), 12);
    assert!(full.iter().all(|m| m.loss.is_finite() && m.grad_norm > 0.0));

    // The same run paused after 5 steps (checkpoint at 5), then resumed by a fresh process
    // (a new model with the same initial weights).
    let paused = tempfile::tempdir().unwrap();
    let m1 = tiny();
    let r1 = sft::train(
        &m1,
        &train,
        &eval,
        &cfg,
        0,
        paused.path(),
        Some(5),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(r1.steps, 5);
    assert!(paused.path().join("checkpoint/state.json").is_file());
    drop(m1);
    let m2 = tiny();
    let r2 = sft::train(&m2, &train, &eval, &cfg, 0, paused.path(), None, &|_, _| {}).unwrap();
    assert_eq!(r2.resumed_from, Some(5));
    assert_eq!(r2.steps, 12);
    let resumed = read_metrics(paused.path());
    assert_eq!(resumed.len(), 12);
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a.step, b.step);
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * a.loss.abs().max(1.0),
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert_eq!(a.lr, b.lr);
    }

    // A different configuration in the same directory is refused, not mixed in.
    let other = SftConfig {
        lr: 5e-3,
        ..cfg.clone()
    };
    let e = sft::train(
        &tiny(),
        &train,
        &eval,
        &other,
        0,
        paused.path(),
        None,
        &|_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("another configuration"), "{e}");
    // And an empty dataset is an error, not a panic.
    let e = sft::train(&tiny(), &[], &eval, &cfg, 0, whole.path(), None, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("no training examples"), "{e}");
}

#[test]
fn real_tokenizer_separates_prompt_and_response_and_weights_the_fix() {
    let Some(gguf) = srcode_lm::tokenizer::default_test_gguf() else {
        return;
    };
    let meta = srcode_lm::loader::inspect(&gguf).unwrap();
    let secure =
        "void put(char *dst, size_t n, const char *src)\n{\n    snprintf(dst, n, \"%s\", src);\n}";
    let vulnerable = "void put(char *dst, size_t n, const char *src)\n{\n    strcpy(dst, src);\n}";
    let fix_at = secure.find("snprintf").unwrap();
    let fix_end = secure.find(";\n}").unwrap() + 1;
    let s = srcode_data::PrimeVulPlus {
        id: "x#0".into(),
        prompt: "Copy the caller's name into dst, which holds n bytes.".into(),
        language: srcode_core::Language::C,
        cwe: None,
        secure: secure.into(),
        vulnerable: vulnerable.into(),
        fix_spans: vec![srcode_core::Span::new(fix_at, fix_end)],
        source: "test".into(),
        teacher: "t".into(),
        confidence: Some(0.9),
        pair_id: "x".into(),
        prompt_style: "ticket".into(),
    };
    let cfg = SftConfig {
        fix_weight: 3.0,
        unlikelihood_weight: 1.0,
        ..SftConfig::default()
    };
    let e = sft::encode_sample(&s, &meta.tokenizer, &meta.chat, &cfg)
        .unwrap()
        .unwrap();
    let tok = &meta.tokenizer;
    let prompt = tok.decode(&e.ids[..e.prompt_len], false).unwrap();
    assert!(
        prompt.contains("Copy the caller's name into dst"),
        "{prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let resp = tok.decode(&e.ids[e.prompt_len..], false).unwrap();
    assert!(resp.starts_with("```c\nvoid put("), "{resp:?}");
    assert!(resp.trim_end().ends_with("<|im_end|>"), "{resp:?}");
    // The up-weighted tokens spell the added check.
    let heavy: Vec<u32> = e.ids[e.prompt_len..]
        .iter()
        .zip(&e.weights)
        .filter(|(_, w)| **w == 3.0)
        .map(|(t, _)| *t)
        .collect();
    let heavy = tok.decode(&heavy, false).unwrap();
    assert!(heavy.contains("snprintf(dst, n"), "{heavy:?}");
    assert!(!heavy.contains("void put"), "{heavy:?}");
    // Unlikelihood marks tokens of the vulnerable answer, inside its function.
    let n = e.negative.as_ref().expect("a negative");
    let marked: Vec<u32> = n.ids[n.prompt_len..]
        .iter()
        .zip(&n.mask)
        .filter(|(_, m)| **m)
        .map(|(t, _)| *t)
        .collect();
    assert!(!marked.is_empty());
    let marked = tok.decode(&marked, false).unwrap();
    assert!(marked.contains("strcpy"), "{marked:?}");
    assert!(!marked.contains("void put"), "{marked:?}");
}
