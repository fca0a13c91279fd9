//! Reinforcement learning with token-level rewards: PPO (value head on the policy trunk, GAE
//! over the per-token reward stream) and GRPO (group-normalised sequence advantage *plus* the
//! token-level terms kept per token). Each step draws `group_size` rollouts for each of
//! `prompts_per_step` prompts, scores them with a [`Scorer`] (per-token rewards and an
//! instance reward), computes the per-token KL to a frozen reference model, and updates the
//! policy for `epochs` passes over minibatches with the clipped surrogate.
//!
//! `granularity` decides where the security signal lands, so the paper's ablation is one flag:
//! PPO's value head is a linear map on the trunk's last hidden state, trained on detached
//! features (a probe; its errors do not flow into the policy).
//!
//! - `token`: each token reward on its own token; the instance reward is not used.
//! - `instance`: the instance reward plus the sum of the token rewards, all on the last token
//!   (what scalar-reward trainers see).
//! - `both`: token rewards on their tokens, the instance reward on the last token.
//!
//! The gradient goes through `Σ c_t · log π(y_t)` with coefficients from [`crate::algo`] (exactly
//! the gradient of the clipped objective), and `Σ c_v · V_t` for the value loss.

use crate::algo::{self, KlEstimator};
use crate::checkpoint::{self, io};
use crate::error::{Result, TrainError};
use candle_core::{DType, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use srcode_lm::generate::{generate, SamplingParams};
use srcode_lm::tokenizer::Tokenizer;
use srcode_lm::train::{AdamW, AdamWConfig};
use srcode_lm::Llama;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Ppo,
    Grpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Token,
    Instance,
    Both,
}

/// The weights rollouts are decoded with. Log-probs, ratios and KL always come from the dense
/// policy, whatever sampled the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutWeights {
    /// A Q8_0 snapshot of the policy (adapter folded in) on the CPU, where its shapes allow;
    /// the policy itself elsewhere.
    #[serde(rename = "auto")]
    Auto,
    /// A Q8_0 snapshot, taken before every step's rollouts (CPU only).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// The dense policy itself (slower on the CPU; exactly on-policy).
    #[serde(rename = "policy")]
    Policy,
}

/// The `[rl]` section of a run's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    pub algorithm: Algorithm,
    pub granularity: Granularity,
    pub steps: usize,
    pub prompts_per_step: usize,
    /// Rollouts per prompt (G).
    pub group_size: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: Option<f32>,
    /// Passes over each batch of rollouts.
    pub epochs: usize,
    /// Rollouts per minibatch (one optimiser step).
    pub minibatch: usize,
    /// Largest forward pass, in padded tokens (rows × longest): a minibatch is split into
    /// micro-batches of at most this size and their gradients accumulated. Bounds memory:
    /// SmolLM2-135M with LoRA on the CPU peaks near 1.4 GB + 12.5 MB per micro-batch token
    /// (measured).
    pub micro_tokens: usize,
    pub lr: f64,
    pub max_grad_norm: Option<f64>,
    /// Clip range of the ratio: [1 − clip_low, 1 + clip_high].
    pub clip_low: f32,
    pub clip_high: f32,
    /// β: KL coefficient (in the reward for PPO, in the loss for GRPO).
    pub kl_coef: f32,
    pub kl_estimator: KlEstimator,
    /// Adaptive KL: target KL per sequence (unset: fixed β).
    pub kl_target: Option<f32>,
    pub kl_horizon: f32,
    /// PPO: discount and GAE λ.
    pub gamma: f32,
    pub lambda: f32,
    pub value_clip: f32,
    pub vf_coef: f32,
    /// Whiten PPO advantages over the batch.
    pub whiten_advantages: bool,
    /// GRPO: divide by the group's std (false: Dr. GRPO).
    pub scale_by_std: bool,
    /// GRPO: weight of the per-token terms and their discount (0: each on its own token).
    pub token_weight: f32,
    pub token_gamma: f32,
    /// Entropy bonus: the loss gets `−entropy_coef · H` (sampled estimate; 0: off).
    pub entropy_coef: f32,
    pub save_every: usize,
    /// Every this many steps, `samples/step-NNNN.jsonl` gets each rollout's text, token ids,
    /// token rewards, instance reward and per-token KL (0: never).
    pub sample_every: usize,
    pub seed: u64,
    /// What decodes the rollouts (see [`RolloutWeights`]).
    pub rollout_weights: RolloutWeights,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            algorithm: Algorithm::Ppo,
            granularity: Granularity::Both,
            steps: 30,
            prompts_per_step: 8,
            group_size: 4,
            max_new_tokens: 256,
            temperature: 1.0,
            top_p: None,
            epochs: 2,
            minibatch: 8,
            micro_tokens: 512,
            lr: 1e-4,
            max_grad_norm: Some(1.0),
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K3,
            kl_target: None,
            kl_horizon: 10_000.0,
            gamma: 1.0,
            lambda: 0.95,
            value_clip: 0.2,
            vf_coef: 0.5,
            whiten_advantages: true,
            scale_by_std: true,
            token_weight: 1.0,
            token_gamma: 0.0,
            entropy_coef: 0.0,
            save_every: 5,
            sample_every: 5,
            seed: 0,
            rollout_weights: RolloutWeights::Auto,
        }
    }
}

