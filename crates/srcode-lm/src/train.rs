//! Learning: log-probabilities of given tokens (for SFT losses, PPO ratios and KL), a fused AdamW
//! with global-norm gradient clipping, and checkpoints (safetensors + `config.json`; LoRA adapters
//! in PEFT's layout).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::error::{LmError, Result};
use crate::model::{ForwardOpts, Llama};
use crate::ops;

/// Log-probability of each token `ids[:, j]` for `j` in `start..seq` given the tokens before it:
/// returns `[batch, seq - start]`. Rows are right-padded by the caller, who masks the padding.
/// With `grad`, the result is differentiable with respect to the model's trainable tensors.
/// Logits are computed only for the positions that are scored (`start - 1 .. seq - 1`), which is
/// most of the saving when prompts are long.
pub fn token_logprobs(model: &Llama, ids: &Tensor, start: usize, grad: bool) -> Result<Tensor> {
    Ok(token_logprobs_and_hidden(model, ids, start, grad)?.0)
}

/// [`token_logprobs`], with the last hidden states `[batch, seq - start, hidden]` of the
/// positions that predict the scored tokens (what a value head reads).
pub fn token_logprobs_and_hidden(
    model: &Llama,
    ids: &Tensor,
    start: usize,
    grad: bool,
) -> Result<(Tensor, Tensor)> {
    let (b, t) = ids.dims2()?;
    if start == 0 || start >= t {
        return Err(LmError::InvalidArgument(format!(
            "scored positions must start in 1..{t} (the first token has no context), got {start}"
        )));
    }
    let hidden = model.forward_hidden(
        ids,
        ForwardOpts {
            pad_left: &[],
            grad,
        },
        None,
    )?;
    let n = t - start;
    let h = hidden.narrow(1, start - 1, n)?;
    let logits = model.logits(&h)?.reshape((b * n, ()))?;
    let targets = ids.narrow(1, start, n)?.flatten_all()?.contiguous()?;
    let lp = ops::token_logprobs(&logits.contiguous()?, &targets)?;
    Ok((lp.reshape((b, n))?, h))
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// What one optimiser step saw.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
}

struct Slot {
    name: String,
    var: Var,
    m: Mutex<Vec<f32>>,
    v: Mutex<Vec<f32>>,
    /// The moments on the parameter's device when it is not the CPU (the host vectors are then
    /// stale): a GPU update never copies optimiser state across the bus.
    dev: Mutex<Option<(Tensor, Tensor)>>,
}

