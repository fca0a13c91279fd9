//! Supervised fine-tuning on PrimeVul+: implicit prompt → secure code, chat template applied,
//! loss on the response tokens only. Options: up-weighting the tokens of the fix (`fix_spans`),
//! and SafeCoder-style unlikelihood on the tokens the vulnerable version changed. Batches are
//! bucketed by length, gradients accumulate over micro-batches, the learning rate warms up and
//! then follows a cosine or linear schedule, and a held-out split (by repair pair, so prompts of
//! one pair never straddle it) gives the eval loss.
//!
//! A run directory holds `checkpoint/` (trainable weights, optimiser state, `state.json`),
//! `metrics.jsonl` (one line per optimiser step) and, at the end, `final/` (a Hugging Face or
//! PEFT directory). The checkpoint is written to a temporary directory and renamed into place,
//! so a kill leaves the last one intact; the data order is a function of the seed, so a resumed
//! run continues exactly where the uninterrupted one would be.

use crate::checkpoint::{self, io};
use crate::error::{Result, TrainError};
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use srcode_core::{Language, Span};
use srcode_data::PrimeVulPlus;
use srcode_lm::chat::{ChatMessage, ChatTemplate};
use srcode_lm::tokenizer::Tokenizer;
use srcode_lm::train::{token_logprobs, AdamW, AdamWConfig};
use srcode_lm::Llama;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The `[sft]` section of a run's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    pub epochs: usize,
    /// Stop after this many optimiser steps (None: all epochs).
    pub max_steps: Option<usize>,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    /// `cosine`, `linear` or `constant` after the warm-up.
    pub schedule: String,
    /// The schedule ends at `lr · min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    /// Samples whose prompt and response exceed this many tokens are skipped (and counted).
    pub max_seq_len: usize,
    /// Loss weight of the tokens that overlap the fix (1 = no up-weighting).
    pub fix_weight: f32,
    /// Weight of the unlikelihood term on the vulnerable version's changed tokens (0 = off).
    pub unlikelihood_weight: f32,
    /// Share of repair pairs held out for the eval loss.
    pub eval_fraction: f32,
    /// Eval loss every this many steps (and at the end); 0 = only at the end.
    pub eval_every: usize,
    /// Checkpoint every this many steps (and at the end).
    pub save_every: usize,
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-4,
            warmup_steps: 5,
            schedule: "cosine".into(),
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            max_seq_len: 1024,
            fix_weight: 2.0,
            unlikelihood_weight: 0.0,
            eval_fraction: 0.1,
            eval_every: 0,
            save_every: 20,
            seed: 0,
        }
    }
}

impl SftConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(format!("sft.{m}")));
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and sft.grad_accum must be ≥ 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be > 0, got {}", self.lr));
        }
        if !["cosine", "linear", "constant"].contains(&self.schedule.as_str()) {
            return bad(format!(
                "schedule `{}`: expected cosine, linear or constant",
                self.schedule
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!(
                "min_lr_ratio must be in [0, 1], got {}",
                self.min_lr_ratio
            ));
        }
        if !(self.fix_weight.is_finite() && self.fix_weight > 0.0) {
            return bad(format!("fix_weight must be > 0, got {}", self.fix_weight));
        }
        if !(self.unlikelihood_weight.is_finite() && self.unlikelihood_weight >= 0.0) {
            return bad(format!(
                "unlikelihood_weight must be ≥ 0, got {}",
                self.unlikelihood_weight
            ));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad(format!(
                "eval_fraction must be in [0, 1), got {}",
                self.eval_fraction
            ));
        }
        if self.max_seq_len < 2 {
            return bad("max_seq_len must be ≥ 2".into());
        }
        Ok(())
    }

    /// Learning rate at optimiser step `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        let floor = self.lr * self.min_lr_ratio;
        match self.schedule.as_str() {
            "linear" => floor + (self.lr - floor) * (1.0 - p),
            "cosine" => floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            _ => self.lr,
        }
    }
}

/// A token sequence to be pushed away from (unlikelihood).
#[derive(Debug, Clone, PartialEq)]
pub struct Negative {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    /// Per response token: whether it is one of the vulnerable version's changed tokens.
    pub mask: Vec<bool>,
}

