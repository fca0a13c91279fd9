//! Tensor operations that need two implementations: a fast kernel for inference and a
//! differentiable one for training. candle's fast `rms_norm`, `softmax_last_dim` and `rope` have
//! no backward pass and would cut the graph without an error, so every caller states whether it
//! needs gradients.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::error::Result;
use rayon::prelude::*;

/// RMSNorm over the last dimension, scaled by `w`. Training on the CPU in f32 takes one fused
/// op with its own backward (`dx = r·h − x·r³·(h·x)/n`, `h = dy ⊙ w`; `dw = Σ dy ⊙ x·r`), where
/// the tensor formulation was eight element-wise ops forward, more backward, each with a
/// zero-filled gradient buffer, per norm (61 of them in SmolLM2).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, grad: bool) -> Result<Tensor> {
    if grad && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        let n = x.dim(D::Minus1)?;
        if w.dims() != [n] {
            return Err(crate::error::LmError::InvalidArgument(format!(
                "rms norm: weight {:?} does not fit features {n}",
                w.dims()
            )));
        }
        return Ok(x
            .contiguous()?
            .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })?);
    }
    if grad {
        let n = x.dim(D::Minus1)? as f64;
        let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / n)?;
        let r = (ms + eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&r)?.broadcast_mul(w)?)
    } else {
        let x = x.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, w, eps as f32)?)
    }
}

/// The f32 data of a custom op's contiguous input; `what` names it in the error.
fn f32_input<'a>(what: &str, s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// [`f32_input`] of a custom op's first two inputs.
fn two_slices<'a>(
    what: &str,
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    Ok((f32_input(what, s1, l1)?, f32_input(what, s2, l2)?))
}

/// Per-row `1 / sqrt(mean(x²) + eps)`.
#[inline]
fn rms_inv(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = two_slices("rms norm: inputs", s1, l1, s2, l2)?;
        let n = w.len().max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(o, x)| {
                let r = rms_inv(x, self.eps);
                for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = x * r * w;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = w.elem_count();
        let rows = x.elem_count() / n.max(1);
        let both = x.apply_op3_no_bwd(w, &dy.contiguous()?, &RmsNormBackward { eps: self.eps })?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm's input and weight gradients in one pass: `[rows + 1, n]`, the last row `dw`.
struct RmsNormBackward {
    eps: f32,
}

impl candle_core::CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = two_slices("rms norm backward: inputs", s1, l1, s2, l2)?;
        let dy = f32_input("rms norm backward: inputs", s3, l3)?;
        let n = w.len().max(1);
        let rows = x.len() / n;
        let mut out = vec![0f32; (rows + 1) * n];
        let (dx, dw) = out.split_at_mut(rows * n);
        let partial = dx
            .par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
            .fold(
                || vec![0f32; n],
                |mut dw, (dx, (x, dy))| {
                    let r = rms_inv(x, self.eps);
                    let hx: f32 = dy.iter().zip(w).zip(x).map(|((d, w), x)| d * w * x).sum();
                    let c = r * r * r * hx / n as f32;
                    for (((dx, &x), &d), (&w, dw)) in dx
                        .iter_mut()
                        .zip(x)
                        .zip(dy)
                        .zip(w.iter().zip(dw.iter_mut()))
                    {
                        *dx = r * d * w - x * c;
                        *dw += d * x * r;
                    }
                    dw
                },
            )
            .reduce(
                || vec![0f32; n],
                |mut a, b| {
                    for (a, b) in a.iter_mut().zip(b) {
                        *a += b;
                    }
                    a
                },
            );
        dw.copy_from_slice(&partial);
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, n))))
    }
}

/// `silu(g) · u`, the SwiGLU gate. On the CPU in f32 one fused, vectorised pass each way
/// (candle's `silu` then `mul` called libm's `expf` per element and allocated in between: 4% of
/// a batch-8 decode profile, all of it on the calling thread; in training their backward passes
/// added more); elsewhere candle's ops.
pub fn silu_mul(g: &Tensor, u: &Tensor, grad: bool) -> Result<Tensor> {
    if !g.device().is_cpu() || g.dtype() != DType::F32 || u.dtype() != DType::F32 {
        return Ok((g.silu()? * u)?);
    }
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    Ok(if grad {
        g.apply_op2(&u, SiluMul)?
    } else {
        g.apply_op2_no_bwd(&u, &SiluMul)?
    })
}

/// `σ(g)`, through [`exp_approx`] of `-|g|` so it never overflows and vectorises.
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    let e = exp_approx(-g.abs());
    let num = if g >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// Elements per parallel task of the element-wise ops.