/// AdamW over a model's trainable tensors. On the CPU the update is one fused in-place pass per
/// tensor (candle's own AdamW builds a dozen temporaries per tensor and costs more than a forward
/// and backward of a small model); elsewhere it falls back to tensor operations.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// An optimiser for the given named tensors.
    pub fn new(params: &[(String, Var)], cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Slot {
                    name: name.clone(),
                    var: var.clone(),
                    m: Mutex::new(vec![0.0; n]),
                    v: Mutex::new(vec![0.0; n]),
                    dev: Mutex::new(None),
                }
            })
            .collect();
        Ok(AdamW {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The hyper-parameters (the learning rate may be changed between steps by a schedule).
    pub fn config_mut(&mut self) -> &mut AdamWConfig {
        &mut self.cfg
    }

    /// Global L2 norm of the gradients of the optimised tensors.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += g
                    .to_dtype(DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq.sqrt())
    }

    /// Applies one update. Gradients are clipped to `max_grad_norm` (global norm) first when
    /// given. Tensors without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<StepStats> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            return Err(LmError::InvalidArgument(format!(
                "gradient norm is {grad_norm}; refusing to update (lower the learning rate?)"
            )));
        }
        let clip_scale = match max_grad_norm {
            Some(max) if grad_norm > max && grad_norm > 0.0 => max / grad_norm,
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as f64;
        let c = &self.cfg;
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let op = AdamUpdate {
                m: &s.m,
                v: &s.v,
                dev: &s.dev,
                lr: c.lr as f32,
                b1: c.beta1 as f32,
                b2: c.beta2 as f32,
                eps: c.eps as f32,
                wd: c.weight_decay as f32,
                bc1: (1.0 - c.beta1.powf(t)) as f32,
                bc2: (1.0 - c.beta2.powf(t)) as f32,
                gscale: clip_scale as f32,
            };
            if s.var.device().is_cpu() && s.var.dtype() == DType::F32 {
                let g = g.to_dtype(DType::F32)?.contiguous()?;
                s.var.as_tensor().inplace_op2(&g, &op)?;
            } else {
                op.tensor_update(&s.var, g)?;
            }
        }
        Ok(StepStats {
            grad_norm,
            clip_scale,
        })
    }

    /// Optimiser state as named tensors (`<name>.exp_avg`, `<name>.exp_avg_sq`, and `step`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            let shape = s.var.shape().clone();
            let on_device = lock(&s.dev)?.clone();
            let (m, v) = match on_device {
                Some((m, v)) => (m.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?),
                None => (lock(&s.m)?.clone(), lock(&s.v)?.clone()),
            };
            out.insert(
                format!("{}.exp_avg", s.name),
                Tensor::from_vec(m, shape.clone(), &candle_core::Device::Cpu)?,
            );
            out.insert(
                format!("{}.exp_avg_sq", s.name),
                Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?,
            );
        }
        out.insert(
            "step".into(),
            Tensor::new(&[self.step as f32], &candle_core::Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores state written by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for s in &self.slots {
            for (suffix, dst) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                let key = format!("{}.{suffix}", s.name);
                let t = state.get(&key).ok_or_else(|| {
                    LmError::InvalidArgument(format!("optimiser state lacks `{key}`"))
                })?;
                let data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let mut d = lock(dst)?;
                if data.len() != d.len() {
                    return Err(LmError::InvalidArgument(format!(
                        "optimiser state `{key}` has {} values, the tensor has {}",
                        data.len(),
                        d.len()
                    )));
                }
                *d = data;
            }
            *lock(&s.dev)? = None;
        }
        let step = state
            .get("step")
            .ok_or_else(|| LmError::InvalidArgument("optimiser state lacks `step`".into()))?;
        self.step = step
            .flatten_all()?
            .to_vec1::<f32>()?
            .first()
            .copied()
            .unwrap_or(0.0) as u64;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| LmError::InvalidArgument("optimiser state lock poisoned".into()))
}

struct AdamUpdate<'a> {
    m: &'a Mutex<Vec<f32>>,
    v: &'a Mutex<Vec<f32>>,
    dev: &'a Mutex<Option<(Tensor, Tensor)>>,
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    bc1: f32,
    bc2: f32,
    gscale: f32,
}

impl AdamUpdate<'_> {
    fn tensor_update(&self, var: &Var, g: &Tensor) -> Result<()> {
        // Device path: the same maths with tensor operations, f32 moments kept on the device.
        let dev = var.device().clone();
        let shape = var.shape().clone();
        let g = (g.to_dtype(DType::F32)? * self.gscale as f64)?;
        let mut state = lock(self.dev)?;
        let (mt, vt) = match state.take() {
            Some(mv) => mv,
            None => (
                Tensor::from_slice(&lock(self.m)?, shape.clone(), &dev)?,
                Tensor::from_slice(&lock(self.v)?, shape.clone(), &dev)?,
            ),
        };
        let mt = ((mt * self.b1 as f64)? + (&g * (1.0 - self.b1) as f64)?)?;
        let vt = ((vt * self.b2 as f64)? + (g.sqr()? * (1.0 - self.b2) as f64)?)?;
        let p = var.as_tensor().to_dtype(DType::F32)?;
        let upd =
            ((&mt / self.bc1 as f64)? / ((&vt / self.bc2 as f64)?.sqrt()? + self.eps as f64)?)?;
        let p = ((p * (1.0 - (self.lr * self.wd) as f64))? - (upd * self.lr as f64)?)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        *state = Some((mt, vt));
        Ok(())
    }
}