/// One tokenised SFT sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub pair_id: String,
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    /// Loss weight of each response token (`ids[prompt_len..]`).
    pub weights: Vec<f32>,
    pub negative: Option<Negative>,
}

impl Example {
    pub fn response_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// The assistant's answer the model is taught: the code in one fenced block. Returns the text
/// and the byte offset of the code inside it.
pub fn answer_text(code: &str, lang: Language) -> (String, usize) {
    let head = format!("```{}\n", lang.name());
    (format!("{head}{}\n```", code.trim_end()), head.len())
}

/// A prompt and its completion, tokenised.
struct Rendered {
    prompt: Vec<u32>,
    response: Vec<u32>,
    /// Byte offsets of `response`'s tokens in the completion text.
    offsets: Vec<(usize, usize)>,
    /// Where the answer starts in the completion text.
    answer_at: usize,
}

/// Renders `[user: prompt]` + the generation prompt, and the completion that follows it in the
/// full conversation (the answer and the template's end-of-turn text), tokenised separately so
/// that the boundary is exact. Returns prompt ids, response ids with byte offsets into the
/// completion, and the offset of `answer` in the completion.
fn render(prompt: &str, answer: &str, tok: &Tokenizer, chat: &ChatTemplate) -> Result<Rendered> {
    let user = [ChatMessage::user(prompt)];
    let head = chat.render(&user, true)?;
    let full = chat.render(
        &[ChatMessage::user(prompt), ChatMessage::assistant(answer)],
        false,
    )?;
    let tail = full.strip_prefix(&head).ok_or_else(|| {
        TrainError::Input(
            "the chat template renders the conversation with a different prefix than the prompt; \
             cannot separate the response tokens"
                .into(),
        )
    })?;
    let at = tail.find(answer).ok_or_else(|| {
        TrainError::Input("the chat template changed the assistant's answer".into())
    })?;
    let prompt = tok.encode(&head, false)?;
    let (response, offsets) = tok.encode_with_offsets(tail)?;
    Ok(Rendered {
        prompt,
        response,
        offsets,
        answer_at: at,
    })
}

fn overlaps(tok: (usize, usize), spans: &[Span], shift: usize) -> bool {
    spans
        .iter()
        .any(|s| tok.0 < s.end + shift && s.start + shift < tok.1)
}

/// Tokenises one PrimeVul+ sample. `None` when it is longer than `max_seq_len`.
pub fn encode_sample(
    s: &PrimeVulPlus,
    tok: &Tokenizer,
    chat: &ChatTemplate,
    cfg: &SftConfig,
) -> Result<Option<Example>> {
    let (answer, code_at) = answer_text(&s.secure, s.language);
    let Rendered {
        prompt: prompt_ids,
        response: resp,
        offsets,
        answer_at: at,
    } = render(&s.prompt, &answer, tok, chat)?;
    if prompt_ids.is_empty() || resp.is_empty() {
        return Err(TrainError::Input(format!(
            "sample {}: empty prompt or response",
            s.id
        )));
    }
    if prompt_ids.len() + resp.len() > cfg.max_seq_len {
        return Ok(None);
    }
    let shift = at + code_at;
    let weights: Vec<f32> = offsets
        .iter()
        .map(|&o| {
            if cfg.fix_weight != 1.0 && overlaps(o, &s.fix_spans, shift) {
                cfg.fix_weight
            } else {
                1.0
            }
        })
        .collect();
    let negative = if cfg.unlikelihood_weight > 0.0 {
        let (_, vuln_spans) = srcode_data::vul2safe::change(&s.secure, &s.vulnerable, s.language);
        let (vanswer, vcode_at) = answer_text(&s.vulnerable, s.language);
        let Rendered {
            prompt: vp,
            response: vr,
            offsets: voff,
            answer_at: vat,
        } = render(&s.prompt, &vanswer, tok, chat)?;
        let mask: Vec<bool> = voff
            .iter()
            .map(|&o| overlaps(o, &vuln_spans, vat + vcode_at))
            .collect();
        (mask.iter().any(|&m| m) && vp.len() + vr.len() <= cfg.max_seq_len).then(|| {
            let prompt_len = vp.len();
            let mut ids = vp;
            ids.extend(vr);
            Negative {
                ids,
                prompt_len,
                mask,
            }
        })
    } else {
        None
    };
    let prompt_len = prompt_ids.len();
    let mut ids = prompt_ids;
    ids.extend(resp);
    Ok(Some(Example {
        id: s.id.clone(),
        pair_id: s.pair_id.clone(),
        ids,
        prompt_len,
        weights,
        negative,
    }))
}

/// Whether a repair pair belongs to the held-out split (a stable hash of its id).
pub fn is_eval_pair(pair_id: &str, fraction: f32) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pair_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 10_000) as f32 / 10_000.0 < fraction
}

