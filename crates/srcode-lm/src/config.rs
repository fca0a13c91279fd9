//! Hyper-parameters of a Llama-family decoder, read from a Hugging Face `config.json` or from GGUF
//! metadata. One struct covers SmolLM2, Llama 2/3 and Qwen2/Qwen2.5(-Coder); the differences that
//! matter to the forward pass (q/k/v biases, tied embeddings, head size) are explicit fields.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};

use crate::error::{LmError, Result};

/// Architecture hyper-parameters. Field names follow Hugging Face's `config.json`, so a checkpoint
/// written by srcode loads in `transformers` and the reverse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `"llama"` or `"qwen2"`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2). Llama's own flag of the same name also covers the
    /// output projection; srcode supports biases on q/k/v only and rejects the rest at load time.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Key/value heads (grouped-query attention); equals the query heads when absent.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one attention head.
    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Whether this architecture has q/k/v biases.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    /// Checks the numbers fit together, so a bad config fails here with a message, not later in a
    /// matmul with a shape error.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(LmError::Unsupported(format!("model config: {reason}")));
        if !matches!(self.model_type.as_str(), "llama" | "qwen2" | "mistral") {
            return bad(format!(
                "model_type `{}` is not a Llama-family decoder (llama, qwen2, mistral)",
                self.model_type
            ));
        }
        if self.num_attention_heads == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad(
                "hidden_size, num_attention_heads and num_hidden_layers must be > 0".into(),
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_size().is_multiple_of(2) {
            return bad(format!(
                "head size {} is odd; RoPE needs an even size",
                self.head_size()
            ));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        let cfg: LlamaConfig = serde_json::from_str(&text).map_err(|source| LmError::Json {
            context: path.display().to_string(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads GGUF metadata (`general.architecture`, then `<arch>.*` keys).
    pub fn from_gguf(md: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let arch = md_str(md, "general.architecture")?;
        let model_type = match arch.as_str() {
            "llama" => "llama",
            "qwen2" => "qwen2",
            other => {
                return Err(LmError::Unsupported(format!(
                    "GGUF architecture `{other}` (supported: llama, qwen2)"
                )))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = md_u(md, &key("embedding_length"))?;
        let num_attention_heads = md_u(md, &key("attention.head_count"))?;
        let num_key_value_heads = md_u(md, &key("attention.head_count_kv")).ok();
        let vocab_size = match md_u(md, &key("vocab_size")) {
            Ok(v) => v,
            Err(_) => match md.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(a)) => a.len(),
                _ => {
                    return Err(LmError::Metadata {
                        key: key("vocab_size"),
                        reason: "absent, and no tokenizer.ggml.tokens to count".into(),
                    })
                }
            },
        };
        let head_dim = md_u(md, &key("attention.key_length")).ok();
        let cfg = LlamaConfig {
            model_type: model_type.into(),
            vocab_size,
            hidden_size,
            intermediate_size: md_u(md, &key("feed_forward_length"))?,
            num_hidden_layers: md_u(md, &key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: md_f(md, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: md_f(md, &key("rope.freq_base")).unwrap_or(10_000.0),
            max_position_embeddings: md_u(md, &key("context_length")).unwrap_or(2048),
            // Decided by the loader from the presence of `output.weight`.
            tie_word_embeddings: false,
            attention_bias: model_type == "qwen2",
            bos_token_id: md_u(md, "tokenizer.ggml.bos_token_id")
                .ok()
                .map(|v| v as u32),
            eos_token_id: md_u(md, "tokenizer.ggml.eos_token_id")
                .ok()
                .map(|v| serde_json::Value::from(v as u64)),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A small random-weight configuration for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        LlamaConfig {
            model_type: "llama".into(),
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Number of parameters the decoder has (embeddings counted once when tied).
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let hd = self.head_size();
        let q = self.num_attention_heads * hd;
        let kv = self.kv_heads() * hd;
        let bias = if self.qkv_bias() { q + 2 * kv } else { 0 };
        let attn = h * q + 2 * h * kv + q * h + bias;
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.num_hidden_layers * layer + h
    }
}

pub(crate) fn md_u(md: &HashMap<String, gguf_file::Value>, key: &str) -> Result<usize> {
    let v = md.get(key).ok_or_else(|| LmError::Metadata {
        key: key.into(),
        reason: "absent".into(),
    })?;
    let n = match v {
        gguf_file::Value::U8(x) => *x as u64,
        gguf_file::Value::U16(x) => *x as u64,
        gguf_file::Value::U32(x) => *x as u64,
        gguf_file::Value::U64(x) => *x,
        gguf_file::Value::I8(x) if *x >= 0 => *x as u64,
        gguf_file::Value::I16(x) if *x >= 0 => *x as u64,
        gguf_file::Value::I32(x) if *x >= 0 => *x as u64,
        gguf_file::Value::I64(x) if *x >= 0 => *x as u64,
        other => {
            return Err(LmError::Metadata {
                key: key.into(),
                reason: format!(
                    "expected a non-negative integer, found {:?}",
                    other.value_type()
                ),
            })
        }
    };
    Ok(n as usize)
}

pub(crate) fn md_f(md: &HashMap<String, gguf_file::Value>, key: &str) -> Result<f64> {
    match md.get(key) {
        Some(gguf_file::Value::F32(x)) => Ok(*x as f64),
        Some(gguf_file::Value::F64(x)) => Ok(*x),
        Some(other) => Err(LmError::Metadata {
            key: key.into(),
            reason: format!("expected a float, found {:?}", other.value_type()),
        }),
        None => Err(LmError::Metadata {
            key: key.into(),
            reason: "absent".into(),
        }),
    }
}

pub(crate) fn md_str(md: &HashMap<String, gguf_file::Value>, key: &str) -> Result<String> {
    match md.get(key) {
        Some(gguf_file::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(LmError::Metadata {
            key: key.into(),
            reason: format!("expected a string, found {:?}", other.value_type()),
        }),
        None => Err(LmError::Metadata {
            key: key.into(),
            reason: "absent".into(),
        }),
    }
}