const EW_CHUNK: usize = 1 << 14;

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "silu-mul: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let (g, u) = two_slices("silu-mul: inputs", s1, l1, s2, l2)?;
        let mut out = vec![0f32; g.len()];
        let run = |o: &mut [f32], g: &[f32], u: &[f32]| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        };
        if g.len() > EW_CHUNK {
            out.par_chunks_mut(EW_CHUNK)
                .zip(g.par_chunks(EW_CHUNK).zip(u.par_chunks(EW_CHUNK)))
                .for_each(|(o, (g, u))| run(o, g, u));
        } else {
            run(&mut out, g, u);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &SiluMulBackward)?;
        Ok((
            Some(both.get(0)?.reshape(g.shape())?),
            Some(both.get(1)?.reshape(u.shape())?),
        ))
    }
}

/// `[dg, du]` of `silu(g) · u` from the output gradient `dy`: `du = dy · g·σ(g)`,
/// `dg = dy · u · σ(g)(1 + g(1 − σ(g)))`.
struct SiluMulBackward;

impl candle_core::CustomOp3 for SiluMulBackward {
    fn name(&self) -> &'static str {
        "silu-mul-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = two_slices("silu-mul backward: inputs", s1, l1, s2, l2)?;
        let dy = f32_input("silu-mul backward: inputs", s3, l3)?;
        if g.len() != u.len() || g.len() != dy.len() {
            candle_core::bail!("silu-mul backward: sizes differ");
        }
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        let run = |dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dy: &[f32]| {
            for ((dg, du), ((&g, &u), &d)) in dg.iter_mut().zip(du).zip(g.iter().zip(u).zip(dy)) {
                let s = sigmoid(g);
                *du = d * g * s;
                *dg = d * u * s * (1.0 + g * (1.0 - s));
            }
        };
        dg.par_chunks_mut(EW_CHUNK)
            .zip(du.par_chunks_mut(EW_CHUNK))
            .zip(g.par_chunks(EW_CHUNK).zip(u.par_chunks(EW_CHUNK)))
            .zip(dy.par_chunks(EW_CHUNK))
            .for_each(|(((dg, du), (g, u)), dy)| run(dg, du, g, u, dy));
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor, grad: bool) -> Result<Tensor> {
    if grad {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// Causal, left-padding-aware softmax of attention scores `att` `[b, g, rows, s]` whose row `r`
/// is query position `offset + r % t` (several heads' `t` queries stacked), over keys `0..s`:
/// row `(b, ·, r)` sees keys `pad[b] ..= offset + r % t` (a query inside the padding sees only
/// itself). On the CPU in f32, one fused pass each way, differentiable (`P ⊙ (G − Σ P ⊙ G)`),
/// where the tensor formulation (mask add, max, subtract, exp, sum, divide and their backward
/// passes over the `[b, h, t, s]` scores) was ~25 passes over memory per layer; elsewhere that
/// formulation with an additive mask.
pub fn causal_softmax(
    att: &Tensor,
    t: usize,
    offset: usize,
    pad_left: &[usize],
    grad: bool,
) -> Result<Tensor> {
    let (b, _, rows, s) = att.dims4()?;
    let fits = t > 0
        && rows.is_multiple_of(t)
        && offset + t == s
        && (pad_left.is_empty() || pad_left.len() == b);
    if !fits {
        return Err(crate::error::LmError::InvalidArgument(format!(
            "causal softmax: scores {:?} do not fit {t} queries at offset {offset} with padding {pad_left:?}",
            att.dims()
        )));
    }
    let op = CausalSoftmax {
        t,
        offset,
        pad: pad_left.to_vec(),
    };
    if att.device().is_cpu() && att.dtype() == DType::F32 {
        let att = att.contiguous()?;
        return Ok(if grad {
            att.apply_op1(op)?
        } else {
            att.apply_op1_no_bwd(&op)?
        });
    }
    let mask = Tensor::from_vec(op.additive_mask(b, rows, s), (b, 1, rows, s), att.device())?
        .to_dtype(att.dtype())?;
    softmax_last_dim(&att.broadcast_add(&mask)?, grad)
}

struct CausalSoftmax {
    t: usize,
    offset: usize,
    pad: Vec<usize>,
}

impl CausalSoftmax {
    /// The keys row `r` of sequence `bi` sees: `lo..=hi`.
    #[inline]
    fn keys(&self, bi: usize, r: usize) -> (usize, usize) {
        let pos = self.offset + r % self.t;
        let p = self.pad.get(bi).copied().unwrap_or(0);
        if pos < p {
            (pos, pos)
        } else {
            (p, pos)
        }
    }

    /// The same mask as additive values (0 or -inf), `[b, rows, s]`.
    fn additive_mask(&self, b: usize, rows: usize, s: usize) -> Vec<f32> {
        let mut m = vec![f32::NEG_INFINITY; b * rows * s];
        for bi in 0..b {
            for r in 0..rows {
                let (lo, hi) = self.keys(bi, r);
                m[(bi * rows + r) * s + lo..=(bi * rows + r) * s + hi].fill(0.0);
            }
        }
        m
    }
}

impl candle_core::CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_input("causal softmax: scores", st, l)?;
        let dims = l.dims();
        let (rows, s) = (dims[2], dims[3]);
        let per_seq = dims[1] * rows * s;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .for_each(|(row, (o, x))| {
                let (lo, hi) = self.keys(row * s / per_seq, row % rows);
                let o = &mut o[lo..=hi];
                o.copy_from_slice(&x[lo..=hi]);
                softmax_in_place(o);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&g, &SoftmaxBackward)?))
    }
}

