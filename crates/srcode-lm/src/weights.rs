//! Weight loading. Every tensor is addressed by its Hugging Face name
//! (`model.layers.3.self_attn.q_proj.weight`); GGUF files are read through a name map and their
//! Q/K projections are un-permuted, so the model code knows one layout only (half-rotation RoPE,
//! as in `transformers`).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{LmError, Result};
use crate::qmatmul::{PackedKind, PackedMatrix};

/// Where a model's weights come from.
pub enum WeightSource {
    /// A GGUF file, its metadata and an open reader.
    Gguf {
        path: PathBuf,
        content: gguf_file::Content,
        reader: std::cell::RefCell<BufReader<File>>,
    },
    /// Safetensors files (one or several shards) of a Hugging Face directory or an srcode
    /// checkpoint.
    Safetensors {
        dir: PathBuf,
        tensors: HashMap<String, Tensor>,
    },
}

impl WeightSource {
    /// Opens a GGUF file and reads its metadata (tensors are read lazily).
    pub fn open_gguf(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| LmError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| LmError::BadModelFile {
            path: path.into(),
            reason: format!("not a readable GGUF file ({e})"),
        })?;
        Ok(WeightSource::Gguf {
            path: path.into(),
            content,
            reader: std::cell::RefCell::new(reader),
        })
    }

    /// Loads all `*.safetensors` files of a directory onto the CPU.
    pub fn open_safetensors_dir(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| LmError::io(dir, e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .filter(|p| {
                // PEFT adapters live beside full checkpoints; they are loaded separately.
                p.file_name()
                    .is_some_and(|n| n != "adapter_model.safetensors")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(LmError::BadModelFile {
                path: dir.into(),
                reason: "directory holds no *.safetensors file".into(),
            });
        }
        let mut tensors = HashMap::new();
        for f in &files {
            let t = candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| {
                LmError::BadModelFile {
                    path: f.clone(),
                    reason: format!("not a readable safetensors file ({e})"),
                }
            })?;
            tensors.extend(t);
        }
        Ok(WeightSource::Safetensors {
            dir: dir.into(),
            tensors,
        })
    }

    fn describe(&self) -> &Path {
        match self {
            WeightSource::Gguf { path, .. } => path,
            WeightSource::Safetensors { dir, .. } => dir,
        }
    }

    /// Whether a tensor with this Hugging Face name exists.
    pub fn contains(&self, hf_name: &str) -> bool {
        match self {
            WeightSource::Gguf { content, .. } => {
                gguf_name(hf_name).is_some_and(|n| content.tensor_infos.contains_key(&n))
            }
            WeightSource::Safetensors { tensors, .. } => tensors.contains_key(hf_name),
        }
    }

    /// Reads one tensor as f32 on `device`, in Hugging Face layout.
    pub fn get_f32(&self, hf_name: &str, cfg: &LlamaConfig, device: &Device) -> Result<Tensor> {
        match self {
            WeightSource::Gguf { .. } => {
                let q = self.get_qtensor(hf_name, cfg)?;
                Ok(q.dequantize(device)?)
            }
            WeightSource::Safetensors { tensors, .. } => {
                let t = tensors.get(hf_name).ok_or_else(|| self.missing(hf_name))?;
                Ok(t.to_dtype(DType::F32)?.to_device(device)?)
            }
        }
    }

    /// Reads one tensor from a GGUF file as stored (quantised), un-permuting Llama's Q/K rows.
    /// Un-permuting needs the values, so those two are dequantised, fixed and re-quantised to the
    /// stored type.
    fn get_qtensor(&self, hf_name: &str, cfg: &LlamaConfig) -> Result<QTensor> {
        let WeightSource::Gguf {
            path,
            content,
            reader,
        } = self
        else {
            return Err(LmError::InvalidArgument(
                "quantised tensors exist only in GGUF files".into(),
            ));
        };
        let name = gguf_name(hf_name).ok_or_else(|| self.missing(hf_name))?;
        if !content.tensor_infos.contains_key(&name) {
            return Err(self.missing(hf_name));
        }
        let mut r = reader.borrow_mut();
        let q =
            content
                .tensor(&mut *r, &name, &Device::Cpu)
                .map_err(|e| LmError::BadModelFile {
                    path: path.clone(),
                    reason: format!("tensor `{name}`: {e}"),
                })?;
        match qk_heads(hf_name, cfg) {
            // llama.cpp's converter permutes Q/K rows of Llama models for its interleaved RoPE;
            // Qwen2 files are written unpermuted.
            Some(h) if cfg.model_type == "llama" => {
                let w = q.dequantize(&Device::Cpu)?;
                let w = unpermute_rows(&w, h)?;
                let dtype = q.dtype();
                if dtype == GgmlDType::F32 || w.rank() == 1 {
                    Ok(QTensor::quantize(&w, GgmlDType::F32)?)
                } else {
                    Ok(QTensor::quantize(&w, dtype)?)
                }
            }
            _ => Ok(q),
        }
    }

    /// Reads a weight matrix for inference, quantised to `dtype` (re-quantising GGUF data that is
    /// stored in another type; candle has fast CPU kernels for Q4_0/Q8_0/K-quants but not Q4_1).
    pub fn get_quantized(
        &self,
        hf_name: &str,
        cfg: &LlamaConfig,
        dtype: GgmlDType,
        device: &Device,
    ) -> Result<QTensor> {
        let t = match self {
            WeightSource::Gguf { .. } => {
                let q = self.get_qtensor(hf_name, cfg)?;
                if q.dtype() == dtype && device.is_cpu() {
                    return Ok(q);
                }
                q.dequantize(&Device::Cpu)?
            }
            WeightSource::Safetensors { .. } => self.get_f32(hf_name, cfg, &Device::Cpu)?,
        };
        Ok(QTensor::quantize_onto(&t, dtype, device)?)
    }

    /// Reads a weight matrix for srcode's packed CPU kernels. GGUF Q4_1 data is taken as stored
    /// (Llama's Q/K rows are reordered block-wise, which is exact); anything else is quantised
    /// from f32.
    pub fn get_packed(
        &self,
        hf_name: &str,
        cfg: &LlamaConfig,
        kind: PackedKind,
    ) -> Result<PackedMatrix> {
        if let (
            WeightSource::Gguf {
                content,
                reader,
                path,
            },
            PackedKind::Q4_1,
        ) = (self, kind)
        {
            let name = gguf_name(hf_name).ok_or_else(|| self.missing(hf_name))?;
            let info = content
                .tensor_infos
                .get(&name)
                .ok_or_else(|| self.missing(hf_name))?;
            if info.ggml_dtype == GgmlDType::Q4_1 {
                let q = content
                    .tensor(&mut *reader.borrow_mut(), &name, &Device::Cpu)
                    .map_err(|e| LmError::BadModelFile {
                        path: path.clone(),
                        reason: format!("tensor `{name}`: {e}"),
                    })?;
                let (rows, cols) = q.shape().dims2()?;
                let m = PackedMatrix::from_q4_1_bytes(rows, cols, q.data()?.into_owned())?;
                return match qk_heads(hf_name, cfg) {
                    Some(h) if cfg.model_type == "llama" => {
                        m.permute_rows(&unpermute_order(rows, h))
                    }
                    _ => Ok(m),
                };
            }
        }
        let w = self.get_f32(hf_name, cfg, &Device::Cpu)?;
        PackedMatrix::quantize(&w, kind)
    }

    fn missing(&self, hf_name: &str) -> LmError {
        LmError::BadModelFile {
            path: self.describe().into(),
            reason: format!(
                "tensor `{hf_name}`{} is missing",
                gguf_name(hf_name)
                    .map(|n| format!(" (GGUF `{n}`)"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Number of heads whose rows llama.cpp permutes, for Q and K projections.
fn qk_heads(hf_name: &str, cfg: &LlamaConfig) -> Option<usize> {
    if hf_name.ends_with("q_proj.weight") || hf_name.ends_with("q_proj.bias") {
        Some(cfg.num_attention_heads)
    } else if hf_name.ends_with("k_proj.weight") || hf_name.ends_with("k_proj.bias") {
        Some(cfg.kv_heads())
    } else {
        None
    }
}

/// For each Hugging Face row, the GGUF row that holds it (see [`unpermute_rows`]).
pub fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads;
    let half = hd / 2;
    (0..rows)
        .map(|r| {
            let (h, rest) = (r / hd, r % hd);
            let (j, i) = (rest / half, rest % half);
            h * hd + i * 2 + j
        })
        .collect()
}

/// Inverse of llama.cpp's `permute` for Q/K: rows are stored as `[heads, head_dim/2, 2]` and
/// Hugging Face expects `[heads, 2, head_dim/2]`.
pub fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    let t = w
        .reshape((heads, hd / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(t)
}

/// Maps a Hugging Face tensor name onto its llama.cpp GGUF name.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let short = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{idx}.{short}"))
}
