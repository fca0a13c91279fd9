//! Sampling and batched generation. Several sequences decode together through one KV cache:
//! prompts are left-padded to a common length, finished rows are dropped from the cache as they
//! stop, and every generated token comes with its log-probability under the model (temperature 1,
//! before top-k/top-p truncation, which is what PPO ratios and KL need).

use std::time::Instant;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{LmError, Result};
use crate::model::{ForwardOpts, Llama};
use crate::tokenizer::Tokenizer;

/// Sampling settings. `temperature <= 0` means greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
    /// Generation stops when the decoded text contains one of these; the returned text ends
    /// before it.
    pub stop: Vec<String>,
    /// Generation stops after one of these tokens (usually the tokenizer's end tokens).
    pub stop_token_ids: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Rejects settings that cannot be sampled from.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(LmError::InvalidArgument(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(LmError::InvalidArgument(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
        }
        if self.top_k == Some(0) {
            return Err(LmError::InvalidArgument("top_k must be ≥ 1".into()));
        }
        Ok(())
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end token or a stop string.
    Stop,
    /// `max_new_tokens` or the context limit.
    Length,
}

/// One generated sequence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    /// Generated token ids (a stop token is included; tokens after a stop string are not).
    pub token_ids: Vec<u32>,
    /// Decoded text, without special tokens and cut before a stop string.
    pub text: String,
    /// Log-probability of each generated token under the model.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Timing of a generation call.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct GenerationStats {
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
}

/// Samples one token id from a row of logits. Returns `(token, logprob under the raw model)`.
/// `scratch` is reused across calls to keep the decode loop allocation-free.
pub fn sample_row(
    logits: &[f32],
    p: &SamplingParams,
    rng: &mut impl Rng,
    scratch: &mut Vec<(u32, f32)>,
) -> (u32, f32) {
    // Vectorised max and log-sum-exp: over a 49k vocabulary, libm's `expf` and scalar folds
    // were 7% of a batch-8 decode profile.
    let m = crate::ops::max_of(logits);
    let lse = m + crate::ops::sum_exp(logits, m, 1.0).ln();
    // The first position of the maximum (0 when all are NaN, as before).
    let argmax = logits.iter().position(|&x| x == m).unwrap_or(0);
    if p.temperature <= 0.0 || p.top_k == Some(1) {
        return (argmax as u32, logits[argmax] - lse);
    }
    let t = p.temperature;
    // Probabilities at temperature t, relative to the maximum (so the best token has weight 1).
    scratch.clear();
    let top_p = p.top_p.unwrap_or(1.0);
    // Tokens below this weight cannot be in the nucleus: together they hold less than the mass
    // the nucleus leaves out, so dropping them early is exact and avoids sorting the vocabulary.
    // Total weight at temperature t; only the nucleus needs it.
    let inv_t = 1.0 / t;
    let total: f32 = if top_p < 1.0 {
        crate::ops::sum_exp(logits, m, inv_t)
    } else {
        0.0
    };
    let floor = (1.0 - top_p) * total / logits.len() as f32 * 0.5;
    for (i, &x) in logits.iter().enumerate() {
        let w = crate::ops::exp_approx((x - m) * inv_t);
        if w > floor {
            scratch.push((i as u32, w));
        }
    }
    if let Some(k) = p.top_k {
        if k < scratch.len() {
            scratch.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            scratch.truncate(k);
        }
    }
    if top_p < 1.0 {
        scratch.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut acc = 0.0;
        let mut keep = scratch.len();
        for (i, &(_, w)) in scratch.iter().enumerate() {
            acc += w / total;
            if acc >= top_p {
                keep = i + 1;
                break;
            }
        }
        scratch.truncate(keep.max(1));
    }
    let sum: f32 = scratch.iter().map(|c| c.1).sum();
    let mut u = rng.random::<f32>() * sum;
    let mut tok = scratch.last().map_or(argmax as u32, |c| c.0);
    for &(id, w) in scratch.iter() {
        if u < w {
            tok = id;
            break;
        }
        u -= w;
    }
    (tok, logits[tok as usize] - lse)
}

struct Row<'a> {
    params: &'a SamplingParams,
    max_new: usize,
    prompt_tokens: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    bytes: Vec<u8>,
    /// Bytes of `bytes` already handed to the sink as text.
    emitted: usize,
    stop_at: Option<usize>,
    finish: Option<FinishReason>,
    rng: rand::rngs::StdRng,
    /// Candidate buffer of [`sample_row`], kept across steps.
    scratch: Vec<(u32, f32)>,
}