/// `P ⊙ (G − Σ_j P_j G_j)` per row of the last dimension: the softmax's input gradient from its
/// output `P` and the output's gradient `G`.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (p, g) = two_slices("softmax backward: inputs", s1, l1, s2, l2)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("softmax backward: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let s = *l1.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(s.max(1))
            .zip(p.par_chunks(s.max(1)).zip(g.par_chunks(s.max(1))))
            .for_each(|(o, (p, g))| {
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                    *o = p * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Half-rotation RoPE on `x` `[b, h, t, d]` with tables `[t, d/2]` or `[b, t, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, grad: bool) -> Result<Tensor> {
    let cos = cos.to_dtype(x.dtype())?;
    let sin = sin.to_dtype(x.dtype())?;
    if !grad {
        return Ok(candle_nn::rotary_emb::rope(x, &cos, &sin)?);
    }
    let d = x.dim(D::Minus1)?;
    let (cos, sin) = match cos.rank() {
        2 => (
            cos.unsqueeze(0)?.unsqueeze(0)?,
            sin.unsqueeze(0)?.unsqueeze(0)?,
        ),
        _ => (cos.unsqueeze(1)?, sin.unsqueeze(1)?),
    };
    let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
    let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
}

/// Log-probability of each target token: `logits` `[n, vocab]` (f32), `targets` `[n]` (u32) →
/// `[n]`. One fused pass (max, log-sum-exp, pick) instead of a materialised log-softmax; its
/// backward is `g · (onehot − softmax)`, also fused. This is the hot spot of every training
/// step: the logits are the largest activation of a small model.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    if logits.device().is_cpu() {
        let targets = targets.to_dtype(DType::U32)?;
        Ok(logits.apply_op2(&targets, TokenLogProbs)?)
    } else {
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let idx = targets.to_dtype(DType::U32)?.unsqueeze(1)?;
        Ok(lsm.gather(&idx, 1)?.squeeze(1)?)
    }
}

struct TokenLogProbs;

impl CustomOp2 for TokenLogProbs {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (n, v) = l1.shape().dims2()?;
        let logits = f32_input("token_logprobs: logits", s1, l1)?;
        let tg = match l2.contiguous_offsets() {
            Some((a, b)) => &s2.as_slice::<u32>()?[a..b],
            None => candle_core::bail!("token_logprobs: targets must be contiguous"),
        };
        if tg.len() != n {
            candle_core::bail!("token_logprobs: {} targets for {n} rows", tg.len());
        }
        if let Some(bad) = tg.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("token_logprobs: target id {bad} outside the vocabulary of {v}");
        }
        let out: Vec<f32> = logits
            .par_chunks(v)
            .zip(tg.par_iter())
            .map(|(row, &t)| {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let s: f32 = row.iter().map(|&x| (x - m).exp()).sum();
                row[t as usize] - m - s.ln()
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op2_no_bwd(&targets_and_grad(targets, grad)?, &TokenLogProbsGrad)?;
        Ok((Some(g), None))
    }
}

/// Targets and upstream gradient as one `[2, n]` f32 tensor (row 0 the target ids, exact as
/// small integers; row 1 the gradient), so the backward kernel can be a two-input op.
fn targets_and_grad(targets: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::stack(
        &[&targets.to_dtype(DType::F32)?, &grad.to_dtype(DType::F32)?],
        0,
    )
}

struct TokenLogProbsGrad;

impl CustomOp2 for TokenLogProbsGrad {
    fn name(&self) -> &'static str {
        "token-logprobs-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (n, v) = l1.shape().dims2()?;
        let logits = f32_input("token_logprobs: logits", s1, l1)?;
        let tg = f32_input("token_logprobs: targets and gradients", s2, l2)?;
        let (targets, grads) = tg.split_at(n);
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v)
            .zip(logits.par_chunks(v))
            .enumerate()
            .for_each(|(i, (o, row))| {
                let g = grads[i];
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut s = 0f32;
                for (oj, &x) in o.iter_mut().zip(row) {
                    let e = (x - m).exp();
                    *oj = e;
                    s += e;
                }
                let k = -g / s;
                for oj in o.iter_mut() {
                    *oj *= k;
                }
                o[targets[i] as usize] += g;
            });
        Ok((CpuStorage::F32(out), Shape::from((n, v))))
    }
}

/// `x @ wᵀ` for `x` `[rows, in]` and a frozen `w` `[out, in]` whose backward pass computes the
/// gradient of `x` only. candle's own matmul backward always computes the weight's gradient too:
/// a third of a linear layer's training FLOPs thrown away when the weight is not trained (LoRA
/// and RL: the base weights, the tied LM head).
pub fn matmul_frozen_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.apply_op2(w, FrozenMatmulWt)?)
}

struct FrozenMatmulWt;

impl FrozenMatmulWt {
    /// `x @ wᵀ` on any backend's storage: the `(1, m, n, k)` matmul with `w`'s layout transposed.
    fn fwd<S: candle_core::backend::BackendStorage>(
        s1: &S,
        l1: &Layout,
        s2: &S,
        l2: &Layout,
    ) -> candle_core::Result<(S, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul: x has {k} columns, w has {k2}");
        }
        let wt = l2.transpose(0, 1)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, Shape::from((m, n))))
    }
}

impl CustomOp2 for FrozenMatmulWt {
    fn name(&self) -> &'static str {
        "matmul-frozen-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::fwd(s1, l1, s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Self::fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// Attention of one new query position per sequence over a KV cache (CPU, f32), fused: scores,
/// softmax and the weighted sum of values per (sequence, K/V head), without materialising the
/// score matrix or packing operands for a matrix product. `q` is `[b, nh, 1, hd]`, `k` and `v`
/// `[b, nkv, s, hd]` (any strides on the position dimension: views of the cache's buffers); the
/// result is `[b, 1, nh * hd]`. Query heads `h` read K/V head `h / (nh / nkv)` (grouped-query
/// attention). `starts[i]` (empty: all 0) is the first key row `i` attends to: the positions
/// before it are left padding. Decoding spends most of its non-matmul time here: general matrix
/// products on these tiny shapes are dominated by packing (17% of a batch-8 decode profile).
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    starts: &[usize],
) -> Result<Tensor> {
    Ok(q.apply_op3_no_bwd(
        k,
        v,
        &DecodeAttention {
            scale,
            starts: starts.to_vec(),
        },
    )?)
}

struct DecodeAttention {
    scale: f32,
    starts: Vec<usize>,
}

/// Dims of a rank-4 layout whose last dimension is contiguous, and `[stride 0, stride 1,
/// stride 2, start offset]` (all in elements).
fn strided4(l: &Layout, what: &str) -> candle_core::Result<([usize; 4], [usize; 4])> {
    let d = l.dims();
    let st = l.stride();
    if d.len() != 4 || st[3] != 1 {
        candle_core::bail!("decode attention: {what} must be rank 4 with a contiguous last dim");
    }
    Ok((
        [d[0], d[1], d[2], d[3]],
        [st[0], st[1], st[2], l.start_offset()],
    ))
}

impl candle_core::CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qd, qs) = strided4(lq, "q")?;
        let (kd, ks) = strided4(lk, "k")?;
        let (vd, vs) = strided4(lv, "v")?;
        let [b, nh, t, hd] = qd;
        let [_, nkv, s, _] = kd;
        if t != 1 || kd[0] != b || kd[3] != hd || vd != kd || nkv == 0 || nh % nkv != 0 {
            candle_core::bail!("decode attention: q {qd:?}, k {kd:?}, v {vd:?} do not fit");
        }
        if !(self.starts.is_empty() || self.starts.len() == b)
            || self.starts.iter().any(|&p| p >= s)
        {
            candle_core::bail!(
                "decode attention: padding {:?} does not fit {b} rows of {s} keys",
                self.starts
            );
        }
        let (q, k, v) = (
            sq.as_slice::<f32>()?,
            sk.as_slice::<f32>()?,
            sv.as_slice::<f32>()?,
        );
        let rep = nh / nkv;
        let mut out = vec![0f32; b * nh * hd];
        let out_ptr = Disjoint(out.as_mut_ptr());
        let scale = self.scale;
        // One task per (sequence, K/V head): the `rep` query heads sharing a K/V head read each
        // key and value row once between them. candle's spinning pool, as the matrix products.
        candle_core::utils::barrier_pool().execute_chunked(b * nkv, |range| {
            let out_ptr = &out_ptr;
            let mut p = vec![0f32; rep * s];
            for task in range {
                let (bi, kh) = (task / nkv, task % nkv);
                let p0 = self.starts.get(bi).copied().unwrap_or(0);
                let n = s - p0;
                let kbase = ks[3] + bi * ks[0] + kh * ks[1] + p0 * ks[2];
                let vbase = vs[3] + bi * vs[0] + kh * vs[1] + p0 * vs[2];
                let qrow = |r: usize| {
                    let qo = qs[3] + bi * qs[0] + (kh * rep + r) * qs[1];
                    &q[qo..qo + hd]
                };
                // Head by head: the task's K and V rows (n · hd floats each) stay in L1/L2
                // after the first head, so later heads do not go back to memory.
                for r in 0..rep {
                    let pr = &mut p[r * n..(r + 1) * n];
                    if !simd::scores(qrow(r), k, kbase, ks[2], scale, pr) {
                        for (j, pj) in pr.iter_mut().enumerate() {
                            let ko = kbase + j * ks[2];
                            *pj = dot(qrow(r), &k[ko..ko + hd]) * scale;
                        }
                    }
                    softmax_in_place(pr);
                    // SAFETY: task (bi, kh) alone writes the rows of heads kh * rep .. + rep of
                    // sequence bi, and `out` outlives the pool call.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.0.add((bi * nh + kh * rep + r) * hd),
                            hd,
                        )
                    };
                    let pr = &p[r * n..(r + 1) * n];
                    if !simd::weighted_rows(pr, v, vbase, vs[2], o) {
                        weighted_rows(pr, v, vbase, vs[2], o);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, 1, nh * hd))))
    }
}

