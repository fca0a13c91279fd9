//! RL on a tiny random model (fixed seeds) with a real byte-level BPE tokenizer of 40 tokens:
//! a token-level penalty on one token makes it at least twice as rare in samples while an
//! unpenalised control token is not, with GRPO and with PPO; a paused run resumes to the same
//! metrics as an uninterrupted one.

use candle_core::Device;
use srcode_lm::generate::{generate, SamplingParams};
use srcode_lm::tokenizer::Tokenizer;
use srcode_lm::{Llama, LlamaConfig};
use srcode_train::rl::{
    Algorithm, Granularity, RlConfig, RlMetrics, RlPrompt, RolloutWeights, Scored, Scorer, Trainer,
};
use srcode_train::Result;

const VOCAB: usize = 40;

/// A byte-level BPE tokenizer whose 40 tokens are the letters a–z and A–N, no merges.
fn tiny_tokenizer(dir: &std::path::Path) -> Tokenizer {
    let letters: Vec<char> = ('a'..='z').chain('A'..='N').collect();
    assert_eq!(letters.len(), VOCAB);
    let vocab: serde_json::Map<String, serde_json::Value> = letters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

fn model(trainable: bool) -> Llama {
    Llama::random(&LlamaConfig::tiny(VOCAB), 11, trainable, &Device::Cpu).unwrap()
}

/// −1 on every occurrence of `bad`; flagged when it occurs.
struct Penalise {
    bad: u32,
}

impl Scorer for Penalise {
    fn score(&self, _prompt: usize, response: &[u32]) -> Result<Scored> {
        let token: Vec<f32> = response
            .iter()
            .map(|&t| if t == self.bad { -1.0 } else { 0.0 })
            .collect();
        Ok(Scored {
            flagged: token.iter().any(|&r| r < 0.0),
            token,
            instance: 0.0,
        })
    }
}

fn prompts() -> Vec<RlPrompt> {
    (0..8u32)
        .map(|i| RlPrompt {
            ids: vec![i, (i * 7 + 3) % 40, (i * 13 + 5) % 40, 39],
        })
        .collect()
}

/// Token frequencies over 64 seeded samples of 16 tokens from the prompts.
fn frequencies(m: &Llama, tok: &Tokenizer) -> Vec<f32> {
    let batch: Vec<Vec<u32>> = prompts()
        .iter()
        .cycle()
        .take(64)
        .map(|p| p.ids.clone())
        .collect();
    let params = SamplingParams {
        max_new_tokens: 16,
        temperature: 1.0,
        top_k: None,
        top_p: None,
        seed: 12345,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
    };
    let (gens, _) = generate(m, tok, &batch, &params).unwrap();
    let mut counts = [0f32; VOCAB];
    let mut total = 0f32;
    for g in gens {
        for t in g.token_ids {
            counts[t as usize] += 1.0;
            total += 1.0;
        }
    }
    counts.iter().map(|c| c / total).collect()
}

fn learn(algorithm: Algorithm, lr: f64, rollout_weights: RolloutWeights) {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let policy = model(true);
    let reference = model(false);
    let before = frequencies(&policy, &tok);
    // Penalise the most frequent token; the control is the next most frequent.
    let mut order: Vec<usize> = (0..VOCAB).collect();
    order.sort_by(|&a, &b| before[b].total_cmp(&before[a]));
    let (bad, control) = (order[0], order[1]);
    assert!(before[bad] > 0.03, "{before:?}");
    let scorer = Penalise { bad: bad as u32 };
    let prompts = prompts();
    let cfg = RlConfig {
        algorithm,
        granularity: Granularity::Token,
        steps: 12,
        prompts_per_step: 8,
        group_size: 4,
        max_new_tokens: 12,
        epochs: 2,
        minibatch: 16,
        lr,
        kl_coef: 0.05,
        save_every: 100,
        rollout_weights,
        ..RlConfig::default()
    };
    let trainer = Trainer {
        policy: &policy,
        reference: &reference,
        tokenizer: &tok,
        scorer: &scorer,
        prompts: &prompts,
        cfg,
        pad: 0,
        stop_ids: Vec::new(),
    };
    let report = trainer.run(&dir.path().join("run"), None, &|_| {}).unwrap();
    assert_eq!(report.steps, 12);
    let after = frequencies(&policy, &tok);
    eprintln!(
        "{algorithm:?} before {before:.2?}\nafter {after:.2?}\n{:?}",
        report
            .metrics
            .iter()
            .map(|m| (m.flagged_rate, m.kl, m.value_loss, m.clip_fraction))
            .collect::<Vec<_>>()
    );
    assert!(
        after[bad] <= 0.5 * before[bad],
        "{algorithm:?}: penalised token {bad}: {:.3} -> {:.3}",
        before[bad],
        after[bad]
    );
    assert!(
        after[control] > 0.5 * before[control],
        "{algorithm:?}: control token {control}: {:.3} -> {:.3}",
        before[control],
        after[control]
    );
    // The rollouts' flagged rate fell too.
    let m = &report.metrics;
    let first: f32 = m[..3].iter().map(|x| x.flagged_rate).sum::<f32>() / 3.0;
    let last: f32 = m[m.len() - 3..].iter().map(|x| x.flagged_rate).sum::<f32>() / 3.0;
    assert!(last < first, "{algorithm:?}: flagged {first} -> {last}");
    assert!(m
        .iter()
        .all(|x| x.kl.is_finite() && x.grad_norm.is_finite()));
}

#[test]
fn grpo_with_a_token_penalty_makes_that_token_rare_and_leaves_the_control() {
    learn(Algorithm::Grpo, 5e-3, RolloutWeights::Q8_0);
}

#[test]
fn grpo_learns_the_same_with_rollouts_from_the_dense_policy() {
    learn(Algorithm::Grpo, 5e-3, RolloutWeights::Policy);
}

#[test]
fn ppo_with_a_token_penalty_makes_that_token_rare_and_leaves_the_control() {
    learn(Algorithm::Ppo, 5e-3, RolloutWeights::Q8_0);
}

fn read(dir: &std::path::Path) -> Vec<RlMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_paused_run_resumes_to_the_metrics_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let reference = model(false);
    let scorer = Penalise { bad: 5 };
    let prompts = prompts();
    let cfg = RlConfig {
        algorithm: Algorithm::Ppo,
        granularity: Granularity::Both,
        steps: 4,
        prompts_per_step: 4,
        group_size: 2,
        max_new_tokens: 6,
        minibatch: 4,
        lr: 1e-2,
        kl_target: Some(0.5),
        save_every: 10,
        sample_every: 2,
        entropy_coef: 0.01,
        ..RlConfig::default()
    };
    let run = |policy: &Llama, out: &std::path::Path, pause: Option<usize>| {
        Trainer {
            policy,
            reference: &reference,
            tokenizer: &tok,
            scorer: &scorer,
            prompts: &prompts,
            cfg: cfg.clone(),
            pad: 0,
            stop_ids: Vec::new(),
        }
        .run(out, pause, &|_| {})
        .unwrap()
    };
    let whole = dir.path().join("whole");
    run(&model(true), &whole, None);
    let split = dir.path().join("split");
    let r = run(&model(true), &split, Some(2));
    assert_eq!(r.steps, 2);
    let r = run(&model(true), &split, None);
    assert_eq!(r.resumed_from, Some(2));
    let (a, b) = (read(&whole), read(&split));
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        for (u, v) in [
            (x.reward_mean, y.reward_mean),
            (x.kl, y.kl),
            (x.kl_coef, y.kl_coef),
            (x.policy_loss, y.policy_loss),
            (x.value_loss, y.value_loss),
            (x.entropy, y.entropy),
        ] {
            assert!(
                (u - v).abs() <= 1e-5 * u.abs().max(1.0),
                "step {}: {x:?} vs {y:?}",
                x.step
            );
        }
        assert!(x.entropy > 0.0, "{x:?}");
    }
    // Sample dumps every 2 steps: each rollout with one reward and one KL per token.
    for step in [2, 4] {
        let p = whole.join("samples").join(format!("step-{step:04}.jsonl"));
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 8, "{}", p.display());
        for l in &lines {
            let n = l["token_ids"].as_array().unwrap().len();
            assert_eq!(l["token_rewards"].as_array().unwrap().len(), n);
            assert_eq!(l["kl"].as_array().unwrap().len(), n);
        }
        // The dumped rewards are the scorer's, token by token (−1 on token 5).
        for l in &lines {
            for (id, r) in l["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .zip(l["token_rewards"].as_array().unwrap())
            {
                let want = if id.as_u64() == Some(5) { -1.0 } else { 0.0 };
                assert_eq!(r.as_f64(), Some(want));
            }
            assert_eq!(
                l["flagged"].as_bool(),
                Some(
                    l["token_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|i| i.as_u64() == Some(5))
                )
            );
        }
    }
    assert!(!whole.join("samples").join("step-0001.jsonl").exists());
}