impl InplaceOp2 for AdamUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let (Some((a1, e1)), Some((a2, e2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw: parameter and gradient must be contiguous");
        };
        let p = match s1 {
            CpuStorage::F32(p) => &mut p[a1..e1],
            _ => candle_core::bail!("adamw: fused update needs f32 parameters"),
        };
        let g = &s2.as_slice::<f32>()?[a2..e2];
        let mut m = self
            .m
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?;
        let mut v = self
            .v
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?;
        if p.len() != g.len() || m.len() != p.len() {
            candle_core::bail!("adamw: parameter, gradient and state sizes differ");
        }
        let (b1, b2, lr, eps) = (self.b1, self.b2, self.lr, self.eps);
        let decay = 1.0 - lr * self.wd;
        let (inv1, inv2) = (1.0 / self.bc1, 1.0 / self.bc2);
        let gs = self.gscale;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let gi = g[i] * gs;
                    let mi = b1 * m[i] + (1.0 - b1) * gi;
                    let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                    m[i] = mi;
                    v[i] = vi;
                    p[i] = p[i] * decay - lr * (mi * inv1) / ((vi * inv2).sqrt() + eps);
                }
            });
        Ok(())
    }
}

/// Writes a checkpoint directory: `config.json` and `model.safetensors` (full weights), or
/// `adapter_config.json` and `adapter_model.safetensors` (PEFT LoRA layout) when the model has
/// adapters. Files are written to temporaries and renamed, so a kill never leaves half a file.
pub fn save_checkpoint(model: &Llama, dir: &Path, base_model: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| LmError::io(dir, e))?;
    let cpu = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&candle_core::Device::Cpu)?) };
    if let Some(l) = model.lora_config() {
        let tensors: HashMap<String, Tensor> = model
            .lora_weights()
            .into_iter()
            .map(|(n, t)| Ok((n, cpu(&t)?)))
            .collect::<Result<_>>()?;
        write_safetensors(&tensors, &dir.join("adapter_model.safetensors"))?;
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": l.rank,
            "lora_alpha": l.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": l.targets,
            "base_model_name_or_path": base_model.unwrap_or(""),
            "inference_mode": true,
        });
        write_json(&dir.join("adapter_config.json"), &cfg)?;
    } else {
        let tensors: HashMap<String, Tensor> = model
            .named_weights()?
            .into_iter()
            .map(|(n, t)| Ok((n, cpu(&t)?)))
            .collect::<Result<_>>()?;
        write_safetensors(&tensors, &dir.join("model.safetensors"))?;
        let cfg: &LlamaConfig = model.config();
        let mut v = serde_json::to_value(cfg).map_err(|source| LmError::Json {
            context: "config.json".into(),
            source,
        })?;
        if let Some(o) = v.as_object_mut() {
            let arch = if cfg.model_type == "qwen2" {
                "Qwen2ForCausalLM"
            } else {
                "LlamaForCausalLM"
            };
            o.insert("architectures".into(), serde_json::json!([arch]));
            o.insert("torch_dtype".into(), serde_json::json!("float32"));
        }
        write_json(&dir.join("config.json"), &v)?;
    }
    Ok(())
}

/// Loads PEFT LoRA adapter values from `dir/adapter_model.safetensors` into a model that has
/// adapters attached with the same configuration.
pub fn load_adapter(model: &Llama, dir: &Path) -> Result<()> {
    let path = dir.join("adapter_model.safetensors");
    let t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).map_err(|e| {
        LmError::BadModelFile {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    model.set_lora_weights(&t)
}

/// Reads the LoRA settings of a PEFT adapter directory.
pub fn read_adapter_config(dir: &Path) -> Result<crate::model::LoraConfig> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| LmError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| LmError::Json {
        context: path.display().to_string(),
        source,
    })?;
    let bad = |k: &str| LmError::BadModelFile {
        path: path.clone(),
        reason: format!("`{k}` is missing or has the wrong type"),
    };
    let rank = v
        .get("r")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| bad("r"))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(|x| x.as_f64())
        .ok_or_else(|| bad("lora_alpha"))?;
    let targets = v
        .get("target_modules")
        .and_then(|x| x.as_array())
        .ok_or_else(|| bad("target_modules"))?
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    Ok(crate::model::LoraConfig {
        rank,
        alpha,
        targets,
    })
}

/// Writes tensors to a safetensors file atomically.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| LmError::io(path, e))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|source| LmError::Json {
        context: path.display().to_string(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| LmError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LmError::io(path, e))
}