/// The attention loops in AVX-512 where the CPU has it and the head size is a multiple of 16
/// (left to itself the compiler vectorised the dot products 4 floats wide). Each function
/// returns false, doing nothing, where it does not apply.
mod simd {
    #[cfg(target_arch = "x86_64")]
    fn available() -> bool {
        static A: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *A.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }

    /// Whether `n` rows of `hd` floats, `stride` apart from `base`, lie inside a buffer of `len`,
    /// with `hd` a whole number of 16-float registers.
    fn fits(hd: usize, n: usize, len: usize, base: usize, stride: usize) -> bool {
        hd.is_multiple_of(16) && n > 0 && len >= base + (n - 1) * stride + hd
    }

    /// `out[j] = scale · q · k[base + j·stride ..][..q.len()]` for every `j < out.len()`.
    pub(super) fn scores(
        q: &[f32],
        k: &[f32],
        base: usize,
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) -> bool {
        if !fits(q.len(), out.len(), k.len(), base, stride) {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: AVX-512F detected; every row read is inside `k` (checked above).
            unsafe { x86::scores(q, k.as_ptr().add(base), stride, scale, out) };
            return true;
        }
        false
    }

    /// `o = Σ_j w[j] · v[base + j·stride ..][..o.len()]`.
    pub(super) fn weighted_rows(
        w: &[f32],
        v: &[f32],
        base: usize,
        stride: usize,
        o: &mut [f32],
    ) -> bool {
        if !fits(o.len(), w.len(), v.len(), base, stride) {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: AVX-512F detected; every row read is inside `v` (checked above).
            unsafe { x86::weighted_rows(w, v.as_ptr().add(base), stride, o) };
            return true;
        }
        false
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn scores(
            q: &[f32],
            k: *const f32,
            stride: usize,
            scale: f32,
            out: &mut [f32],
        ) {
            let chunks = q.len() / 16;
            let qp = q.as_ptr();
            for (j, o) in out.iter_mut().enumerate() {
                let kr = k.add(j * stride);
                // Two independent chains, summed at the end.
                let mut a = _mm512_setzero_ps();
                let mut b = _mm512_setzero_ps();
                let mut c = 0;
                while c + 1 < chunks {
                    a = _mm512_fmadd_ps(
                        _mm512_loadu_ps(qp.add(16 * c)),
                        _mm512_loadu_ps(kr.add(16 * c)),
                        a,
                    );
                    b = _mm512_fmadd_ps(
                        _mm512_loadu_ps(qp.add(16 * c + 16)),
                        _mm512_loadu_ps(kr.add(16 * c + 16)),
                        b,
                    );
                    c += 2;
                }
                if c < chunks {
                    a = _mm512_fmadd_ps(
                        _mm512_loadu_ps(qp.add(16 * c)),
                        _mm512_loadu_ps(kr.add(16 * c)),
                        a,
                    );
                }
                *o = _mm512_reduce_add_ps(_mm512_add_ps(a, b)) * scale;
            }
        }

        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn weighted_rows(w: &[f32], v: *const f32, stride: usize, o: &mut [f32]) {
            let chunks = o.len() / 16;
            // Passes of up to four 16-float chunks, their sums held in registers over all rows.
            let mut c0 = 0;
            while c0 < chunks {
                let cn = (chunks - c0).min(4);
                let mut acc = [_mm512_setzero_ps(); 4];
                if cn == 4 {
                    for (j, &wj) in w.iter().enumerate() {
                        let x = _mm512_set1_ps(wj);
                        let vr = v.add(j * stride + 16 * c0);
                        acc[0] = _mm512_fmadd_ps(x, _mm512_loadu_ps(vr), acc[0]);
                        acc[1] = _mm512_fmadd_ps(x, _mm512_loadu_ps(vr.add(16)), acc[1]);
                        acc[2] = _mm512_fmadd_ps(x, _mm512_loadu_ps(vr.add(32)), acc[2]);
                        acc[3] = _mm512_fmadd_ps(x, _mm512_loadu_ps(vr.add(48)), acc[3]);
                    }
                } else {
                    for (j, &wj) in w.iter().enumerate() {
                        let x = _mm512_set1_ps(wj);
                        let vr = v.add(j * stride + 16 * c0);
                        for (u, a) in acc.iter_mut().enumerate().take(cn) {
                            *a = _mm512_fmadd_ps(x, _mm512_loadu_ps(vr.add(16 * u)), *a);
                        }
                    }
                }
                for (u, a) in acc.iter().enumerate().take(cn) {
                    _mm512_storeu_ps(o.as_mut_ptr().add(16 * (c0 + u)), *a);
                }
                c0 += cn;
            }
        }
    }
}

