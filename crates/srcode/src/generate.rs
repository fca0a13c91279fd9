//! `srcode generate`: one prompt (or `--n` samples of it, batched) through a local model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use srcode_lm::chat::ChatMessage;
use srcode_lm::generate::{generate, SamplingParams};

use crate::home;

#[derive(Args)]
pub struct GenerateArgs {
    /// GGUF file or Hugging Face directory (default: the fetched default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The prompt text (use `-` to read it from standard input).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for `--chat`.
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Random seed (sample i uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Number of samples, decoded together as one batch.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// How to hold the weights: q4_1, q8_0, q4_0, f32, bf16, f16 (default on the CPU: a Q4_1
    /// GGUF as stored, anything else Q8_0).
    #[arg(long)]
    pub weights: Option<String>,
    /// A LoRA adapter directory (`final/` of `srcode train sft|rl`, or any PEFT adapter of this
    /// model) folded into dense weights (f32 unless --weights says bf16 or f16; q8_0 and q4_1
    /// quantise the folded weights again for the fast CPU kernels).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Compute device: `auto` (CUDA when built with `--features cuda` and a GPU is present),
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print JSON: {text, token_ids, logprobs, prompt_tokens, new_tokens, seconds, tokens_per_second}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let path = home::resolve_model(a.model.as_deref())?;
    let prompt = if a.prompt == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?
    } else {
        a.prompt.clone()
    };
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let device = pick_device(&a.device)?;
    let t_load = Instant::now();
    let lm = load_model(&path, &device, a.weights.as_deref(), a.adapter.as_deref())?;
    tracing::info!(seconds = t_load.elapsed().as_secs_f64(), "model loaded");
    let text = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &prompt));
        lm.chat
            .render(&msgs, true)
            .context("rendering the chat template")?
    } else {
        prompt
    };
    let ids = lm
        .tokenizer
        .encode(&text, false)
        .context("tokenizing the prompt")?;
    let params = SamplingParams {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop: a.stop.clone(),
        stop_token_ids: lm.tokenizer.eos_token_ids(),
    };
    let prompts = vec![ids; a.n];
    let t0 = Instant::now();
    let (gens, stats) = generate(&lm.model, &lm.tokenizer, &prompts, &params)?;
    let secs = t0.elapsed().as_secs_f64();
    for g in &gens {
        if a.json {
            let new = g.token_ids.len();
            let v = serde_json::json!({
                "text": g.text,
                "token_ids": g.token_ids,
                "logprobs": g.logprobs,
                "finish_reason": g.finish_reason,
                "prompt_tokens": g.prompt_tokens,
                "new_tokens": new,
                "seconds": secs,
                "tokens_per_second": stats.decode_tokens as f64 / secs.max(1e-9),
                "prefill_seconds": stats.prefill_seconds,
                "decode_seconds": stats.decode_seconds,
            });
            println!("{}", serde_json::to_string(&v)?);
        } else {
            if a.n > 1 {
                println!("--- sample ---");
            }
            println!("{}", g.text);
        }
    }
    if !a.json {
        eprintln!(
            "[{} prompt + {} new tokens in {:.2}s: prefill {:.0} tok/s, decode {:.1} tok/s]",
            gens.first().map_or(0, |g| g.prompt_tokens),
            stats.decode_tokens,
            secs,
            stats.prefill_tokens as f64 / stats.prefill_seconds.max(1e-9),
            stats.decode_tokens as f64 / stats.decode_seconds.max(1e-9),
        );
    }
    Ok(())
}

/// The compute device: CUDA 0 when built with `--features cuda` and a GPU is present, else CPU.
pub fn candle_core_device() -> Result<srcode_lm::Device> {
    pick_device("auto")
}