impl RlConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Config(format!("rl.{m}")));
        if self.prompts_per_step == 0 || self.group_size == 0 || self.minibatch == 0 {
            return bad("prompts_per_step, group_size and minibatch must be ≥ 1");
        }
        if self.algorithm == Algorithm::Grpo && self.group_size < 2 {
            return bad("group_size must be ≥ 2 for GRPO (advantages are relative to the group)");
        }
        if self.micro_tokens == 0 {
            return bad("micro_tokens must be ≥ 1");
        }
        if self.max_new_tokens == 0 || self.epochs == 0 {
            return bad("max_new_tokens and epochs must be ≥ 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr must be > 0");
        }
        if !(self.clip_low > 0.0 && self.clip_low < 1.0 && self.clip_high > 0.0) {
            return bad("clip_low must be in (0, 1) and clip_high > 0");
        }
        if !(self.kl_coef >= 0.0 && self.temperature > 0.0) {
            return bad("kl_coef must be ≥ 0 and temperature > 0");
        }
        if !((0.0..=1.0).contains(&self.gamma) && (0.0..=1.0).contains(&self.lambda)) {
            return bad("gamma and lambda must be in [0, 1]");
        }
        if !(self.entropy_coef.is_finite() && self.entropy_coef >= 0.0) {
            return bad("entropy_coef must be ≥ 0");
        }
        Ok(())
    }
}

/// A prompt to draw rollouts from: its token ids (chat template applied).
#[derive(Debug, Clone, PartialEq)]
pub struct RlPrompt {
    pub ids: Vec<u32>,
}

/// A rollout's rewards.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scored {
    /// One reward per response token.
    pub token: Vec<f32>,
    pub instance: f32,
    /// Whether the analyser flagged it (for the vulnerable rate of rollouts).
    pub flagged: bool,
}

/// Scores rollouts: given the prompt's index and the response's token ids.
pub trait Scorer: Sync {
    fn score(&self, prompt: usize, response: &[u32]) -> Result<Scored>;
}

/// The value head of PPO: a linear map from the trunk's last hidden state to a scalar.
pub struct ValueHead {
    pub weight: Var,
    pub bias: Var,
}

impl ValueHead {
    pub fn new(hidden: usize, device: &candle_core::Device) -> Result<Self> {
        Ok(ValueHead {
            weight: Var::zeros((hidden, 1), DType::F32, device)?,
            bias: Var::zeros(1, DType::F32, device)?,
        })
    }

    fn params(&self) -> Vec<(String, Var)> {
        vec![
            ("value_head.weight".into(), self.weight.clone()),
            ("value_head.bias".into(), self.bias.clone()),
        ]
    }
}