/// Lanes of the partial sums the attention loops keep: one 512-bit register of f32.
const LANES: usize = 16;

/// `o = Σ_j w[j] · v[base + j·stride ..][..o.len()]`, `o` in chunks of 64 held in registers
/// across the whole sum (accumulating straight into `o` stored and reloaded it per row).
fn weighted_rows(w: &[f32], v: &[f32], base: usize, stride: usize, o: &mut [f32]) {
    const W: usize = 4 * LANES;
    let hd = o.len();
    let mut c = 0;
    while c < hd {
        let width = (hd - c).min(W);
        let mut acc = [0f32; W];
        if width == W {
            for (j, &wj) in w.iter().enumerate() {
                let vo = base + j * stride + c;
                let vr: &[f32; W] = match v[vo..vo + W].try_into() {
                    Ok(a) => a,
                    Err(_) => unreachable!("a slice of W elements"),
                };
                for (a, &x) in acc.iter_mut().zip(vr) {
                    *a = wj.mul_add(x, *a);
                }
            }
        } else {
            for (j, &wj) in w.iter().enumerate() {
                let vo = base + j * stride + c;
                for (a, &x) in acc.iter_mut().zip(&v[vo..vo + width]) {
                    *a = wj.mul_add(x, *a);
                }
            }
        }
        o[c..c + width].copy_from_slice(&acc[..width]);
        c += width;
    }
}