/// Samples every active row (`rows[k]` reads `logits[k]`) on candle's worker pool: the
/// log-sum-exp over the vocabulary is the largest serial cost of a batched decode step, and
/// the second core would otherwise wait. Each row has its own generator, so the tokens are those
/// of sampling one row after another.
fn sample_rows(logits: &[Vec<f32>], rows: &mut [&mut Row<'_>]) -> Vec<(u32, f32)> {
    let mut picks = vec![(0u32, 0f32); rows.len()];
    if rows.len() < 2 {
        for ((pick, row), l) in picks.iter_mut().zip(rows.iter_mut()).zip(logits) {
            *pick = sample_row(l, row.params, &mut row.rng, &mut row.scratch);
        }
        return picks;
    }
    let rp = crate::ops::Disjoint(rows.as_mut_ptr());
    let pp = crate::ops::Disjoint(picks.as_mut_ptr());
    let n = rows.len().min(logits.len());
    candle_core::utils::barrier_pool().execute_chunked(n, |range| {
        let (rp, pp) = (&rp, &pp);
        for k in range {
            // SAFETY: task k alone touches rows[k] and picks[k] (k < n ≤ both lengths), and
            // both outlive the pool call.
            unsafe {
                let row: &mut Row<'_> = &mut **rp.0.add(k);
                *pp.0.add(k) = sample_row(&logits[k], row.params, &mut row.rng, &mut row.scratch);
            }
        }
    });
    picks
}

/// One row of a [`generate_rows`] batch: its prompt, its own sampling settings and its seed.
#[derive(Debug, Clone, Copy)]
pub struct RowSpec<'a> {
    pub prompt: &'a [u32],
    pub params: &'a SamplingParams,
    pub seed: u64,
}

/// What a streaming sink sees after each sampled token.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// Index of the row in the batch.
    pub row: usize,
    pub token: u32,
    pub logprob: f32,
    /// Text that is now final: complete UTF-8, never part of a stop string. The deltas of a row
    /// concatenate to its [`Generation::text`].
    pub text_delta: &'a str,
    /// Set on the row's last event.
    pub finish: Option<FinishReason>,
}

/// What a sink tells the decoder after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkControl {
    Continue,
    /// Stop this row now (its reader went away); it finishes with [`FinishReason::Length`].
    Cancel,
}

/// Generates a continuation for each prompt (token ids) in one batch. Row `i` samples with seed
/// `params.seed + i`, so results do not depend on what else is in the batch.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> Result<(Vec<Generation>, GenerationStats)> {
    generate_seeded(model, tok, prompts, params, None)
}

/// [`generate`] with one seed per row (`seeds[i]` for prompt `i`) instead of `params.seed + i`,
/// so a row's sample depends only on its own seed, whatever batch it lands in.
pub fn generate_seeded(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    seeds: Option<&[u64]>,
) -> Result<(Vec<Generation>, GenerationStats)> {
    if let Some(s) = seeds {
        if s.len() != prompts.len() {
            return Err(LmError::InvalidArgument(format!(
                "{} seeds for {} prompts",
                s.len(),
                prompts.len()
            )));
        }
    }
    let specs: Vec<RowSpec<'_>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| RowSpec {
            prompt: p,
            params,
            seed: seeds.map_or(params.seed.wrapping_add(i as u64), |s| s[i]),
        })
        .collect();
    generate_rows(model, tok, &specs, &mut |_| SinkControl::Continue)
}