/// The device a `--device` flag names: `auto` (CUDA 0 when built with `--features cuda` and a
/// GPU is usable, else the CPU), `cpu`, `cuda` or `cuda:N`.
pub fn pick_device(name: &str) -> Result<srcode_lm::Device> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(srcode_lm::Device::Cpu);
    }
    let ordinal = match name.as_str() {
        "auto" | "cuda" => 0,
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device `{name}`: expected auto, cpu, cuda or cuda:N"),
        },
    };
    #[cfg(feature = "cuda")]
    {
        match srcode_lm::Device::new_cuda(ordinal) {
            Ok(d) => return Ok(d),
            Err(e) if name != "auto" => {
                bail!("--device {name}: no usable GPU ({e})")
            }
            Err(_) => tracing::warn!("built with CUDA but no GPU is usable; running on the CPU"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    if name != "auto" {
        bail!(
            "--device {name} (GPU {ordinal}): this srcode was built without CUDA; \
             rebuild with `cargo build --release --features cuda` (scripts/build-cuda.sh)"
        );
    }
    Ok(srcode_lm::Device::Cpu)
}

/// The float type a `--dtype` flag names: `f32` or `bf16`.
pub fn parse_float_dtype(name: &str) -> Result<srcode_lm::DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(srcode_lm::DType::F32),
        "bf16" => Ok(srcode_lm::DType::BF16),
        other => bail!("--dtype `{other}`: expected f32 or bf16"),
    }
}

/// Loads a local model for inference, with `adapter` (a PEFT LoRA directory) merged into dense
/// weights when given; `weights` as `--weights` takes it.
pub fn load_model(
    path: &std::path::Path,
    device: &srcode_lm::Device,
    weights: Option<&str>,
    adapter: Option<&std::path::Path>,
) -> Result<srcode_lm::loader::LoadedModel> {
    let Some(adapter) = adapter else {
        return srcode_lm::loader::load(path, device, parse_weights(weights)?)
            .with_context(|| format!("loading model {}", path.display()));
    };
    use srcode_lm::qmatmul::PackedKind;
    // The adapter is folded into dense weights, which are then quantised again for q8_0/q4_1.
    let (dtype, pack) = match parse_weights(weights)? {
        None => (srcode_lm::DType::F32, None),
        Some(srcode_lm::WeightMode::Dense { dtype, .. }) => (dtype, None),
        Some(srcode_lm::WeightMode::Quantized(q)) => match PackedKind::from_ggml(q) {
            Some(kind) => (srcode_lm::DType::F32, Some(kind)),
            None => anyhow::bail!(
                "--weights {}: an adapter is folded into f32, bf16, f16, q8_0 or q4_1 weights",
                weights.unwrap_or_default()
            ),
        },
    };
    let context = || {
        format!(
            "loading model {} with the adapter {}",
            path.display(),
            adapter.display()
        )
    };
    let mut lm =
        srcode_lm::loader::load_adapted(path, device, adapter, dtype).with_context(context)?;
    if let Some(kind) = pack {
        lm.model = lm.model.packed_copy(kind).with_context(context)?;
    }
    Ok(lm)
}

/// Parses a `--weights` value.
pub fn parse_weights(s: Option<&str>) -> Result<Option<srcode_lm::WeightMode>> {
    use srcode_lm::quantized::GgmlDType;
    use srcode_lm::{DType, WeightMode};
    let dense = |dtype| WeightMode::Dense {
        dtype,
        trainable: false,
    };
    Ok(Some(match s {
        None => return Ok(None),
        Some("q8_0") => WeightMode::Quantized(GgmlDType::Q8_0),
        Some("q4_0") => WeightMode::Quantized(GgmlDType::Q4_0),
        Some("q4_1") => WeightMode::Quantized(GgmlDType::Q4_1),
        Some("f32") => dense(DType::F32),
        Some("bf16") => dense(DType::BF16),
        Some("f16") => dense(DType::F16),
        Some(other) => {
            anyhow::bail!("--weights {other}: expected one of q4_1, q8_0, q4_0, f32, bf16, f16")
        }
    }))
}