/// Log-probs `[b, n]` of the tokens at positions `start..` and, with a value head, the values
/// `[b, n]` of the states that chose them.
fn forward(
    model: &Llama,
    head: Option<&ValueHead>,
    ids: &Tensor,
    start: usize,
    grad: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (lp, h) = srcode_lm::train::token_logprobs_and_hidden(model, ids, start, grad)?;
    let (b, n) = lp.dims2()?;
    let values = match head {
        Some(v) => {
            // The critic reads the trunk's features without training them: early value errors
            // are large, and their gradients through a shared trunk wreck the policy.
            let hs = h.detach().to_dtype(DType::F32)?.reshape((b * n, ()))?;
            let out = hs
                .matmul(v.weight.as_tensor())?
                .broadcast_add(v.bias.as_tensor())?;
            Some(out.reshape((b, n))?)
        }
        None => None,
    };
    Ok((lp, values))
}

/// One rollout and everything the update needs about it.
#[derive(Debug, Clone)]
struct Rollout {
    ids: Vec<u32>,
    prompt_len: usize,
    old_lp: Vec<f32>,
    ref_lp: Vec<f32>,
    old_v: Vec<f32>,
    adv: Vec<f32>,
    ret: Vec<f32>,
}

impl Rollout {
    fn resp_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

fn padded(rows: &[&Rollout], pad: u32, device: &candle_core::Device) -> Result<(Tensor, usize)> {
    let rows: Vec<(&[u32], usize)> = rows
        .iter()
        .map(|r| (r.ids.as_slice(), r.prompt_len))
        .collect();
    crate::grad::right_padded(&rows, pad, device)
}

/// One vector per rollout, over its response tokens.
type PerRow = Vec<Vec<f32>>;

/// Response log-probs (and values) of `rows` without gradients, one vector per row.
fn score_tokens(
    model: &Llama,
    head: Option<&ValueHead>,
    rows: &[&Rollout],
    pad: u32,
) -> Result<(PerRow, Option<PerRow>)> {
    let (ids, start) = padded(rows, pad, model.device())?;
    let (lp, v) = forward(model, head, &ids, start, false)?;
    let lp = lp.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let cut = |m: PerRow| -> PerRow {
        rows.iter()
            .zip(m)
            .map(|(r, row)| row[r.prompt_len - start..r.ids.len() - start].to_vec())
            .collect()
    };
    let v = match v {
        Some(v) => Some(cut(v.to_dtype(DType::F32)?.to_vec2::<f32>()?)),
        None => None,
    };
    Ok((cut(lp), v))
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlMetrics {
    pub step: usize,
    /// Mean over rollouts of the sum of token rewards.
    pub token_reward: f32,
    pub instance_reward: f32,
    /// Mean and std over rollouts of sum(token) + instance.
    pub reward_mean: f32,
    pub reward_std: f32,
    /// Share of rollouts the scorer flagged (the analyser's vulnerable rate).
    pub flagged_rate: f32,
    /// Mean per-sequence KL to the reference (sum over tokens).
    pub kl: f32,
    pub kl_coef: f32,
    pub policy_loss: f32,
    pub value_loss: f32,
    pub clip_fraction: f32,
    /// Mean per-token entropy of the rollouts, estimated from the sampled tokens
    /// (−mean log π(x_t) under the policy that sampled them).
    #[serde(default)]
    pub entropy: f32,
    pub response_length: f32,
    pub grad_norm: f64,
    pub seconds: f64,
    /// Of `seconds`, the time spent decoding the rollouts (snapshot included).
    #[serde(default)]
    pub rollout_seconds: f64,
    pub tokens_per_second: f64,
}

/// Saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlState {
    pub step: usize,
    pub kl_coef: f32,
    pub config: RlConfig,
    pub prompts: usize,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlReport {
    pub resumed_from: Option<usize>,
    pub steps: usize,
    pub metrics: Vec<RlMetrics>,
}

/// The prompts of step `step`: a seeded permutation of all prompts per pass, taken in turn.
fn step_prompts(n: usize, per_step: usize, seed: u64, step: usize) -> Vec<usize> {
    (0..per_step)
        .map(|k| {
            let flat = step * per_step + k;
            let (pass, at) = (flat / n, flat % n);
            let mut p: Vec<usize> = (0..n).collect();
            p.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                seed ^ 0x9e37_79b9 ^ pass as u64,
            ));
            p[at]
        })
        .collect()
}

fn mean_std(x: &[f32]) -> (f32, f32) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f32;
    let m = x.iter().sum::<f32>() / n;
    (
        m,
        (x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / n).sqrt(),
    )
}

