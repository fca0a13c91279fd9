//! Tensor operations that need two implementations: a fast kernel for inference and a
//! differentiable one for training. candle's fast `rms_norm`, `softmax_last_dim` and `rope` have
//! no backward pass and would cut the graph without an error, so every caller states whether it
//! needs gradients.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::error::Result;

/// RMSNorm over the last dimension, scaled by `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, grad: bool) -> Result<Tensor> {
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

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor, grad: bool) -> Result<Tensor> {
    if grad {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
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

fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("token_logprobs: logits must be contiguous"),
    }
}

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
        let logits = rows(s1, l1)?;
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
        let logits = rows(s1, l1)?;
        let tg = rows(s2, l2)?;
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
/// softmax and the weighted sum of values per (sequence, head), without materialising the
/// score matrix or packing operands for a matrix product. `q` is `[b, nh, 1, hd]`, `k` and `v`
/// `[b, nkv, s, hd]` (any strides on the position dimension: views of the cache's buffers); the
/// result is `[b, 1, nh * hd]`. Query heads `h` read K/V head `h / (nh / nkv)` (grouped-query
/// attention). Decoding spends most of its non-matmul time here: general matrix products on
/// these tiny shapes are dominated by packing (17% of a batch-8 decode profile).
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    Ok(q.apply_op3_no_bwd(k, v, &DecodeAttention { scale })?)
}

struct DecodeAttention {
    scale: f32,
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
        let (q, k, v) = (
            sq.as_slice::<f32>()?,
            sk.as_slice::<f32>()?,
            sv.as_slice::<f32>()?,
        );
        let rep = nh / nkv;
        let mut out = vec![0f32; b * nh * hd];
        let out_ptr = Disjoint(out.as_mut_ptr());
        let scale = self.scale;
        // One task per (sequence, query head); candle's spinning pool, as the matrix products.
        candle_core::utils::barrier_pool().execute_chunked(b * nh, |range| {
            let out_ptr = &out_ptr;
            let mut p = vec![0f32; s];
            for task in range {
                let (bi, h) = (task / nh, task % nh);
                let kh = h / rep;
                let qo = qs[3] + bi * qs[0] + h * qs[1];
                let qv = &q[qo..qo + hd];
                let kbase = ks[3] + bi * ks[0] + kh * ks[1];
                let vbase = vs[3] + bi * vs[0] + kh * vs[1];
                let mut mx = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let ko = kbase + j * ks[2];
                    let x = dot(qv, &k[ko..ko + hd]) * scale;
                    *pj = x;
                    mx = mx.max(x);
                }
                let mut sum = 0f32;
                for pj in p.iter_mut() {
                    let e = (*pj - mx).exp();
                    *pj = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                // SAFETY: task (bi, h) alone writes out[(bi * nh + h) * hd ..][..hd], and `out`
                // outlives the pool call.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.0.add((bi * nh + h) * hd), hd)
                };
                for (j, &pj) in p.iter().enumerate() {
                    let vo = vbase + j * vs[2];
                    let w = pj * inv;
                    for (oi, &vi) in o.iter_mut().zip(&v[vo..vo + hd]) {
                        *oi += w * vi;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, 1, nh * hd))))
    }
}

/// A pointer shared by worker-pool tasks that each touch their own elements behind it (an
/// output buffer split by rows or columns).
pub(crate) struct Disjoint<T>(pub(crate) *mut T);
// SAFETY: every use site hands each task indices no other task touches, and the pointee
// outlives the pool call.
unsafe impl<T> Sync for Disjoint<T> {}

/// Dot product with eight independent accumulators, so it vectorises.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() - a.len() % 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