/// Softmax of `x` in place (the max subtracted first), with [`exp_approx`] so the loop
/// vectorises (libm's `expf` per score was 3% of a batch-8 decode profile).
fn softmax_in_place(x: &mut [f32]) {
    let mx = max_of(x);
    let mut sum = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in sum.iter_mut().zip(c) {
            *v = exp_approx(*v - mx);
            *s += *v;
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_approx(*v - mx);
        tail += *v;
    }
    let inv = 1.0 / (sum.iter().sum::<f32>() + tail);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` for `x <= 0` (softmax arguments), within 2 ulp of `f32::exp` down to `-87` and 0
/// below (where `f32::exp` is denormal or 0): range reduction by `ln 2` (split in two
/// constants) and a degree-6 polynomial, all branch-free so loops over it vectorise.
#[inline(always)]
#[allow(clippy::manual_clamp)] // on purpose: see the comment on `x`
pub(crate) fn exp_approx(x0: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 2^23: adding it to a small whole number puts that number in the low mantissa bits.
    const MAGIC: f32 = 8_388_608.0;
    // `max`/`min` rather than `clamp` and no float-to-int cast: both compile to scalar code
    // around NaN checks, which kept the loops around this function from vectorising.
    let x = x0.max(-87.0).min(0.0);
    let n = x.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut y = 1.987_569_2e-4f32;
    y = y.mul_add(r, 1.398_2e-3);
    y = y.mul_add(r, 8.333_452e-3);
    y = y.mul_add(r, 4.166_579_6e-2);
    y = y.mul_add(r, 1.666_666_5e-1);
    y = y.mul_add(r, 0.5);
    let y = y.mul_add(r * r, r) + 1.0;
    // 2^n with n in [-126, 0]: n + 127 is the exponent field.
    let biased = (n + (MAGIC + 127.0)).to_bits() - MAGIC.to_bits();
    let e = y * f32::from_bits(biased << 23);
    if x0 < -87.0 {
        0.0
    } else if x0.is_nan() {
        x0
    } else {
        e
    }
}

/// The largest element of `x` (`-inf` when empty), over `LANES` running maxima so it vectorises.
pub(crate) fn max_of(x: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in mx.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&mx)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `Σ e^((x - m) · inv_t)` for `m` at least every element (a log-sum-exp's or a temperature
/// softmax's normaliser), over `LANES` running sums.
pub(crate) fn sum_exp(x: &[f32], m: f32, inv_t: f32) -> f32 {
    let mut sum = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &v) in sum.iter_mut().zip(c) {
            *s += exp_approx((v - m) * inv_t);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| exp_approx((v - m) * inv_t))
        .sum();
    sum.iter().sum::<f32>() + tail
}

/// A pointer shared by worker-pool tasks that each touch their own elements behind it (an
/// output buffer split by rows or columns).
pub(crate) struct Disjoint<T>(pub(crate) *mut T);
// SAFETY: every use site hands each task indices no other task touches, and the pointee
// outlives the pool call.
unsafe impl<T> Sync for Disjoint<T> {}

/// Dot product over `LANES`-wide fused multiply-adds, four independent chains of them, and a
/// pairwise final sum (a running sum of the lanes was a 16-add chain per key in attention). The
/// accumulators are separate fixed-size values so they stay in registers.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 4 * LANES;
    let mut acc = [[0f32; LANES]; 4];
    let (ac, ar) = a.split_at(a.len() - a.len() % W);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(W).zip(bc.chunks_exact(W)) {
        for (c, acc) in acc.iter_mut().enumerate() {
            for i in 0..LANES {
                acc[i] = x[c * LANES + i].mul_add(y[c * LANES + i], acc[i]);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let s: [f32; LANES] = std::array::from_fn(|i| (a0[i] + a1[i]) + (a2[i] + a3[i]));
    let s: [f32; 8] = std::array::from_fn(|i| s[i] + s[i + 8]);
    let s: [f32; 4] = std::array::from_fn(|i| s[i] + s[i + 4]);
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    (s[0] + s[2]) + (s[1] + s[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn wave(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 1.7 + (i as f32 * 0.011).cos())
            .collect()
    }

    /// Textbook attention of one query per row: scores, `f32::exp` softmax, weighted values.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        [b, nh, nkv, cap, s, hd]: [usize; 6],
        starts: &[usize],
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; b * nh * hd];
        for bi in 0..b {
            for h in 0..nh {
                let kh = h / (nh / nkv);
                let qv = &q[(bi * nh + h) * hd..][..hd];
                // K and V share one layout.
                let row = |j: usize| ((bi * nkv + kh) * cap + j) * hd;
                let p0 = starts.get(bi).copied().unwrap_or(0);
                let sc: Vec<f32> = (p0..s)
                    .map(|j| {
                        let o = row(j);
                        qv.iter()
                            .zip(&k[o..o + hd])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                let mx = sc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f32> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for (jj, w) in e.iter().enumerate() {
                    let o = row(p0 + jj);
                    for d in 0..hd {
                        out[(bi * nh + h) * hd + d] += w / z * v[o + d];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn decode_attention_matches_the_textbook_with_grouped_heads_and_padding() {
        // Head sizes on the 64-wide register path (64, 128), with a tail (80) and below it (8);
        // the cache is a narrowed view of a larger buffer, as in decoding.
        for hd in [64usize, 80, 128, 8] {
            let (b, nh, nkv, cap, s) = (3usize, 6usize, 2usize, 40usize, 29usize);
            let q = wave(b * nh * hd, 0.3);
            let k = wave(b * nkv * cap * hd, 1.1);
            let v = wave(b * nkv * cap * hd, 2.9);
            let starts = [0usize, 5, 28];
            let scale = 1.0 / (hd as f32).sqrt();
            let dev = Device::Cpu;
            let qt = Tensor::from_vec(q.clone(), (b, nh, 1, hd), &dev).unwrap();
            let kt = Tensor::from_vec(k.clone(), (b, nkv, cap, hd), &dev).unwrap();
            let vt = Tensor::from_vec(v.clone(), (b, nkv, cap, hd), &dev).unwrap();
            let (kt, vt) = (kt.narrow(2, 0, s).unwrap(), vt.narrow(2, 0, s).unwrap());
            for st in [&starts[..], &[]] {
                let got = decode_attention(&qt, &kt, &vt, scale, st)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let want = reference(&q, &k, &v, [b, nh, nkv, cap, s, hd], st, scale);
                let d = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "hd {hd}, starts {st:?}: max difference {d}");
            }
        }
    }

    #[test]
    fn decode_attention_rejects_padding_that_does_not_fit() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 2, 1, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((2, 1, 4, 8), DType::F32, &dev).unwrap();
        for bad in [&[0usize][..], &[0, 4]] {
            let e = decode_attention(&q, &k, &k, 1.0, bad).unwrap_err();
            assert!(e.to_string().contains("padding"), "{e}");
        }
    }

    #[test]
    fn causal_softmax_matches_mask_and_softmax_forward_and_backward() {
        let dev = Device::Cpu;
        // 2 sequences, 2 head groups of 2 stacked heads × 5 queries at offset 3 (8 keys); the
        // second sequence has 4 padding positions, so its first query sits inside the padding.
        let (b, g, t, offset) = (2usize, 2usize, 5usize, 3usize);
        let (rows, s) = (2 * t, offset + t);
        let pad = [0usize, 4];
        let x = Tensor::from_vec(wave(b * g * rows * s, 0.4), (b, g, rows, s), &dev).unwrap();
        let gout = Tensor::from_vec(wave(b * g * rows * s, 2.2), (b, g, rows, s), &dev).unwrap();
        let op = CausalSoftmax {
            t,
            offset,
            pad: pad.to_vec(),
        };
        let mask = Tensor::from_vec(op.additive_mask(b, rows, s), (b, 1, rows, s), &dev).unwrap();
        let run = |fused: bool| {
            let v = candle_core::Var::from_tensor(&x).unwrap();
            let y = if fused {
                causal_softmax(v.as_tensor(), t, offset, &pad, true).unwrap()
            } else {
                candle_nn::ops::softmax(&v.as_tensor().broadcast_add(&mask).unwrap(), D::Minus1)
                    .unwrap()
            };
            let grads = (&y * &gout).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(v.as_tensor()).unwrap().clone();
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                dx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let (y1, d1) = run(true);
        let (y0, d0) = run(false);
        for (name, a, b) in [("output", &y1, &y0), ("gradient", &d1, &d0)] {
            let d = a
                .iter()
                .zip(b.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-6, "{name}: max difference {d}");
        }
        // Row 0 of sequence 1 (inside its padding) sees only itself.
        let row = &y1[(g * rows) * s..(g * rows) * s + s];
        assert_eq!(row[offset], 1.0, "{row:?}");
        // Scores that do not fit the shape are an error.
        assert!(causal_softmax(&x, 4, offset, &pad, false).is_err());
    }

    /// Output and input gradients of `f(fused)` against `f(reference)` under the loss
    /// `Σ y ⊙ gout`, for each of `inputs`.
    fn same_forward_and_backward(
        inputs: &[Tensor],
        gout: &Tensor,
        f: impl Fn(&[Tensor], bool) -> Tensor,
        tol: f32,
    ) {
        let run = |fused: bool| {
            let vars: Vec<candle_core::Var> = inputs
                .iter()
                .map(|t| candle_core::Var::from_tensor(t).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ts, fused);
            let grads = (&y * gout).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
            for t in &ts {
                let g = grads.get(t).unwrap();
                out.push(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            out
        };
        let (a, b) = (run(true), run(false));
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= tol * (1.0 + y.abs()),
                    "part {i} (0 = output): {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn fused_rms_norm_and_silu_mul_match_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(wave(6 * 40, 0.2), (2, 3, 40), &dev).unwrap();
        let w = Tensor::from_vec(wave(40, 1.3), 40, &dev).unwrap();
        let gout = Tensor::from_vec(wave(6 * 40, 2.5), (2, 3, 40), &dev).unwrap();
        same_forward_and_backward(
            &[x.clone(), w],
            &gout,
            |t, fused| {
                if fused {
                    rms_norm(&t[0], &t[1], 1e-5, true).unwrap()
                } else {
                    let ms = (t[0].sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / 40.0).unwrap();
                    let r = (ms + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
                    t[0].broadcast_mul(&r)
                        .unwrap()
                        .broadcast_mul(&t[1])
                        .unwrap()
                }
            },
            1e-5,
        );
        // Large enough for the parallel path, with saturating gate values.
        let n = 3 * EW_CHUNK + 5;
        let mut g = wave(n, 0.9);
        g[7] = -200.0;
        g[8] = 200.0;
        let g = Tensor::from_vec(g, (1, n), &dev).unwrap();
        let u = Tensor::from_vec(wave(n, 1.7), (1, n), &dev).unwrap();
        let gout = Tensor::from_vec(wave(n, 3.1), (1, n), &dev).unwrap();
        same_forward_and_backward(
            &[g, u],
            &gout,
            |t, fused| {
                if fused {
                    silu_mul(&t[0], &t[1], true).unwrap()
                } else {
                    (t[0].silu().unwrap() * &t[1]).unwrap()
                }
            },
            1e-5,
        );
    }

    #[test]
    fn fused_silu_mul_matches_candle() {
        let dev = Device::Cpu;
        let mut g = wave(3 * 37, 0.7);
        g.extend([-200.0f32, -90.0, 0.0, 90.0, 200.0]);
        let u = wave(g.len(), 1.9);
        let n = g.len();
        let g = Tensor::from_vec(g, n, &dev).unwrap();
        let u = Tensor::from_vec(u, n, &dev).unwrap();
        let want = (g.silu().unwrap() * &u).unwrap().to_vec1::<f32>().unwrap();
        let got = silu_mul(&g, &u, false).unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn the_softmax_exponential_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (a, b) = (exp_approx(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 2.5 * f32::EPSILON, "worst relative error {worst}");
        assert_eq!(exp_approx(0.0), 1.0);
        assert_eq!(exp_approx(-88.0), 0.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert!(exp_approx(f32::NAN).is_nan());
    }
}