/// What one micro-batch's loss was made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossParts {
    /// Weighted mean negative log-likelihood of the response tokens.
    pub nll: f32,
    /// Mean unlikelihood loss over the masked tokens (0 when off or absent).
    pub unlikelihood: f32,
    /// Response tokens scored.
    pub tokens: usize,
}

fn padded(rows: &[(&[u32], usize)], pad: u32) -> Result<(Tensor, usize, usize)> {
    let (t, start) = crate::grad::right_padded(rows, pad, &candle_core::Device::Cpu)?;
    let len = t.dim(1)?;
    Ok((t, start, len))
}

/// The loss of a micro-batch: `Σ w·(−log p) / Σ w` over response tokens, plus
/// `unlikelihood_weight · mean(−log(1 − p))` over the vulnerable version's changed tokens.
/// Differentiable with respect to the model's trainable tensors.
pub fn batch_loss(
    model: &Llama,
    batch: &[&Example],
    cfg: &SftConfig,
    pad: u32,
) -> Result<(Tensor, LossParts)> {
    let device = model.device().clone();
    let rows: Vec<(&[u32], usize)> = batch
        .iter()
        .map(|e| (e.ids.as_slice(), e.prompt_len))
        .collect();
    let (ids, start, len) = padded(&rows, pad)?;
    let ids = ids.to_device(&device)?;
    let lp = token_logprobs(model, &ids, start, true)?;
    let n = len - start;
    let mut w = vec![0f32; batch.len() * n];
    for (i, e) in batch.iter().enumerate() {
        for (k, &wt) in e.weights.iter().enumerate() {
            w[i * n + (e.prompt_len + k - start)] = wt;
        }
    }
    let total_w: f32 = w.iter().sum();
    let tokens: usize = batch.iter().map(|e| e.response_len()).sum();
    let w = Tensor::from_vec(w, (batch.len(), n), &device)?.to_dtype(lp.dtype())?;
    let nll = ((&lp * &w)?.sum_all()?.neg()? / f64::from(total_w.max(1e-6)))?;
    let mut parts = LossParts {
        nll: nll.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        unlikelihood: 0.0,
        tokens,
    };
    let negs: Vec<&Negative> = batch.iter().filter_map(|e| e.negative.as_ref()).collect();
    if cfg.unlikelihood_weight == 0.0 || negs.is_empty() {
        return Ok((nll, parts));
    }
    let rows: Vec<(&[u32], usize)> = negs
        .iter()
        .map(|n| (n.ids.as_slice(), n.prompt_len))
        .collect();
    let (ids, start, len) = padded(&rows, pad)?;
    let lp = token_logprobs(model, &ids.to_device(&device)?, start, true)?;
    let n = len - start;
    let mut m = vec![0f32; negs.len() * n];
    for (i, g) in negs.iter().enumerate() {
        for (k, &on) in g.mask.iter().enumerate() {
            if on {
                m[i * n + (g.prompt_len + k - start)] = 1.0;
            }
        }
    }
    let count: f32 = m.iter().sum();
    let m = Tensor::from_vec(m, (negs.len(), n), &device)?.to_dtype(lp.dtype())?;
    // −log(1 − p), with p kept below 1 so the log stays finite.
    let one_minus = lp.exp()?.neg()?.affine(1.0, 1.0)?.clamp(1e-6f32, 1.0f32)?;
    let ul = ((one_minus.log()?.neg()? * &m)?.sum_all()? / f64::from(count.max(1.0)))?;
    parts.unlikelihood = ul.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let total = (nll + (ul * f64::from(cfg.unlikelihood_weight))?)?;
    Ok((total, parts))
}

