//! Opening a model by path: a GGUF file, or a Hugging Face directory (`config.json`,
//! `*.safetensors`, `tokenizer.json`, `tokenizer_config.json`), which is also the layout srcode's
//! own checkpoints use. The result bundles the model with its tokenizer and chat template.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::error::{LmError, Result};
use crate::model::{Llama, WeightMode};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;

/// Storage format of a model on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HuggingFace,
}

/// A model with everything needed to talk to it.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    pub path: PathBuf,
    pub format: ModelFormat,
}

/// Tokenizer, chat template and config of a model, without its weights (cheap; `model info`).
pub struct ModelMeta {
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    pub format: ModelFormat,
    /// Storage type of the weight matrices as found on disk (e.g. `Q4_1`, `F32`, `BF16`).
    pub stored_dtype: String,
    pub file_bytes: u64,
}

/// Decides the format of `path`.
pub fn detect_format(path: &Path) -> Result<ModelFormat> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelFormat::HuggingFace);
        }
        return Err(LmError::BadModelFile {
            path: path.into(),
            reason: "directory has no config.json (expected a Hugging Face model directory)".into(),
        });
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| LmError::io(path, e))?;
    use std::io::Read;
    if f.read_exact(&mut magic).is_ok() && &magic == b"GGUF" {
        return Ok(ModelFormat::Gguf);
    }
    Err(LmError::BadModelFile {
        path: path.into(),
        reason: "neither a GGUF file (magic `GGUF`) nor a Hugging Face directory".into(),
    })
}

fn read_meta(path: &Path) -> Result<(ModelMeta, WeightSource)> {
    let format = detect_format(path)?;
    match format {
        ModelFormat::Gguf => {
            let src = WeightSource::open_gguf(path)?;
            let WeightSource::Gguf { content, .. } = &src else {
                return Err(LmError::InvalidArgument("GGUF source expected".into()));
            };
            let config = LlamaConfig::from_gguf(&content.metadata)?;
            let tokenizer = Tokenizer::from_gguf(content)?;
            let chat = ChatTemplate::from_gguf(content, &tokenizer)?
                .unwrap_or_else(ChatTemplate::chatml_fallback);
            let stored_dtype = content
                .tensor_infos
                .get("blk.0.attn_q.weight")
                .map(|t| format!("{:?}", t.ggml_dtype))
                .unwrap_or_else(|| "unknown".into());
            let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let mut config = config;
            config.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
            Ok((
                ModelMeta {
                    config,
                    tokenizer,
                    chat,
                    format,
                    stored_dtype,
                    file_bytes,
                },
                src,
            ))
        }
        ModelFormat::HuggingFace => {
            let config = LlamaConfig::from_hf_json(&path.join("config.json"))?;
            let tok_path = path.join("tokenizer.json");
            let tokenizer = Tokenizer::from_file(&tok_path)?;
            let chat = ChatTemplate::from_tokenizer_config(path.join("tokenizer_config.json"))?
                .unwrap_or_else(ChatTemplate::chatml_fallback);
            let src = WeightSource::open_safetensors_dir(path)?;
            let stored_dtype = match &src {
                WeightSource::Safetensors { tensors, .. } => tensors
                    .get("model.layers.0.self_attn.q_proj.weight")
                    .map(|t| format!("{:?}", t.dtype()))
                    .unwrap_or_else(|| "unknown".into()),
                _ => "unknown".into(),
            };
            let file_bytes = std::fs::read_dir(path)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                        .sum()
                })
                .unwrap_or(0);
            Ok((
                ModelMeta {
                    config,
                    tokenizer,
                    chat,
                    format,
                    stored_dtype,
                    file_bytes,
                },
                src,
            ))
        }
    }
}

/// Reads tokenizer, chat template and configuration (weights are not loaded).
pub fn inspect(path: &Path) -> Result<ModelMeta> {
    Ok(read_meta(path)?.0)
}

/// Loads a model. `mode` defaults to [`WeightMode::inference_default`].
pub fn load(path: &Path, device: &Device, mode: Option<WeightMode>) -> Result<LoadedModel> {
    let (meta, src) = read_meta(path)?;
    // On the CPU a Q4_1 GGUF runs on the weights it ships (as llama.cpp does); everything else
    // is quantised to Q8_0.
    let mode = mode.unwrap_or_else(|| {
        if device.is_cpu() && meta.stored_dtype == "Q4_1" {
            WeightMode::Quantized(candle_core::quantized::GgmlDType::Q4_1)
        } else {
            WeightMode::inference_default(device)
        }
    });
    let model = Llama::load(&src, &meta.config, mode, device)?;
    Ok(LoadedModel {
        model,
        tokenizer: meta.tokenizer,
        chat: meta.chat,
        path: path.into(),
        format: meta.format,
    })
}

/// Loads a model with a PEFT LoRA adapter directory (`adapter_config.json`,
/// `adapter_model.safetensors`, as `srcode train sft|rl` write them) folded into dense weights
/// of `dtype`: the adapted model, at the base model's decoding cost.
pub fn load_adapted(
    path: &Path,
    device: &Device,
    adapter: &Path,
    dtype: candle_core::DType,
) -> Result<LoadedModel> {
    let lcfg = crate::train::read_adapter_config(adapter)?;
    let mut lm = load(
        path,
        device,
        Some(WeightMode::Dense {
            dtype,
            trainable: false,
        }),
    )?;
    lm.model.attach_lora(&lcfg, 0)?;
    crate::train::load_adapter(&lm.model, adapter)?;
    lm.model.merge_lora()?;
    Ok(lm)
}

/// Writes a self-contained Hugging Face directory: the checkpoint (see
/// [`crate::train::save_checkpoint`]), `tokenizer.json`, `tokenizer_config.json` (special-token
/// names and the chat template) and `generation_config.json` (end ids). `srcode generate --model
/// DIR` and `transformers` load it as it is. A model with LoRA adapters is written as a PEFT
/// adapter directory beside the same tokenizer files.
pub fn save_pretrained(lm: &LoadedModel, dir: &Path) -> Result<()> {
    let base = lm.path.display().to_string();
    crate::train::save_checkpoint(&lm.model, dir, Some(&base))?;
    let tok_path = dir.join("tokenizer.json");
    lm.tokenizer
        .inner()
        .save(&tok_path, false)
        .map_err(|e| LmError::Tokenizer(format!("writing {}: {e}", tok_path.display())))?;
    let cfg = serde_json::json!({
        "bos_token": lm.tokenizer.bos_token(),
        "eos_token": lm.tokenizer.eos_token(),
        "chat_template": lm.chat.source(),
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let gen = serde_json::json!({
        "bos_token_id": lm.tokenizer.bos_token_id(),
        "eos_token_id": lm.tokenizer.eos_token_ids(),
    });
    for (name, v) in [
        ("tokenizer_config.json", cfg),
        ("generation_config.json", gen),
    ] {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(&v).map_err(|source| LmError::Json {
            context: p.display().to_string(),
            source,
        })?;
        std::fs::write(&p, text).map_err(|e| LmError::io(&p, e))?;
    }
    Ok(())
}