/// The RL trainer.
pub struct Trainer<'a> {
    pub policy: &'a Llama,
    pub reference: &'a Llama,
    pub tokenizer: &'a Tokenizer,
    pub scorer: &'a dyn Scorer,
    pub prompts: &'a [RlPrompt],
    pub cfg: RlConfig,
    /// Padding id for batches (never scored).
    pub pad: u32,
    /// Token ids that end a response.
    pub stop_ids: Vec<u32>,
}

impl Trainer<'_> {
    /// Runs (or resumes) the schedule in `dir`; `pause_after` stops with a checkpoint once that
    /// many steps are done. `on_step` sees every step's metrics.
    pub fn run(
        &self,
        dir: &Path,
        pause_after: Option<usize>,
        on_step: &dyn Fn(&RlMetrics),
    ) -> Result<RlReport> {
        let cfg = &self.cfg;
        cfg.validate()?;
        if self.prompts.is_empty() {
            return Err(TrainError::Input("no prompts to draw rollouts from".into()));
        }
        if self.policy.trainable().is_empty() {
            return Err(TrainError::Input(
                "the policy has no trainable tensors (attach LoRA or load trainable weights)"
                    .into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let head = match cfg.algorithm {
            Algorithm::Ppo => Some(ValueHead::new(
                self.policy.config().hidden_size,
                self.policy.device(),
            )?),
            Algorithm::Grpo => None,
        };
        let mut params: Vec<(String, Var)> = self.policy.trainable().to_vec();
        if let Some(h) = &head {
            params.extend(h.params());
        }
        let mut opt = AdamW::new(
            &params,
            AdamWConfig {
                lr: cfg.lr,
                ..AdamWConfig::default()
            },
        )?;
        let mut kl_ctl = algo::AdaptiveKl {
            beta: cfg.kl_coef,
            target: cfg.kl_target.unwrap_or(0.0),
            horizon: cfg.kl_horizon,
        };
        let metrics_path = dir.join("metrics.jsonl");
        let mut start = 0;
        let mut report = RlReport {
            resumed_from: None,
            steps: 0,
            metrics: Vec::new(),
        };
        if let Some(ck) = checkpoint::find(dir) {
            let st: RlState = checkpoint::load(&params, &mut opt, &ck)?;
            if st.config != *cfg || st.prompts != self.prompts.len() {
                return Err(TrainError::Input(format!(
                    "{} was written with another configuration or prompt set; use a new run \
                     directory or the same settings",
                    ck.display()
                )));
            }
            start = st.step;
            kl_ctl.beta = st.kl_coef;
            report.resumed_from = Some(st.step);
            checkpoint::truncate_metrics(&metrics_path, st.step)?;
        } else if metrics_path.exists() {
            std::fs::remove_file(&metrics_path).map_err(io(&metrics_path))?;
        }
        report.steps = start;
        for step in start..cfg.steps {
            let m = self.step(dir, step, head.as_ref(), &params, &mut opt, &mut kl_ctl)?;
            checkpoint::append_line(&metrics_path, &m)?;
            on_step(&m);
            report.metrics.push(m);
            let done = step + 1;
            report.steps = done;
            let pause = pause_after.is_some_and(|p| done >= p);
            if done % cfg.save_every.max(1) == 0 || done == cfg.steps || pause {
                checkpoint::save(
                    &params,
                    &opt,
                    &RlState {
                        step: done,
                        kl_coef: kl_ctl.beta,
                        config: cfg.clone(),
                        prompts: self.prompts.len(),
                    },
                    dir,
                )?;
            }
            if pause {
                break;
            }
        }
        Ok(report)
    }

    /// The model that decodes this step's rollouts: a fresh quantised snapshot of the policy,
    /// or `None` for the policy itself.
    fn rollout_model(&self) -> Result<Option<Llama>> {
        let kind = srcode_lm::qmatmul::PackedKind::Q8_0;
        match self.cfg.rollout_weights {
            RolloutWeights::Policy => Ok(None),
            RolloutWeights::Q8_0 => Ok(Some(self.policy.packed_copy(kind)?)),
            RolloutWeights::Auto if !self.policy.device().is_cpu() => Ok(None),
            RolloutWeights::Auto => match self.policy.packed_copy(kind) {
                Ok(m) => Ok(Some(m)),
                // Shapes the kernels cannot take (an input size not a multiple of 32).
                Err(srcode_lm::LmError::Unsupported(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Writes `samples/step-NNNN.jsonl` (atomically).
    fn dump_samples(
        &self,
        dir: &Path,
        step: usize,
        owners: &[usize],
        gens: &[srcode_lm::generate::Generation],
        scores: &[Scored],
        token_kl: &[Vec<f32>],
    ) -> Result<()> {
        let sdir = dir.join("samples");
        std::fs::create_dir_all(&sdir).map_err(io(&sdir))?;
        let lines: Vec<serde_json::Value> = gens
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let s = &scores[i];
                serde_json::json!({
                    "step": step,
                    "prompt": owners[i],
                    "text": self.tokenizer.decode(&g.token_ids, true).unwrap_or_default(),
                    "token_ids": g.token_ids,
                    "token_rewards": s.token,
                    "instance_reward": s.instance,
                    "flagged": s.flagged,
                    "kl": token_kl.get(i),
                })
            })
            .collect();
        let path = sdir.join(format!("step-{step:04}.jsonl"));
        srcode_core::jsonl::write_atomic(&path, &lines)?;
        Ok(())
    }

    fn step(
        &self,
        dir: &Path,
        step: usize,
        head: Option<&ValueHead>,
        params: &[(String, Var)],
        opt: &mut AdamW,
        kl_ctl: &mut algo::AdaptiveKl,
    ) -> Result<RlMetrics> {
        let cfg = &self.cfg;
        let t0 = Instant::now();
        let chosen = step_prompts(self.prompts.len(), cfg.prompts_per_step, cfg.seed, step);
        // Rollouts: G per prompt, grouped consecutively.
        let mut owners = Vec::new();
        let mut batch = Vec::new();
        for &p in &chosen {
            for _ in 0..cfg.group_size {
                owners.push(p);
                batch.push(self.prompts[p].ids.clone());
            }
        }
        let params_s = SamplingParams {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            top_k: None,
            top_p: cfg.top_p,
            seed: cfg
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(step as u64 * 7919),
            stop: Vec::new(),
            stop_token_ids: self.stop_ids.clone(),
        };
        let snapshot = self.rollout_model()?;
        let (gens, _) = generate(
            snapshot.as_ref().unwrap_or(self.policy),
            self.tokenizer,
            &batch,
            &params_s,
        )?;
        drop(snapshot);
        let rollout_seconds = t0.elapsed().as_secs_f64();
        let mut rollouts: Vec<Rollout> = Vec::with_capacity(gens.len());
        let mut scores: Vec<Scored> = Vec::with_capacity(gens.len());
        for ((p, prompt), g) in owners.iter().zip(&batch).zip(&gens) {
            let s = self.scorer.score(*p, &g.token_ids)?;
            if s.token.len() != g.token_ids.len() {
                return Err(TrainError::Input(format!(
                    "the scorer returned {} token rewards for {} tokens",
                    s.token.len(),
                    g.token_ids.len()
                )));
            }
            let mut ids = prompt.clone();
            ids.extend_from_slice(&g.token_ids);
            rollouts.push(Rollout {
                ids,
                prompt_len: prompt.len(),
                old_lp: Vec::new(),
                ref_lp: Vec::new(),
                old_v: Vec::new(),
                adv: Vec::new(),
                ret: Vec::new(),
            });
            scores.push(s);
        }
        // Rollouts without a token carry no gradient.
        let keep: Vec<usize> = (0..rollouts.len())
            .filter(|&i| rollouts[i].resp_len() > 0)
            .collect();
        // Old and reference log-probs (and old values), in minibatches.
        let lens: Vec<usize> = keep.iter().map(|&i| rollouts[i].ids.len()).collect();
        for range in crate::grad::micro_batches(&lens, cfg.micro_tokens) {
            let chunk = &keep[range];
            let rows: Vec<&Rollout> = chunk.iter().map(|&i| &rollouts[i]).collect();
            let (old, vals) = score_tokens(self.policy, head, &rows, self.pad)?;
            let (refl, _) = score_tokens(self.reference, None, &rows, self.pad)?;
            for (k, &i) in chunk.iter().enumerate() {
                rollouts[i].old_lp.clone_from(&old[k]);
                rollouts[i].ref_lp.clone_from(&refl[k]);
                if let Some(v) = &vals {
                    rollouts[i].old_v.clone_from(&v[k]);
                }
            }
        }
        // KL per token and the rewards by granularity.
        let beta = kl_ctl.beta;
        let mut seq_kl = Vec::with_capacity(rollouts.len());
        let mut token_kl: Vec<Vec<f32>> = Vec::with_capacity(rollouts.len());
        let mut seq_scores = vec![0f32; rollouts.len()];
        let mut token_terms: Vec<Vec<f32>> = vec![Vec::new(); rollouts.len()];
        for (i, r) in rollouts.iter().enumerate() {
            let s = &scores[i];
            let tok_sum: f32 = s.token.iter().sum();
            let (tok, inst) = match cfg.granularity {
                Granularity::Token => (s.token.clone(), 0.0),
                Granularity::Instance => (vec![0.0; s.token.len()], s.instance + tok_sum),
                Granularity::Both => (s.token.clone(), s.instance),
            };
            seq_scores[i] = inst;
            token_terms[i] = tok;
            let kl: Vec<f32> = r
                .old_lp
                .iter()
                .zip(&r.ref_lp)
                .map(|(&a, &b)| algo::kl(a, b, cfg.kl_estimator).0)
                .collect();
            seq_kl.push(kl.iter().sum::<f32>());
            token_kl.push(kl);
        }
        match cfg.algorithm {
            Algorithm::Ppo => {
                let mut all_adv: Vec<f32> = Vec::new();
                for &i in &keep {
                    let r = &mut rollouts[i];
                    let n = r.resp_len();
                    let mut rew = vec![0f32; n];
                    algo::reward_stream(
                        &token_terms[i],
                        &token_kl[i],
                        beta,
                        seq_scores[i],
                        &mut rew,
                    )?;
                    r.adv = vec![0.0; n];
                    r.ret = vec![0.0; n];
                    algo::gae(
                        &rew, &r.old_v, cfg.gamma, cfg.lambda, &mut r.adv, &mut r.ret,
                    )?;
                    all_adv.extend_from_slice(&r.adv);
                }
                if cfg.whiten_advantages && all_adv.len() > 1 {
                    let (m, s) = mean_std(&all_adv);
                    let inv = 1.0 / (s + 1e-8);
                    for &i in &keep {
                        for a in &mut rollouts[i].adv {
                            *a = (*a - m) * inv;
                        }
                    }
                }
            }
            Algorithm::Grpo => {
                let mut seq_adv = vec![0f32; rollouts.len()];
                algo::group_normalise(
                    &seq_scores,
                    cfg.group_size,
                    cfg.scale_by_std,
                    1e-6,
                    &mut seq_adv,
                )?;
                for &i in &keep {
                    let n = rollouts[i].resp_len();
                    let mut a = vec![0f32; n];
                    algo::grpo_token_advantages(
                        seq_adv[i],
                        &token_terms[i],
                        cfg.token_weight,
                        cfg.token_gamma,
                        &mut a,
                    )?;
                    rollouts[i].adv = a;
                }
            }
        }
        // The update.
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ ((step as u64) << 20));
        let (mut pl_sum, mut vl_sum, mut clipped, mut counted) = (0f64, 0f64, 0usize, 0usize);
        let mut grad_norm = 0.0;
        let mut order = keep.clone();
        for _ in 0..cfg.epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(cfg.minibatch) {
                let ntok: usize = chunk.iter().map(|&i| rollouts[i].resp_len()).sum();
                if ntok == 0 {
                    continue;
                }
                let scale = 1.0 / ntok as f32;
                let lens: Vec<usize> = chunk.iter().map(|&i| rollouts[i].ids.len()).collect();
                let mut acc = None;
                for range in crate::grad::micro_batches(&lens, cfg.micro_tokens) {
                    let rows: Vec<&Rollout> = chunk[range].iter().map(|&i| &rollouts[i]).collect();
                    let (ids, st) = padded(&rows, self.pad, self.policy.device())?;
                    let (lp, vals) = forward(self.policy, head, &ids, st, true)?;
                    let (b, n) = lp.dims2()?;
                    let lp_host = lp.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                    let v_host = match &vals {
                        Some(v) => Some(v.to_dtype(DType::F32)?.to_vec2::<f32>()?),
                        None => None,
                    };
                    let mut coef = vec![0f32; b * n];
                    let mut vcoef = vec![0f32; b * n];
                    for (k, r) in rows.iter().enumerate() {
                        for t in 0..r.resp_len() {
                            let j = r.prompt_len - st + t;
                            let lpt = lp_host[k][j];
                            let s = algo::clipped_surrogate(
                                lpt,
                                r.old_lp[t],
                                r.adv[t],
                                cfg.clip_low,
                                cfg.clip_high,
                            );
                            let mut c = s.grad_logp;
                            pl_sum += f64::from(s.loss);
                            clipped += usize::from(s.clipped);
                            counted += 1;
                            if cfg.algorithm == Algorithm::Grpo && beta > 0.0 {
                                c += beta * algo::kl(lpt, r.ref_lp[t], KlEstimator::K3).1;
                            }
                            if cfg.entropy_coef > 0.0 {
                                c += algo::entropy_bonus_coef(lpt, cfg.entropy_coef);
                            }
                            coef[k * n + j] = c * scale;
                            if let Some(vh) = &v_host {
                                let vl = algo::clipped_value_loss(
                                    vh[k][j],
                                    r.old_v[t],
                                    r.ret[t],
                                    cfg.value_clip,
                                );
                                vl_sum += f64::from(vl.loss);
                                vcoef[k * n + j] = cfg.vf_coef * vl.grad_v * scale;
                            }
                        }
                    }
                    let dev = self.policy.device();
                    let c = Tensor::from_vec(coef, (b, n), dev)?.to_dtype(lp.dtype())?;
                    let mut loss = (&lp * &c)?.sum_all()?;
                    if let Some(v) = &vals {
                        let vc = Tensor::from_vec(vcoef, (b, n), dev)?;
                        loss = (loss + (v * &vc)?.sum_all()?)?;
                    }
                    crate::grad::accumulate(params, &mut acc, loss.backward()?)?;
                }
                if let Some(grads) = acc {
                    let st = opt.step(&grads, cfg.max_grad_norm)?;
                    grad_norm = st.grad_norm;
                }
            }
        }
        // Adaptive KL.
        let (kl_mean, _) = mean_std(&seq_kl);
        if cfg.kl_target.is_some() {
            kl_ctl.update(kl_mean, rollouts.len());
        }
        let totals: Vec<f32> = scores
            .iter()
            .map(|s| s.token.iter().sum::<f32>() + s.instance)
            .collect();
        let (reward_mean, reward_std) = mean_std(&totals);
        let n = rollouts.len().max(1) as f32;
        let gen_tokens: usize = rollouts.iter().map(Rollout::resp_len).sum();
        let entropy =
            -rollouts.iter().flat_map(|r| &r.old_lp).sum::<f32>() / gen_tokens.max(1) as f32;
        if cfg.sample_every > 0 && (step + 1) % cfg.sample_every == 0 {
            self.dump_samples(dir, step + 1, &owners, &gens, &scores, &token_kl)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok(RlMetrics {
            step: step + 1,
            token_reward: scores
                .iter()
                .map(|s| s.token.iter().sum::<f32>())
                .sum::<f32>()
                / n,
            instance_reward: scores.iter().map(|s| s.instance).sum::<f32>() / n,
            reward_mean,
            reward_std,
            flagged_rate: scores.iter().filter(|s| s.flagged).count() as f32 / n,
            kl: kl_mean,
            kl_coef: beta,
            policy_loss: (pl_sum / counted.max(1) as f64) as f32,
            value_loss: (vl_sum / counted.max(1) as f64) as f32,
            clip_fraction: clipped as f32 / counted.max(1) as f32,
            entropy,
            response_length: gen_tokens as f32 / n,
            grad_norm,
            seconds: secs,
            rollout_seconds,
            tokens_per_second: gen_tokens as f64 / secs.max(1e-9),
        })
    }
}

/// Where the checkpoint of a run directory is.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}
