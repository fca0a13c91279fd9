//! `srcode bench decode|train`: the runtime's own measurements, printed as JSON for
//! `bench/run.py`, which puts them beside llama.cpp and PyTorch on the same machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use srcode_lm::generate::{generate, SamplingParams};
use srcode_lm::model::WeightMode;
use srcode_lm::train::{token_logprobs, AdamW, AdamWConfig};
use srcode_lm::Tensor;

use crate::generate::{parse_float_dtype, parse_weights, pick_device};
use crate::home;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Greedy decoding speed: prefill and decode tokens/s, single stream or a batch.
    Decode(DecodeArgs),
    /// Training step speed (forward + backward + AdamW; full or LoRA) and peak memory.
    Train(TrainArgs),
}

#[derive(Args)]
pub struct DecodeArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// File holding the (already chat-formatted) prompt.
    #[arg(long)]
    prompt_file: PathBuf,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed repetitions (the median is reported) after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// How to hold the weights (see `srcode generate --help`).
    #[arg(long)]
    weights: Option<String>,
    /// Compute device (`auto`, `cpu`, `cuda`, `cuda:N`).
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Timed steps (medians are reported) after one warm-up step.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Train LoRA adapters of this rank instead of the full model.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Float type of weights and activations (`f32` or `bf16`).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Compute device (`auto`, `cpu`, `cuda`, `cuda:N`).
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Decode(a) => decode(a),
        BenchCommand::Train(a) => train(a),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn decode(a: DecodeArgs) -> Result<()> {
    if a.batch == 0 || a.new_tokens == 0 {
        bail!("--batch and --new-tokens must be at least 1");
    }
    let path = home::resolve_model(a.model.as_deref())?;
    let prompt = std::fs::read_to_string(&a.prompt_file)
        .with_context(|| format!("reading {}", a.prompt_file.display()))?;
    let device = pick_device(&a.device)?;
    let lm = srcode_lm::loader::load(&path, &device, parse_weights(a.weights.as_deref())?)?;
    let ids = lm.tokenizer.encode(&prompt, false)?;
    let params = SamplingParams {
        max_new_tokens: a.new_tokens,
        ..Default::default()
    };
    let prompts = vec![ids.clone(); a.batch];
    let mut prefill = Vec::new();
    let mut dec = Vec::new();
    for i in 0..=a.repeats.max(1) {
        let (gens, st) = generate(&lm.model, &lm.tokenizer, &prompts, &params)?;
        if gens.iter().any(|g| g.token_ids.len() != a.new_tokens) {
            bail!("a sequence stopped early; decode benchmark needs exactly --new-tokens tokens");
        }
        if i > 0 {
            prefill.push(st.prefill_tokens as f64 / st.prefill_seconds);
            // The first new token of each row comes from the prefill's logits; the decode time
            // covers the remaining `new_tokens - 1` forward passes (llama.cpp counts the same).
            let passes = (a.new_tokens - 1).max(1) * a.batch;
            dec.push(passes as f64 / st.decode_seconds);
        }
    }
    let pf = median(prefill);
    let agg = median(dec);
    let v = serde_json::json!({
        "batch": a.batch,
        "prompt_tokens": ids.len(),
        "new_tokens": a.new_tokens,
        "prefill_tokens_per_second": pf,
        "decode_tokens_per_second": agg / a.batch as f64,
        "aggregate_tokens_per_second": agg,
        "threads": rayon_threads(),
        "weights": a.weights.as_deref().unwrap_or("default"),
        "device": device_name(&device),
    });
    print_result(&v, a.json)
}

fn device_name(d: &srcode_lm::Device) -> &'static str {
    if d.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn print_result(v: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(v)?);
    } else {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn train(a: TrainArgs) -> Result<()> {
    if a.seq_len < 2 || a.batch == 0 {
        bail!("--seq-len must be at least 2 and --batch at least 1");
    }
    let path = home::resolve_model(a.model.as_deref())?;
    let device = pick_device(&a.device)?;
    let dtype = parse_float_dtype(&a.dtype)?;
    let mode = WeightMode::Dense {
        dtype,
        trainable: a.lora_rank.is_none(),
    };
    let mut lm = srcode_lm::loader::load(&path, &device, Some(mode))?;
    if let Some(r) = a.lora_rank {
        let cfg = srcode_lm::LoraConfig {
            rank: r,
            alpha: 2.0 * r as f64,
            ..Default::default()
        };
        lm.model.attach_lora(&cfg, 0)?;
    }
    // A fixed, realistic sequence: the tokenised text of a C function, repeated.
    let text = "int copy_name(char *dst, size_t n, const char *src) {\n    if (n == 0) return -1;\n    size_t len = strlen(src);\n    if (len >= n) len = n - 1;\n    memcpy(dst, src, len);\n    dst[len] = '\\0';\n    return (int)len;\n}\n";
    let base = lm.tokenizer.encode(text, false)?;
    let ids: Vec<u32> = (0..a.batch)
        .flat_map(|r| base.iter().cycle().skip(r).take(a.seq_len).copied())
        .collect();
    let ids = Tensor::from_vec(ids, (a.batch, a.seq_len), &device)?;
    let mut opt = AdamW::new(lm.model.trainable(), AdamWConfig::default())?;
    let (mut fw, mut bw, mut os) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=a.steps.max(1) {
        let t0 = Instant::now();
        let lp = token_logprobs(&lm.model, &ids, 1, true)?;
        let loss = lp.mean_all()?.neg()?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        // GPU kernels run asynchronously: wait for them so each phase is timed on its own.
        device.synchronize()?;
        let t2 = Instant::now();
        opt.step(&grads, Some(1.0))?;
        drop(grads);
        device.synchronize()?;
        let t3 = Instant::now();
        if i > 0 {
            fw.push((t1 - t0).as_secs_f64());
            bw.push((t2 - t1).as_secs_f64());
            os.push((t3 - t2).as_secs_f64());
        }
    }
    let (f, b, o) = (median(fw), median(bw), median(os));
    let tokens = (a.seq_len * a.batch) as f64;
    let v = serde_json::json!({
        "seq_len": a.seq_len,
        "batch": a.batch,
        "dtype": a.dtype,
        "device": device_name(&device),
        "mode": if a.lora_rank.is_some() { "lora" } else { "full" },
        "tokens_per_second": tokens / (f + b),
        "step_tokens_per_second": tokens / (f + b + o),
        "forward_seconds": f,
        "backward_seconds": b,
        "optimizer_seconds": o,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": rayon_threads(),
    });
    print_result(&v, a.json)
}