/// The batched decoder behind [`generate`]: every row has its own prompt, sampling settings,
/// stop conditions and seed (a server batches unrelated requests this way), and `sink` sees
/// every token as it is sampled, with the text it makes final (streaming).
pub fn generate_rows(
    model: &Llama,
    tok: &Tokenizer,
    specs: &[RowSpec<'_>],
    sink: &mut dyn FnMut(TokenEvent<'_>) -> SinkControl,
) -> Result<(Vec<Generation>, GenerationStats)> {
    for s in specs {
        s.params.validate()?;
    }
    if specs.is_empty() {
        return Ok((Vec::new(), GenerationStats::default()));
    }
    if let Some(i) = specs.iter().position(|s| s.prompt.is_empty()) {
        return Err(LmError::InvalidArgument(format!(
            "prompt {i} has no tokens"
        )));
    }
    let ctx = model.config().max_position_embeddings;
    let longest = specs.iter().map(|s| s.prompt.len()).max().unwrap_or(0);
    if longest >= ctx {
        return Err(LmError::InvalidArgument(format!(
            "a prompt of {longest} tokens leaves no room in the model's context of {ctx}"
        )));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(bad) = specs
        .iter()
        .flat_map(|s| s.prompt.iter())
        .find(|&&t| t >= vocab)
    {
        return Err(LmError::InvalidArgument(format!(
            "prompt token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let room = ctx - longest;
    let device = model.device();
    let mut stats = GenerationStats::default();
    let mut rows: Vec<Row<'_>> = specs
        .iter()
        .map(|s| Row {
            params: s.params,
            max_new: s.params.max_new_tokens.min(room),
            prompt_tokens: s.prompt.len(),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            bytes: Vec::new(),
            emitted: 0,
            stop_at: None,
            finish: None,
            rng: rand::rngs::StdRng::seed_from_u64(s.seed),
            scratch: Vec::new(),
        })
        .collect();
    let max_new = rows.iter().map(|r| r.max_new).max().unwrap_or(0);
    if max_new == 0 {
        for r in &mut rows {
            r.finish = Some(FinishReason::Length);
        }
        return Ok((finish_rows(rows), stats));
    }

    // Prefill: left-pad to a common length.
    let mut pad_left: Vec<usize> = specs.iter().map(|s| longest - s.prompt.len()).collect();
    let mut ids = Vec::with_capacity(specs.len() * longest);
    for s in specs {
        ids.extend(std::iter::repeat_n(0u32, longest - s.prompt.len()));
        ids.extend_from_slice(s.prompt);
    }
    let ids = Tensor::from_vec(ids, (specs.len(), longest), device)?;
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let opts = ForwardOpts {
        pad_left: &pad_left,
        grad: false,
    };
    let hidden = model.forward_hidden(&ids, opts, Some(&mut cache))?;
    let last = hidden.narrow(1, longest - 1, 1)?;
    let mut logits = model.logits(&last)?.squeeze(1)?;
    stats.prefill_tokens = specs.iter().map(|s| s.prompt.len()).sum();
    stats.prefill_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut active: Vec<usize> = (0..rows.len()).collect();
    while !active.is_empty() {
        let l = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        // `active` stays in ascending order, so one pass over `rows` picks the active ones,
        // the k-th reading logits row k.
        let picks = {
            let mut want = active.iter().copied().peekable();
            let mut live: Vec<&mut Row<'_>> = rows
                .iter_mut()
                .enumerate()
                .filter_map(|(ri, r)| want.next_if_eq(&ri).map(|_| r))
                .collect();
            sample_rows(&l, &mut live)
        };
        let mut next = Vec::with_capacity(active.len());
        for (slot, &ri) in active.iter().enumerate() {
            let row = &mut rows[ri];
            let p = row.params;
            let (t, lp) = picks[slot];
            row.tokens.push(t);
            row.logprobs.push(lp);
            stats.decode_tokens += 1;
            next.push(t);
            if p.stop_token_ids.contains(&t) {
                row.finish = Some(FinishReason::Stop);
            } else {
                if !tok.is_special(t) {
                    let before = row.bytes.len();
                    row.bytes.extend_from_slice(tok.token_bytes(t));
                    if let Some(at) = find_stop(&row.bytes, before, &p.stop) {
                        row.stop_at = Some(at);
                        row.finish = Some(FinishReason::Stop);
                    }
                }
                if row.finish.is_none() && row.tokens.len() >= row.max_new {
                    row.finish = Some(FinishReason::Length);
                }
            }
            if emit(row, ri, t, lp, sink) == SinkControl::Cancel && row.finish.is_none() {
                row.finish = Some(FinishReason::Length);
            }
        }
        // Drop finished rows from the batch and the cache.
        let keep: Vec<usize> = (0..active.len())
            .filter(|&s| rows[active[s]].finish.is_none())
            .collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() != active.len() {
            cache.retain_rows(&keep)?;
            active = keep.iter().map(|&s| active[s]).collect();
            next = keep.iter().map(|&s| next[s]).collect();
            pad_left = keep.iter().map(|&s| pad_left[s]).collect();
        }
        let ids = Tensor::from_vec(next, (active.len(), 1), device)?;
        let opts = ForwardOpts {
            pad_left: &pad_left,
            grad: false,
        };
        let hidden = model.forward_hidden(&ids, opts, Some(&mut cache))?;
        logits = model.logits(&hidden)?.squeeze(1)?;
    }
    stats.decode_seconds = t1.elapsed().as_secs_f64();
    Ok((finish_rows(rows), stats))
}

/// Hands the sink the row's newly final text: up to its stop string when it stopped on one,
/// else all but a tail that could still become a stop string, cut back to whole characters.
fn emit(
    row: &mut Row<'_>,
    ri: usize,
    token: u32,
    logprob: f32,
    sink: &mut dyn FnMut(TokenEvent<'_>) -> SinkControl,
) -> SinkControl {
    let end = match (row.stop_at, row.finish) {
        (Some(at), _) => at,
        (None, Some(_)) => row.bytes.len(),
        (None, None) => row.bytes.len() - partial_stop_suffix(&row.bytes, &row.params.stop),
    };
    let end = end.max(row.emitted);
    let fresh = &row.bytes[row.emitted..end];
    let valid = match std::str::from_utf8(fresh) {
        Ok(_) => fresh.len(),
        // An incomplete character at the end waits for its next bytes; invalid bytes in the
        // middle (a model can emit them) go out as U+FFFD below.
        Err(e) if e.error_len().is_none() && row.finish.is_none() => e.valid_up_to(),
        Err(_) => fresh.len(),
    };
    let delta = String::from_utf8_lossy(&fresh[..valid]);
    row.emitted += valid;
    sink(TokenEvent {
        row: ri,
        token,
        logprob,
        text_delta: &delta,
        finish: row.finish,
    })
}

/// Length of the longest suffix of `bytes` that is a proper prefix of a stop string.
fn partial_stop_suffix(bytes: &[u8], stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        let s = s.as_bytes();
        for k in (best + 1..s.len().min(bytes.len() + 1)).rev() {
            if bytes.ends_with(&s[..k]) {
                best = k;
                break;
            }
        }
    }
    best
}

fn finish_rows(rows: Vec<Row<'_>>) -> Vec<Generation> {
    rows.into_iter()
        .map(|r| {
            let bytes = match r.stop_at {
                Some(at) => &r.bytes[..at],
                None => &r.bytes[..],
            };
            Generation {
                text: String::from_utf8_lossy(bytes).into_owned(),
                token_ids: r.tokens,
                logprobs: r.logprobs,
                finish_reason: r.finish.unwrap_or(FinishReason::Length),
                prompt_tokens: r.prompt_tokens,
            }
        })
        .collect()
}

/// Byte position of the earliest stop string that ends in the newly added bytes.
fn find_stop(bytes: &[u8], new_from: usize, stops: &[String]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for s in stops {
        let s = s.as_bytes();
        if s.is_empty() || bytes.len() < s.len() {
            continue;
        }
        // Only windows that end in the new bytes can be new matches.
        let first = new_from.saturating_sub(s.len() - 1);
        if let Some(pos) = bytes[first..].windows(s.len()).position(|w| w == s) {
            let at = first + pos;
            best = Some(best.map_or(at, |b: usize| b.min(at)));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_stop_suffixes_are_held_back() {
        let stops = vec!["</code>".to_string(), "\n\n".to_string()];
        assert_eq!(partial_stop_suffix(b"x = 1</co", &stops), 4);
        assert_eq!(partial_stop_suffix(b"x = 1\n", &stops), 1);
        assert_eq!(partial_stop_suffix(b"x = 1", &stops), 0);
        assert_eq!(partial_stop_suffix(b"<", &stops), 1);
        assert_eq!(partial_stop_suffix(b"", &stops), 0);
    }

    #[test]
    fn greedy_picks_argmax_and_reports_its_logprob() {
        let logits = [1.0f32, 3.0, 2.0];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let (t, lp) = sample_row(
            &logits,
            &SamplingParams::default(),
            &mut rng,
            &mut Vec::new(),
        );
        assert_eq!(t, 1);
        let lse = (1f32.exp() + 3f32.exp() + 2f32.exp()).ln();
        assert!((lp - (3.0 - lse)).abs() < 1e-5);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [0.0f32, 5.0, 4.9, -3.0, 4.8];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(2),
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(sample_row(&logits, &p, &mut rng, &mut Vec::new()).0);
        }
        assert_eq!(seen, [1u32, 2].into_iter().collect());
        let p = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.3),
            ..Default::default()
        };
        for _ in 0..100 {
            assert_eq!(sample_row(&logits, &p, &mut rng, &mut Vec::new()).0, 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]
        let logits = [0.0f32, 3f32.ln()];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| sample_row(&logits, &p, &mut rng, &mut Vec::new()).0 == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn stop_strings_are_found_across_token_boundaries() {
        let stops = vec!["\n```".to_string()];
        let b = b"code();\n``".to_vec();
        assert_eq!(find_stop(&b, 8, &stops), None);
        let mut b2 = b.clone();
        b2.push(b'`');
        assert_eq!(find_stop(&b2, b.len(), &stops), Some(7));
    }

    #[test]
    fn bad_sampling_params_are_rejected() {
        let p = SamplingParams {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let p = SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        };
        assert!(p.validate().is_err());
    }
}
