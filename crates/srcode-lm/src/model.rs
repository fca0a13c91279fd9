//! A Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU), written once for two
//! uses: a differentiable full-sequence forward that returns logits at every position (training,
//! log-probs for PPO ratios and KL), and incremental decoding with a KV cache (generation).
//!
//! Weights are either dense (f32/bf16, optionally `Var`s for training, optionally with LoRA
//! adapters) or quantised (`QMatMul`, inference only). The layout is Hugging Face's; GGUF files
//! are mapped onto it by [`crate::weights`].
//!
//! Gradient hygiene: candle's fast `rms_norm`, `softmax_last_dim` and `rope` kernels have no
//! backward pass and silently cut the graph, so a forward with `grad = true` uses the
//! differentiable formulations (see [`crate::ops`]); a test asserts that every trainable tensor
//! receives a gradient.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor, Var, D};
use rand::{Rng, SeedableRng};

use crate::config::LlamaConfig;
use crate::error::{LmError, Result};
use crate::ops;
use crate::qmatmul::{PackedKind, PackedMatrix};
use crate::weights::WeightSource;

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightMode {
    /// Quantised matrices for fast CPU inference (norms and embeddings stay f32). Not trainable.
    Quantized(GgmlDType),
    /// Dense matrices of this dtype; `trainable` makes every weight a `Var` (full fine-tuning).
    Dense { dtype: DType, trainable: bool },
}

impl WeightMode {
    /// The default for inference: Q8_0 on CPU (candle has AVX2 kernels for it), bf16 on CUDA.
    pub fn inference_default(device: &Device) -> Self {
        if device.is_cpu() {
            WeightMode::Quantized(GgmlDType::Q8_0)
        } else {
            WeightMode::Dense {
                dtype: DType::BF16,
                trainable: false,
            }
        }
    }
}

/// Low-rank adapter settings (PEFT's LoRA).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Projection names to adapt, e.g. `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
    /// `up_proj`, `down_proj`.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }
}

/// A weight matrix in one of its two forms.
#[derive(Clone)]
pub enum Weight {
    /// `[out, in]`, possibly a `Var`'s tensor.
    Dense(Tensor),
    /// Quantised with candle's kernels, inference only (CUDA, and formats srcode has no kernel
    /// for).
    Quant(Arc<QMatMul>),
    /// Quantised with srcode's CPU kernels (Q4_1, Q8_0), inference only.
    Packed(Arc<PackedMatrix>),
}

/// A LoRA pair: `y += scale · (x Aᵀ) Bᵀ`, A `[r, in]`, B `[out, r]`.
#[derive(Clone)]
pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
}

impl Lora {
    /// The adapter's update of the base weight, `scale · B · A` (`[out, in]`).
    fn delta(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }
}

/// A linear projection with optional bias and LoRA adapter. `name` is the Hugging Face prefix
/// (`model.layers.0.self_attn.q_proj`).
#[derive(Clone)]
pub struct Linear {
    pub name: String,
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    /// Applies the projection to `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match &self.weight {
            Weight::Dense(w) => matmul_wt(x, w)?,
            Weight::Quant(q) => q.forward(&x.contiguous()?)?,
            Weight::Packed(p) => p.forward(x)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let h = matmul_wt(x, l.a.as_tensor())?;
            let d = matmul_wt(&h, l.b.as_tensor())?;
            y = (y + (d * l.scale)?)?;
        }
        Ok(y)
    }

    fn out_in(&self) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Dense(w) => Ok(w.dims2()?),
            Weight::Quant(q) => match q.as_ref() {
                QMatMul::QTensor(t) => Ok(t.shape().dims2()?),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.dims2()?),
            },
            Weight::Packed(p) => Ok((p.rows, p.cols)),
        }
    }
}

/// `x @ wᵀ` for `x` `[..., in]` and `w` `[out, in]`.
fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, inner))?;
    // A weight that takes no gradient while the input does (LoRA's base, the RL reference's
    // policy-side inputs): skip the weight-gradient product in the backward pass.
    let y = if x2.track_op() && !w.track_op() && w.is_contiguous() {
        crate::ops::matmul_frozen_wt(&x2, w)?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    Ok(y.reshape(out)?)
}