/// The micro-batches of one epoch: shuffled with `seed + epoch`, then sorted by length within
/// windows of 16 batches, so batches hold sequences of similar length (little padding) while
/// the order stays random.
pub fn epoch_batches(
    examples: &[Example],
    batch: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch as u64));
    idx.shuffle(&mut rng);
    let window = batch.max(1) * 16;
    let mut out = Vec::new();
    for w in idx.chunks_mut(window) {
        w.sort_by_key(|&i| examples[i].ids.len());
        out.extend(w.chunks(batch.max(1)).map(<[usize]>::to_vec));
    }
    out.shuffle(&mut rng);
    out
}

/// Mean loss over `examples` without gradients (the eval loss).
pub fn eval_loss(model: &Llama, examples: &[Example], cfg: &SftConfig, pad: u32) -> Result<f32> {
    if examples.is_empty() {
        return Ok(f32::NAN);
    }
    let (mut sum, mut weight) = (0f64, 0f64);
    for chunk in examples.chunks(cfg.batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let rows: Vec<(&[u32], usize)> = refs
            .iter()
            .map(|e| (e.ids.as_slice(), e.prompt_len))
            .collect();
        let (ids, start, _) = padded(&rows, pad)?;
        let lp = token_logprobs(model, &ids.to_device(model.device())?, start, false)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (e, row) in refs.iter().zip(lp) {
            for k in 0..e.response_len() {
                // Plain token-mean NLL: comparable across fix weights.
                sum -= f64::from(row[e.prompt_len + k - start]);
                weight += 1.0;
            }
        }
    }
    Ok((sum / weight.max(1.0)) as f32)
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftMetrics {
    pub step: usize,
    pub epoch: usize,
    pub loss: f32,
    pub nll: f32,
    pub unlikelihood: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f32>,
}

/// Saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftState {
    /// Optimiser steps done.
    pub step: usize,
    pub total_steps: usize,
    /// The configuration the run started with; a resumed run must use the same.
    pub config: SftConfig,
    pub train_examples: usize,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SftReport {
    pub resumed_from: Option<usize>,
    pub steps: usize,
    pub total_steps: usize,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub eval_loss_before: Option<f32>,
    pub eval_loss_after: Option<f32>,
    pub checkpoint: PathBuf,
}

/// Writes the trainable tensors, the optimiser state and `state.json` into `dir/checkpoint`.
pub fn save_state(model: &Llama, opt: &AdamW, state: &SftState, dir: &Path) -> Result<()> {
    checkpoint::save(model.trainable(), opt, state, dir)
}

/// Loads a checkpoint into `model` and `opt`; returns its state.
pub fn load_state(model: &Llama, opt: &mut AdamW, ckpt: &Path) -> Result<SftState> {
    checkpoint::load(model.trainable(), opt, ckpt)
}

/// Trains `model` (its trainable tensors: LoRA adapters or all weights) on `train`, evaluating
/// on `eval`, in `dir`. Resumes from `dir/checkpoint` when there is one. `pause_after` stops
/// (with a checkpoint) once that many steps of the schedule are done, without changing the
/// schedule: the next call resumes. `on_step` sees every step's metrics (for a progress bar).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Llama,
    train: &[Example],
    eval: &[Example],
    cfg: &SftConfig,
    pad: u32,
    dir: &Path,
    pause_after: Option<usize>,
    on_step: &dyn Fn(&SftMetrics, usize),
) -> Result<SftReport> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(TrainError::Input("no training examples".into()));
    }
    if model.trainable().is_empty() {
        return Err(TrainError::Input(
            "the model has no trainable tensors (load dense trainable weights or attach LoRA)"
                .into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let per_epoch = train
        .len()
        .div_ceil(cfg.batch_size)
        .div_ceil(cfg.grad_accum);
    let total = cfg
        .max_steps
        .map_or(per_epoch * cfg.epochs, |m| {
            m.min(per_epoch * cfg.epochs.max(1))
        })
        .max(1);
    let mut opt = AdamW::new(
        model.trainable(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let metrics_path = dir.join("metrics.jsonl");
    let mut start_step = 0;
    let mut resumed_from = None;
    if let Some(ck) = checkpoint::find(dir) {
        let st = load_state(model, &mut opt, &ck)?;
        if st.config != *cfg || st.train_examples != train.len() {
            return Err(TrainError::Input(format!(
                "{} was written with another configuration or dataset; use a new run \
                 directory or the same settings",
                ck.display()
            )));
        }
        start_step = st.step;
        resumed_from = Some(st.step);
        checkpoint::truncate_metrics(&metrics_path, st.step)?;
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(io(&metrics_path))?;
    }
    let eval_before = if start_step == 0 && !eval.is_empty() {
        Some(eval_loss(model, eval, cfg, pad)?)
    } else {
        None
    };
    // The whole schedule of micro-batches, as a function of the seed.
    let mut micro: Vec<(usize, Vec<usize>)> = Vec::new();
    for epoch in 0..cfg.epochs.max(1) {
        micro.extend(
            epoch_batches(train, cfg.batch_size, cfg.seed, epoch)
                .into_iter()
                .map(|b| (epoch, b)),
        );
    }
    let mut report = SftReport {
        resumed_from,
        steps: start_step,
        total_steps: total,
        first_loss: None,
        last_loss: None,
        eval_loss_before: eval_before,
        eval_loss_after: None,
        checkpoint: dir.join("checkpoint"),
    };
    let save = |opt: &AdamW, step: usize| {
        save_state(
            model,
            opt,
            &SftState {
                step,
                total_steps: total,
                config: cfg.clone(),
                train_examples: train.len(),
            },
            dir,
        )
    };
    for step in start_step..total {
        let t0 = Instant::now();
        let lr = cfg.lr_at(step, total);
        opt.config_mut().lr = lr;
        let mut acc = None;
        let (mut loss_sum, mut nll_sum, mut ul_sum, mut tokens) = (0f32, 0f32, 0f32, 0usize);
        let mut epoch = 0;
        for k in 0..cfg.grad_accum {
            let Some((e, b)) = micro.get(step * cfg.grad_accum + k) else {
                break;
            };
            epoch = *e;
            let batch: Vec<&Example> = b.iter().map(|&i| &train[i]).collect();
            let (loss, parts) = batch_loss(model, &batch, cfg, pad)?;
            let scaled = (loss / cfg.grad_accum as f64)?;
            loss_sum += scaled.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            nll_sum += parts.nll / cfg.grad_accum as f32;
            ul_sum += parts.unlikelihood / cfg.grad_accum as f32;
            tokens += parts.tokens;
            crate::grad::accumulate(model.trainable(), &mut acc, scaled.backward()?)?;
        }
        let Some(grads) = acc else { break };
        let st = opt.step(&grads, cfg.max_grad_norm)?;
        if !loss_sum.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss: loss_sum,
            });
        }
        let done = step + 1;
        let eval_now = !eval.is_empty()
            && ((cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == total);
        let m = SftMetrics {
            step: done,
            epoch,
            loss: loss_sum,
            nll: nll_sum,
            unlikelihood: ul_sum,
            lr,
            grad_norm: st.grad_norm,
            tokens,
            tokens_per_second: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            eval_loss: if eval_now {
                Some(eval_loss(model, eval, cfg, pad)?)
            } else {
                None
            },
        };
        checkpoint::append_line(&metrics_path, &m)?;
        report.first_loss.get_or_insert(m.loss);
        report.last_loss = Some(m.loss);
        if done == total {
            report.eval_loss_after = m.eval_loss;
        }
        report.steps = done;
        on_step(&m, total);
        let pause = pause_after.is_some_and(|p| done >= p);
        if done % cfg.save_every.max(1) == 0 || done == total || pause {
            save(&opt, done)?;
        }
        if pause {
            break;
        }
    }
    Ok(report)
}