struct Block {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Positions the KV cache grows by when it runs out of room.
const KV_CHUNK: usize = 128;

/// Key/value cache for incremental decoding of a batch whose rows all have the same length
/// (prompts are left-padded, see [`Batch`]).
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `layers` blocks.
    pub fn new(layers: usize) -> Self {
        KvCache {
            layers: vec![None; layers],
            len: 0,
        }
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Keeps only the given batch rows (in this order), e.g. to drop finished sequences.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(Some((k0, _))) = self.layers.first() else {
            return Ok(());
        };
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            k0.device(),
        )?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }
}

/// Per-call options of the forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOpts<'a> {
    /// Number of left-padding positions per row (empty = no padding). Padded keys are masked
    /// and real tokens get RoPE positions starting at 0.
    pub pad_left: &'a [usize],
    /// Build a differentiable graph (training). Off, the fast inference kernels are used.
    pub grad: bool,
}

/// A Llama-family decoder.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    dtype: DType,
    mode: WeightMode,
    /// Trainable tensors by Hugging Face name (full fine-tuning) or PEFT LoRA name.
    params: Vec<(String, Var)>,
    lora: Option<LoraConfig>,
}

const PROJS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl Llama {
    /// Builds the model from a weight source.
    pub fn load(
        src: &WeightSource,
        cfg: &LlamaConfig,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        let mut cfg = cfg.clone();
        cfg.validate()?;
        if !src.contains("lm_head.weight") {
            cfg.tie_word_embeddings = true;
        }
        let mut params: Vec<(String, Var)> = Vec::new();
        let (float_dtype, trainable) = match mode {
            WeightMode::Quantized(_) => (DType::F32, false),
            WeightMode::Dense { dtype, trainable } => (dtype, trainable),
        };
        // Vectors (norms, biases) and the embedding table are always dense.
        let dense = |name: &str, params: &mut Vec<(String, Var)>| -> Result<Tensor> {
            let t = src.get_f32(name, &cfg, device)?.to_dtype(float_dtype)?;
            if trainable {
                let v = Var::from_tensor(&t)?;
                params.push((name.to_string(), v.clone()));
                Ok(v.as_tensor().clone())
            } else {
                Ok(t)
            }
        };
        let embed = dense("model.embed_tokens.weight", &mut params)?;
        let (v, h) = embed.dims2()?;
        if v < cfg.vocab_size || h != cfg.hidden_size {
            return Err(LmError::BadModelFile {
                path: "model.embed_tokens.weight".into(),
                reason: format!(
                    "embedding is [{v}, {h}], config says vocab {} × hidden {}",
                    cfg.vocab_size, cfg.hidden_size
                ),
            });
        }
        let linear = |name: &str, params: &mut Vec<(String, Var)>| -> Result<Linear> {
            let weight = match mode {
                WeightMode::Quantized(q) => {
                    quantized_weight(src, &format!("{name}.weight"), &cfg, q, device)?
                }
                WeightMode::Dense { .. } => {
                    Weight::Dense(dense(&format!("{name}.weight"), params)?)
                }
            };
            let bias_name = format!("{name}.bias");
            let bias = if src.contains(&bias_name) {
                Some(dense(&bias_name, params)?)
            } else {
                None
            };
            Ok(Linear {
                name: name.to_string(),
                weight,
                bias,
                lora: None,
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let input_norm = dense(&format!("{p}.input_layernorm.weight"), &mut params)?;
            let mut ls = Vec::with_capacity(PROJS.len());
            for proj in PROJS {
                ls.push(linear(&format!("{p}.{proj}"), &mut params)?);
            }
            let post_norm = dense(&format!("{p}.post_attention_layernorm.weight"), &mut params)?;
            let mut it = ls.into_iter();
            let mut next = || {
                it.next()
                    .ok_or_else(|| LmError::InvalidArgument("projection list".into()))
            };
            layers.push(Block {
                input_norm,
                q: next()?,
                k: next()?,
                v: next()?,
                o: next()?,
                post_norm,
                gate: next()?,
                up: next()?,
                down: next()?,
            });
        }
        let norm = dense("model.norm.weight", &mut params)?;
        let lm_head = if cfg.tie_word_embeddings {
            let weight = match mode {
                WeightMode::Quantized(q) => {
                    quantized_weight(src, "model.embed_tokens.weight", &cfg, q, device)?
                }
                WeightMode::Dense { .. } => Weight::Dense(embed.clone()),
            };
            Linear {
                name: "lm_head".into(),
                weight,
                bias: None,
                lora: None,
            }
        } else {
            linear("lm_head", &mut params)?
        };
        let (cos, sin) = rope_tables(&cfg, device)?;
        let (cos, sin) = (cos.to_dtype(float_dtype)?, sin.to_dtype(float_dtype)?);
        let model = Llama {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
            dtype: float_dtype,
            mode,
            params,
            lora: None,
        };
        model.check_shapes()?;
        Ok(model)
    }

    /// A model with random weights (fixed seed), for tests and benchmarks.
    pub fn random(cfg: &LlamaConfig, seed: u64, trainable: bool, device: &Device) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = std::collections::HashMap::new();
        let mut put = |name: String, shape: &[usize], std: f32, ones: bool| -> Result<()> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if ones {
                (0..n)
                    .map(|_| 1.0 + rng.random_range(-0.1f32..0.1))
                    .collect()
            } else {
                (0..n)
                    .map(|_| rng.random_range(-1.0f32..1.0) * std)
                    .collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
            Ok(())
        };
        let h = cfg.hidden_size;
        let hd = cfg.head_size();
        let q = cfg.num_attention_heads * hd;
        let kv = cfg.kv_heads() * hd;
        let s = 1.0 / (h as f32).sqrt();
        put(
            "model.embed_tokens.weight".into(),
            &[cfg.vocab_size, h],
            0.5,
            false,
        )?;
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            put(format!("{p}.input_layernorm.weight"), &[h], 0.0, true)?;
            put(
                format!("{p}.post_attention_layernorm.weight"),
                &[h],
                0.0,
                true,
            )?;
            put(format!("{p}.self_attn.q_proj.weight"), &[q, h], s, false)?;
            put(format!("{p}.self_attn.k_proj.weight"), &[kv, h], s, false)?;
            put(format!("{p}.self_attn.v_proj.weight"), &[kv, h], s, false)?;
            if cfg.qkv_bias() {
                put(format!("{p}.self_attn.q_proj.bias"), &[q], 0.1, false)?;
                put(format!("{p}.self_attn.k_proj.bias"), &[kv], 0.1, false)?;
                put(format!("{p}.self_attn.v_proj.bias"), &[kv], 0.1, false)?;
            }
            put(
                format!("{p}.self_attn.o_proj.weight"),
                &[h, q],
                1.0 / (q as f32).sqrt(),
                false,
            )?;
            put(
                format!("{p}.mlp.gate_proj.weight"),
                &[cfg.intermediate_size, h],
                s,
                false,
            )?;
            put(
                format!("{p}.mlp.up_proj.weight"),
                &[cfg.intermediate_size, h],
                s,
                false,
            )?;
            let sd = 1.0 / (cfg.intermediate_size as f32).sqrt();
            put(
                format!("{p}.mlp.down_proj.weight"),
                &[h, cfg.intermediate_size],
                sd,
                false,
            )?;
        }
        put("model.norm.weight".into(), &[h], 0.0, true)?;
        if !cfg.tie_word_embeddings {
            put("lm_head.weight".into(), &[cfg.vocab_size, h], s, false)?;
        }
        let src = WeightSource::Safetensors {
            dir: "<random>".into(),
            tensors,
        };
        let mode = WeightMode::Dense {
            dtype: DType::F32,
            trainable,
        };
        Llama::load(&src, cfg, mode, device)
    }

    fn check_shapes(&self) -> Result<()> {
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        let hd = cfg.head_size();
        for (i, b) in self.layers.iter().enumerate() {
            let want = [
                (&b.q, cfg.num_attention_heads * hd, h),
                (&b.k, cfg.kv_heads() * hd, h),
                (&b.v, cfg.kv_heads() * hd, h),
                (&b.o, h, cfg.num_attention_heads * hd),
                (&b.gate, cfg.intermediate_size, h),
                (&b.up, cfg.intermediate_size, h),
                (&b.down, h, cfg.intermediate_size),
            ];
            for (l, o, inn) in want {
                let got = l.out_in()?;
                if got != (o, inn) {
                    return Err(LmError::BadModelFile {
                        path: l.name.clone().into(),
                        reason: format!(
                            "layer {i}: weight is {got:?}, config implies [{o}, {inn}]"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Float dtype of activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// How the weights are held.
    pub fn weight_mode(&self) -> WeightMode {
        self.mode
    }
    /// The LoRA configuration, when adapters are attached.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }
    /// Trainable tensors with their names (Hugging Face names for full fine-tuning, PEFT names
    /// for LoRA adapters).
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.params
    }
    /// A new empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Freezes the base weights and attaches fresh LoRA adapters (A random, B zero, as PEFT does,
    /// so the adapted model starts equal to the base model).
    pub fn attach_lora(&mut self, lcfg: &LoraConfig, seed: u64) -> Result<()> {
        if lcfg.rank == 0 {
            return Err(LmError::InvalidArgument("LoRA rank must be > 0".into()));
        }
        if let WeightMode::Quantized(_) = self.mode {
            return Err(LmError::InvalidArgument(
                "LoRA needs dense weights; load the model with WeightMode::Dense".into(),
            ));
        }
        for t in &lcfg.targets {
            if !PROJS.iter().any(|p| p.ends_with(t.as_str())) {
                return Err(LmError::InvalidArgument(format!(
                    "LoRA target `{t}` is not a projection (expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                )));
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let scale = lcfg.alpha / lcfg.rank as f64;
        // Detach base weights from any previous Var so they get no optimiser updates.
        self.params.clear();
        let dtype = self.dtype;
        let device = self.device.clone();
        let mut params = Vec::new();
        for b in self.layers.iter_mut() {
            for l in [
                &mut b.q,
                &mut b.k,
                &mut b.v,
                &mut b.o,
                &mut b.gate,
                &mut b.up,
                &mut b.down,
            ] {
                if let Weight::Dense(w) = &l.weight {
                    l.weight = Weight::Dense(w.detach());
                }
                l.bias = l.bias.as_ref().map(|b| b.detach());
                let short = l.name.rsplit('.').next().unwrap_or("");
                if !lcfg.targets.iter().any(|t| t == short) {
                    continue;
                }
                let (out, inn) = l.out_in()?;
                let bound = 1.0 / (inn as f32).sqrt();
                let a: Vec<f32> = (0..lcfg.rank * inn)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_tensor(
                    &Tensor::from_vec(a, (lcfg.rank, inn), &device)?.to_dtype(dtype)?,
                )?;
                let bz = Var::zeros((out, lcfg.rank), dtype, &device)?;
                params.push((
                    format!("base_model.model.{}.lora_A.weight", l.name),
                    a.clone(),
                ));
                params.push((
                    format!("base_model.model.{}.lora_B.weight", l.name),
                    bz.clone(),
                ));
                l.lora = Some(Lora { a, b: bz, scale });
            }
            b.input_norm = b.input_norm.detach();
            b.post_norm = b.post_norm.detach();
        }
        self.embed = self.embed.detach();
        self.norm = self.norm.detach();
        if let Weight::Dense(w) = &self.lm_head.weight {
            self.lm_head.weight = Weight::Dense(w.detach());
        }
        self.params = params;
        self.lora = Some(lcfg.clone());
        Ok(())
    }

    /// Folds every attached LoRA adapter into its base weight (`W ← W + scale·B·A`) and detaches
    /// the adapters, so the adapted model decodes at the base model's cost. The model then has
    /// no trainable tensors and no LoRA configuration.
    pub fn merge_lora(&mut self) -> Result<()> {
        if self.lora.is_none() {
            return Err(LmError::InvalidArgument(
                "no LoRA adapters are attached".into(),
            ));
        }
        for b in self.layers.iter_mut() {
            for l in [
                &mut b.q,
                &mut b.k,
                &mut b.v,
                &mut b.o,
                &mut b.gate,
                &mut b.up,
                &mut b.down,
            ] {
                let Some(lora) = l.lora.take() else {
                    continue;
                };
                let Weight::Dense(w) = &l.weight else {
                    return Err(LmError::InvalidArgument(format!(
                        "{}: LoRA can only be merged into dense weights",
                        l.name
                    )));
                };
                let delta = lora.delta()?;
                l.weight = Weight::Dense((w + delta.to_dtype(w.dtype())?)?.detach());
            }
        }
        self.params.clear();
        self.lora = None;
        Ok(())
    }

    /// A snapshot for fast CPU decoding: every projection, with its LoRA adapter folded in, is
    /// quantised to `kind` for srcode's own kernels; norms, biases and the embedding table stay
    /// f32. The copy shares no trainable storage with `self`, so later optimiser steps do not
    /// reach it. RL draws its rollouts from such a snapshot (decoding at the quantised speed) and
    /// scores their log-probs again with the dense policy. CPU only; every projection's input
    /// size must be a multiple of 32.
    pub fn packed_copy(&self, kind: PackedKind) -> Result<Llama> {
        if !self.device.is_cpu() {
            return Err(LmError::Unsupported(
                "a packed (quantised) copy runs on srcode's CPU kernels only".into(),
            ));
        }
        // Full fine-tuning updates the embedding `Var` in place: copy it out.
        let full_ft = self.lora.is_none() && !self.params.is_empty();
        let own = |t: &Tensor| -> Result<Tensor> {
            let t = t.detach().to_dtype(DType::F32)?;
            Ok(if full_ft { t.copy()? } else { t })
        };
        let pack = |l: &Linear| -> Result<Linear> {
            let weight = match (&l.weight, &l.lora) {
                (Weight::Dense(w), lora) => {
                    let mut w = w.detach().to_dtype(DType::F32)?;
                    if let Some(lo) = lora {
                        w = (w + lo.delta()?.to_dtype(DType::F32)?)?;
                    }
                    Weight::Packed(Arc::new(PackedMatrix::quantize(&w, kind)?))
                }
                (Weight::Packed(_) | Weight::Quant(_), None) => l.weight.clone(),
                (_, Some(_)) => {
                    return Err(LmError::InvalidArgument(format!(
                        "{}: a LoRA adapter on quantised weights cannot be folded in",
                        l.name
                    )))
                }
            };
            Ok(Linear {
                name: l.name.clone(),
                weight,
                bias: l.bias.as_ref().map(&own).transpose()?,
                lora: None,
            })
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for b in &self.layers {
            layers.push(Block {
                input_norm: own(&b.input_norm)?,
                q: pack(&b.q)?,
                k: pack(&b.k)?,
                v: pack(&b.v)?,
                o: pack(&b.o)?,
                post_norm: own(&b.post_norm)?,
                gate: pack(&b.gate)?,
                up: pack(&b.up)?,
                down: pack(&b.down)?,
            });
        }
        let model = Llama {
            cfg: self.cfg.clone(),
            embed: own(&self.embed)?,
            layers,
            norm: own(&self.norm)?,
            lm_head: pack(&self.lm_head)?,
            cos: self.cos.to_dtype(DType::F32)?,
            sin: self.sin.to_dtype(DType::F32)?,
            device: self.device.clone(),
            dtype: DType::F32,
            mode: WeightMode::Quantized(kind.ggml()),
            params: Vec::new(),
            lora: None,
        };
        model.check_shapes()?;
        Ok(model)
    }

    /// Runs the decoder on `ids` (`[batch, seq]`, u32) and returns the final hidden states
    /// (`[batch, seq, hidden]`, after the last norm). With a cache, `ids` continue the cached
    /// sequence and the cache is extended.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        opts: ForwardOpts<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if !opts.pad_left.is_empty() && opts.pad_left.len() != b {
            return Err(LmError::InvalidArgument(format!(
                "pad_left has {} entries for a batch of {b}",
                opts.pad_left.len()
            )));
        }
        if offset + t > self.cos.dim(0)? {
            return Err(LmError::InvalidArgument(format!(
                "sequence of {} positions exceeds the model's context of {}",
                offset + t,
                self.cos.dim(0)?
            )));
        }
        let padded = opts.pad_left.iter().any(|&p| p > 0);
        let (cos, sin) = if padded {
            let mut pos = Vec::with_capacity(b * t);
            for &p in opts.pad_left {
                for i in 0..t {
                    pos.push((offset + i).saturating_sub(p) as u32);
                }
            }
            let pos = Tensor::from_vec(pos, b * t, &self.device)?;
            let half = self.cos.dim(1)?;
            (
                self.cos.index_select(&pos, 0)?.reshape((b, t, half))?,
                self.sin.index_select(&pos, 0)?.reshape((b, t, half))?,
            )
        } else {
            (
                self.cos.narrow(0, offset, t)?,
                self.sin.narrow(0, offset, t)?,
            )
        };
        let mut x = self
            .embed
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, ()))?;
        let eps = self.cfg.rms_norm_eps;
        for (li, blk) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let hn = ops::rms_norm(&x, &blk.input_norm, eps, opts.grad)?;
            let slot = match cache.as_deref_mut() {
                Some(c) => Some(&mut c.layers[li]),
                None => None,
            };
            let att = self.attention(blk, &hn, &cos, &sin, slot, offset, &opts)?;
            x = (residual + att)?;
            let residual = x.clone();
            let hn = ops::rms_norm(&x, &blk.post_norm, eps, opts.grad)?;
            let g = blk.gate.forward(&hn)?;
            let u = blk.up.forward(&hn)?;
            let m = blk.down.forward(&ops::silu_mul(&g, &u, opts.grad)?)?;
            x = (residual + m)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        ops::rms_norm(&x, &self.norm, eps, opts.grad)
    }

    /// Applies the language-model head: hidden `[..., hidden]` → logits `[..., vocab]` (f32).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let l = self.lm_head.forward(hidden)?;
        let v = self.cfg.vocab_size;
        let l = if l.dim(D::Minus1)? > v {
            l.narrow(D::Minus1, 0, v)?
        } else {
            l
        };
        Ok(l.to_dtype(DType::F32)?)
    }

    /// Full forward: logits at every position, `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        opts: ForwardOpts<'_>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(ids, opts, cache)?;
        self.logits(&h)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        blk: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        offset: usize,
        opts: &ForwardOpts<'_>,
    ) -> Result<Tensor> {
        let grad = opts.grad;
        let (b, t, _) = x.dims3()?;
        let nh = self.cfg.num_attention_heads;
        let nkv = self.cfg.kv_heads();
        let hd = self.cfg.head_size();
        let q = blk
            .q
            .forward(x)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = blk
            .k
            .forward(x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = blk
            .v
            .forward(x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = ops::rope(&q, cos, sin, grad)?;
        let k = ops::rope(&k, cos, sin, grad)?;
        let (k, v) = match cache {
            Some(slot) => {
                // The cache holds `[b, nkv, capacity, hd]` buffers written in place; growing by
                // whole chunks keeps a decoded token from copying the cache (a `cat` per token
                // and layer moved the whole cache each step: 9% of a batch-8 decode profile).
                let need = offset + t;
                let short = slot.as_ref().map_or(Ok(true), |(pk, _)| {
                    pk.dim(2).map(|cap| cap < need || pk.dim(0).ok() != Some(b))
                })?;
                if short {
                    let cap = need.next_multiple_of(KV_CHUNK);
                    let fresh = |prev: Option<&Tensor>| -> Result<Tensor> {
                        let buf = Tensor::zeros((b, nkv, cap, hd), k.dtype(), k.device())?;
                        if let Some(p) = prev.filter(|_| offset > 0) {
                            buf.slice_set(&p.narrow(2, 0, offset)?.contiguous()?, 2, 0)?;
                        }
                        Ok(buf)
                    };
                    let prev = slot.take();
                    *slot = Some((
                        fresh(prev.as_ref().map(|p| &p.0))?,
                        fresh(prev.as_ref().map(|p| &p.1))?,
                    ));
                }
                let Some((kb, vb)) = slot.as_ref() else {
                    return Err(LmError::InvalidArgument("KV cache slot vanished".into()));
                };
                kb.slice_set(&k, 2, offset)?;
                vb.slice_set(&v, 2, offset)?;
                (kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?)
            }
            None => (k, v),
        };
        // One new position per row: the fused kernel, which skips each row's left padding
        // itself (batches of prompts of different lengths decode this way too).
        if t == 1
            && !grad
            && x.device().is_cpu()
            && q.dtype() == DType::F32
            && k.dtype() == DType::F32
        {
            let y = ops::decode_attention(&q, &k, &v, 1.0 / (hd as f32).sqrt(), opts.pad_left)?;
            return blk.o.forward(&y);
        }
        let rep = nh / nkv;
        // Grouped-query attention without copying K/V: fold the query heads that share a K/V head
        // into the row dimension.
        let q = (q * (1.0 / (hd as f64).sqrt()))?.reshape((b, nkv, rep * t, hd))?;
        let att = q.matmul(&k.t()?)?;
        // A single unpadded query sees every key; anything else is masked (causal, padding).
        let att = if t > 1 || opts.pad_left.iter().any(|&p| p > 0) {
            ops::causal_softmax(&att, t, offset, opts.pad_left, grad)?
        } else {
            ops::softmax_last_dim(&att, grad)?
        };
        let y = att.matmul(&v)?; // [b, nkv, rep*t, hd]
        let y = y
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        blk.o.forward(&y)
    }

    /// Named dense weights in Hugging Face layout (for checkpoints). Quantised models cannot be
    /// exported this way.
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        let dense = |l: &Linear, out: &mut Vec<(String, Tensor)>| -> Result<()> {
            match &l.weight {
                Weight::Dense(w) => out.push((format!("{}.weight", l.name), w.clone())),
                Weight::Quant(_) | Weight::Packed(_) => return Err(LmError::InvalidArgument(
                    "a quantised model has no dense weights to save; load it with dense weights"
                        .into(),
                )),
            }
            if let Some(b) = &l.bias {
                out.push((format!("{}.bias", l.name), b.clone()));
            }
            Ok(())
        };
        for (i, b) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), b.input_norm.clone()));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                b.post_norm.clone(),
            ));
            for l in [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down] {
                dense(l, &mut out)?;
            }
        }
        out.push(("model.norm.weight".into(), self.norm.clone()));
        if !self.cfg.tie_word_embeddings {
            dense(&self.lm_head, &mut out)?;
        }
        Ok(out)
    }

    /// The LoRA adapter tensors by PEFT name.
    pub fn lora_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for b in &self.layers {
            for l in [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down] {
                if let Some(lo) = &l.lora {
                    out.push((
                        format!("base_model.model.{}.lora_A.weight", l.name),
                        lo.a.as_tensor().clone(),
                    ));
                    out.push((
                        format!("base_model.model.{}.lora_B.weight", l.name),
                        lo.b.as_tensor().clone(),
                    ));
                }
            }
        }
        out
    }

    /// Overwrites LoRA adapter values from PEFT-named tensors (adapters must be attached).
    pub fn set_lora_weights(
        &self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        let mut n = 0;
        for (name, var) in &self.params {
            let t = tensors.get(name).ok_or_else(|| {
                LmError::InvalidArgument(format!("adapter file lacks tensor `{name}`"))
            })?;
            if t.dims() != var.dims() {
                return Err(LmError::InvalidArgument(format!(
                    "adapter tensor `{name}` is {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(self.dtype)?.to_device(&self.device)?)?;
            n += 1;
        }
        if n == 0 {
            return Err(LmError::InvalidArgument(
                "no LoRA adapters are attached".into(),
            ));
        }
        Ok(())
    }
}

/// A quantised weight matrix: srcode's own CPU kernels for Q4_1 and Q8_0, candle's otherwise.
fn quantized_weight(
    src: &WeightSource,
    name: &str,
    cfg: &LlamaConfig,
    q: GgmlDType,
    device: &Device,
) -> Result<Weight> {
    match PackedKind::from_ggml(q) {
        Some(kind) if device.is_cpu() => {
            Ok(Weight::Packed(Arc::new(src.get_packed(name, cfg, kind)?)))
        }
        _ => {
            let qt = src.get_quantized(name, cfg, q, device)?;
            Ok(Weight::Quant(Arc::new(QMatMul::from_qtensor(qt)?)))
        }
    }
}

/// RoPE tables `[positions, head_dim/2]` for half-rotation RoPE.
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_size();
    let n = cfg.max_position_embeddings.clamp(1, 131_072);
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32))
        .collect();
    let mut cos = Vec::with_capacity(n * hd / 2);
    let mut sin = Vec::with_capacity(n * hd / 2);
    for p in 0..n {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, hd / 2), device)?,
        Tensor::from_vec(sin, (n, hd / 2), device)?,
    ))
}
