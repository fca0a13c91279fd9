//! Quantised matrix products for CPU inference, written for the shapes decoding has: a handful of
//! activation rows (one per sequence being decoded) against a large weight matrix. Weights are
//! streamed once per call whatever the number of rows, so decoding 8 sequences costs little more
//! than decoding one.
//!
//! Two block formats, both with 32 values per block along the input dimension:
//! - `Q4_1` exactly as GGUF stores it (f16 scale, f16 minimum, 16 bytes of nibbles), so a Q4_1
//!   file runs on the very weights it ships, like llama.cpp;
//! - `Q8_0` (f32 scale, 32 signed bytes), for everything else.
//!
//! Activations are quantised per row to 8-bit blocks (f32 scale, and the block's scaled sum for
//! Q4_1's minimum term). The inner products use AVX2 (`maddubs`) when the CPU has it, else a
//! portable loop that computes the same integers.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{LmError, Result};

const QK: usize = 32;

/// Weight block formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKind {
    Q4_1,
    Q8_0,
}

impl PackedKind {
    /// The format srcode's kernels take for a GGML type, if they take it.
    pub fn from_ggml(q: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType;
        match q {
            GgmlDType::Q4_1 => Some(PackedKind::Q4_1),
            GgmlDType::Q8_0 => Some(PackedKind::Q8_0),
            _ => None,
        }
    }

    /// The GGML type of this format.
    pub fn ggml(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType;
        match self {
            PackedKind::Q4_1 => GgmlDType::Q4_1,
            PackedKind::Q8_0 => GgmlDType::Q8_0,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            PackedKind::Q4_1 => 20,
            PackedKind::Q8_0 => 36,
        }
    }
}

/// A quantised `[rows, cols]` weight matrix, row-major, each row a run of blocks.
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub kind: PackedKind,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Wraps GGUF Q4_1 bytes of a `[rows, cols]` matrix.
    pub fn from_q4_1_bytes(rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let m = PackedMatrix {
            rows,
            cols,
            kind: PackedKind::Q4_1,
            data,
        };
        m.check()?;
        Ok(m)
    }

    /// Quantises an f32 `[rows, cols]` matrix.
    pub fn quantize(w: &Tensor, kind: PackedKind) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        if !cols.is_multiple_of(QK) {
            return Err(LmError::Unsupported(format!(
                "quantised weights need an input size divisible by {QK}, got {cols}"
            )));
        }
        let v = w
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bpr = cols / QK;
        let bb = kind.block_bytes();
        let mut data = vec![0u8; rows * bpr * bb];
        data.par_chunks_mut(bpr * bb)
            .zip(v.par_chunks(cols))
            .for_each(|(out, row)| {
                for (blk, x) in out.chunks_mut(bb).zip(row.chunks(QK)) {
                    match kind {
                        PackedKind::Q8_0 => {
                            let amax = x.iter().fold(0f32, |a, &b| a.max(b.abs()));
                            let d = amax / 127.0;
                            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                            blk[..4].copy_from_slice(&d.to_le_bytes());
                            for (o, &xi) in blk[4..].iter_mut().zip(x) {
                                *o = (xi * id).round().clamp(-127.0, 127.0) as i8 as u8;
                            }
                        }
                        PackedKind::Q4_1 => {
                            let mn = x.iter().fold(f32::INFINITY, |a, &b| a.min(b));
                            let mx = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                            let d = (mx - mn) / 15.0;
                            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                            blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                            blk[2..4].copy_from_slice(&f16::from_f32(mn).to_le_bytes());
                            for j in 0..16 {
                                let lo = ((x[j] - mn) * id).round().clamp(0.0, 15.0) as u8;
                                let hi = ((x[j + 16] - mn) * id).round().clamp(0.0, 15.0) as u8;
                                blk[4 + j] = lo | (hi << 4);
                            }
                        }
                    }
                }
            });
        Ok(PackedMatrix {
            rows,
            cols,
            kind,
            data,
        })
    }

    fn check(&self) -> Result<()> {
        let want = self.rows * (self.cols / QK) * self.kind.block_bytes();
        if !self.cols.is_multiple_of(QK) || self.data.len() != want {
            return Err(LmError::InvalidArgument(format!(
                "packed {:?} matrix [{}, {}] needs {want} bytes, got {}",
                self.kind,
                self.rows,
                self.cols,
                self.data.len()
            )));
        }
        Ok(())
    }

    /// Reorders rows: row `i` of the result is row `perm[i]` of `self` (blocks move whole, so
    /// this is exact).
    pub fn permute_rows(&self, perm: &[usize]) -> Result<Self> {
        if perm.len() != self.rows || perm.iter().any(|&p| p >= self.rows) {
            return Err(LmError::InvalidArgument("bad row permutation".into()));
        }
        let rb = (self.cols / QK) * self.kind.block_bytes();
        let mut data = Vec::with_capacity(self.data.len());
        for &p in perm {
            data.extend_from_slice(&self.data[p * rb..(p + 1) * rb]);
        }
        Ok(PackedMatrix {
            rows: self.rows,
            cols: self.cols,
            kind: self.kind,
            data,
        })
    }

    /// Dequantises to an f32 `[rows, cols]` tensor (tests, export).
    pub fn dequantize(&self) -> Result<Tensor> {
        let bpr = self.cols / QK;
        let bb = self.kind.block_bytes();
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols).enumerate() {
            for b in 0..bpr {
                let blk = &self.data[(r * bpr + b) * bb..(r * bpr + b + 1) * bb];
                let o = &mut row[b * QK..(b + 1) * QK];
                match self.kind {
                    PackedKind::Q8_0 => {
                        let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                        for j in 0..QK {
                            o[j] = blk[4 + j] as i8 as f32 * d;
                        }
                    }
                    PackedKind::Q4_1 => {
                        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                        for j in 0..16 {
                            o[j] = (blk[4 + j] & 0x0F) as f32 * d + m;
                            o[j + 16] = (blk[4 + j] >> 4) as f32 * d + m;
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(
            out,
            (self.rows, self.cols),
            &candle_core::Device::Cpu,
        )?)
    }

    /// `x @ selfᵀ` for `x` `[..., cols]` (f32, CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
        Ok(x.apply_op1_no_bwd(&PackedMatmulOp(self))?)
    }
}

/// One quantised activation block.
#[derive(Clone, Copy)]
#[repr(C)]
struct ActBlock {
    d: f32,
    /// `d · Σ q`, the sum of the rounded activations, for Q4_1's minimum term. Using the rounded
    /// sum makes the total error `Σ w·e` (true weights times activation rounding), which cancels;
    /// the exact sum would leave `Σ (w − min)·e`, whose terms all share a sign.
    s: f32,
    q: [i8; QK],
}

fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::current() != Kernel::Portable {
        // SAFETY: every kernel but the portable one implies AVX2 (`Kernel::available`).
        return unsafe { avx2::quantize_row(x, out) };
    }
    quantize_row_portable(x, out)
}

fn quantize_row_portable(x: &[f32], out: &mut [ActBlock]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks(QK)) {
        let amax = xs.iter().fold(0f32, |a, &b| a.max(b.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in blk.q.iter_mut().zip(xs) {
            let qi = (v * id).round() as i32;
            *q = qi as i8;
            sum += qi;
        }
        blk.d = d;
        blk.s = d * sum as f32;
    }
}

/// Quantised activation rows, plus each block's `s` laid out per group of `MAX_ROWS` rows as
/// `[block][row]`, so a kernel loads the minimum-term factors of all its rows with one load.
struct Acts {
    blocks: Vec<ActBlock>,
    sums: Vec<f32>,
    /// Each block's scale `d`, laid out as `sums`.
    ds: Vec<f32>,
    /// For `LANE_MIN_ROWS` rows or more: the bytes re-laid per group of `MAX_ROWS` rows as
    /// `[block][four-byte group g][row][4]`, so one 32-byte load holds bytes `4g..4g+4` of
    /// every row and one integer dot product step serves all rows of the group at once (rows
    /// past the end of the batch are zero).
    lanes: Vec<u8>,
    /// [`Acts::lanes`] is in the 512-bit kernel's paired layout instead: per group and block
    /// `[pair q][row][8]`, bytes `8q..8q+8` of every row, so one 64-byte load holds two
    /// four-byte groups of all eight rows; `ds` then holds each scale twice (`[block][row][2]`).
    paired: bool,
    bpr: usize,
}

/// From this many rows on, the kernels work on [`Acts::lanes`] (all rows of a group per
/// instruction) rather than row by row.
const LANE_MIN_ROWS: usize = 3;

impl Acts {
    /// `x`'s rows quantised, laid out for `kernel`.
    fn quantize(x: &[f32], k: usize, kernel: Kernel) -> Self {
        let bpr = k / QK;
        let m = x.len() / k;
        let mut blocks = vec![
            ActBlock {
                d: 0.0,
                s: 0.0,
                q: [0; QK]
            };
            m * bpr
        ];
        // Decoding quantises a handful of rows: waking rayon's workers for them costs more than
        // the work.
        if m > 16 {
            blocks
                .par_chunks_mut(bpr)
                .zip(x.par_chunks(k))
                .for_each(|(o, row)| quantize_row(row, o));
        } else {
            quantize_row(x, &mut blocks);
        }
        let groups = m.div_ceil(MAX_ROWS);
        let with_lanes = m >= LANE_MIN_ROWS;
        let paired = with_lanes && kernel == Kernel::Avx512;
        let ds_per = if paired { 2 } else { 1 };
        let mut sums = vec![0f32; groups * bpr * MAX_ROWS];
        let mut ds = vec![0f32; groups * bpr * MAX_ROWS * ds_per];
        let mut lanes = vec![
            0u8;
            if with_lanes {
                groups * bpr * QK * MAX_ROWS
            } else {
                0
            }
        ];
        for (r, row) in blocks.chunks(bpr).enumerate() {
            let (g, i) = (r / MAX_ROWS, r % MAX_ROWS);
            for (b, blk) in row.iter().enumerate() {
                let at = (g * bpr + b) * MAX_ROWS + i;
                sums[at] = blk.s;
                // Whole 8- or 4-byte runs per copy (byte by byte this was 2% of a batch-8
                // decode profile, on the calling thread while the workers wait).
                let bytes = blk.q.map(|v| v as u8);
                let base = (g * bpr + b) * QK * MAX_ROWS;
                if paired {
                    ds[2 * at] = blk.d;
                    ds[2 * at + 1] = blk.d;
                    for (q, eight) in bytes.chunks_exact(8).enumerate() {
                        let o = base + q * 8 * MAX_ROWS + i * 8;
                        lanes[o..o + 8].copy_from_slice(eight);
                    }
                    continue;
                }
                ds[at] = blk.d;
                if with_lanes {
                    for (gg, four) in bytes.chunks_exact(4).enumerate() {
                        let o = base + gg * 4 * MAX_ROWS + i * 4;
                        lanes[o..o + 4].copy_from_slice(four);
                    }
                }
            }
        }
        Acts {
            blocks,
            sums,
            ds,
            lanes,
            paired,
            bpr,
        }
    }

    /// Blocks of rows `m0..m0 + mm` (`m0` a multiple of `MAX_ROWS`) and their group's sums.
    fn group(&self, m0: usize, mm: usize) -> (&[ActBlock], &[f32]) {
        let g = m0 / MAX_ROWS;
        let n = self.bpr * MAX_ROWS;
        (
            &self.blocks[m0 * self.bpr..(m0 + mm) * self.bpr],
            &self.sums[g * n..(g + 1) * n],
        )
    }

    /// The group of `m0`'s lanes, scales and sums (see [`Acts::lanes`]).
    fn group_lanes(&self, m0: usize) -> (&[u8], &[f32], &[f32]) {
        let g = m0 / MAX_ROWS;
        let n = self.bpr * MAX_ROWS;
        let dn = if self.paired { 2 * n } else { n };
        (
            &self.lanes[g * n * QK..(g + 1) * n * QK],
            &self.ds[g * dn..(g + 1) * dn],
            &self.sums[g * n..(g + 1) * n],
        )
    }
}

struct PackedMatmulOp<'a>(&'a PackedMatrix);

/// Rows of activations handled together against one weight row.
const MAX_ROWS: usize = 8;

impl CustomOp1 for PackedMatmulOp<'_> {
    fn name(&self) -> &'static str {
        "packed-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = self.0;
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != w.cols {
            candle_core::bail!(
                "packed matmul: input has {k} features, weight expects {}",
                w.cols
            );
        }
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("packed matmul: input must be contiguous");
        };
        let x = &s.as_slice::<f32>()?[a..b];
        let m = x.len() / k;
        let bpr = k / QK;
        let acts = Acts::quantize(x, k, Kernel::current());
        let n = w.rows;
        let mut out = vec![0f32; m * n];
        // Work is split over output features, each task a stripe of weight rows writing its own
        // columns of `out`. It runs on candle's barrier pool, whose workers spin between the ~200
        // small products of a decoded token; rayon's sleeping workers cost a wake-up each time
        // (10% of a decode profile was in the scheduler).
        const CHUNK: usize = 16;
        let bb = w.kind.block_bytes();
        let row_bytes = bpr * bb;
        let out_ptr = crate::ops::Disjoint(out.as_mut_ptr());
        let acts = &acts;
        candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(CHUNK), |range| {
            let out_ptr = &out_ptr;
            let mut res = vec![0f32; CHUNK * m];
            for c in range {
                let r0 = c * CHUNK;
                let r1 = (r0 + CHUNK).min(n);
                let res = &mut res[..(r1 - r0) * m];
                stripe(
                    w.kind,
                    &w.data[r0 * row_bytes..r1 * row_bytes],
                    acts,
                    m,
                    res,
                );
                // Row by row, so each output row gets one contiguous run of stores (column by
                // column, the lm-head's stores were 196 KB apart: 8% of a batch-8 profile).
                for i in 0..m {
                    // SAFETY: columns r0..r1 of every row belong to this task alone, and `out`
                    // outlives the pool call.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.0.add(i * n + r0), r1 - r0)
                    };
                    for (j, oj) in o.iter_mut().enumerate() {
                        *oj = res[j * m + i];
                    }
                }
            }
        });
        let mut shape = dims.to_vec();
        let last = shape.len() - 1;
        shape[last] = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// The SIMD kernel products run on, chosen once per process from the CPU's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA + F16C: `maddubs` and `madd` per 32 weights.
    Avx2,
    /// AVX-512 VNNI on 256-bit vectors: one `dpbusd` per 32 weights.
    Vnni,
    /// AVX-512 (F, BW, VNNI) on 512-bit vectors for three rows or more: one `dpbusd` per 64
    /// weights, two four-byte groups of eight rows per instruction (fewer rows: [`Kernel::Vnni`]).
    Avx512,
}

impl Kernel {
    /// Kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        let mut k = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 {
                k.push(Kernel::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    k.push(Kernel::Vnni);
                    if is_x86_feature_detected!("avx512bw") {
                        k.push(Kernel::Avx512);
                    }
                }
            }
        }
        k
    }

    /// The kernel products use: the fastest available, or the one `SRCODE_QKERNEL` names
    /// (`portable`, `avx2`, `vnni`; for benchmarks) when this CPU can run it.
    pub fn current() -> Kernel {
        static K: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *K.get_or_init(|| {
            let avail = Kernel::available();
            let best = avail.last().copied().unwrap_or(Kernel::Portable);
            match std::env::var("SRCODE_QKERNEL").ok().as_deref() {
                None | Some("") => best,
                Some(name) => match avail.iter().find(|k| k.name() == name) {
                    Some(&k) => k,
                    None => {
                        tracing::warn!(
                            "SRCODE_QKERNEL={name}: not a kernel this CPU runs ({}); using {}",
                            avail
                                .iter()
                                .map(|k| k.name())
                                .collect::<Vec<_>>()
                                .join(", "),
                            best.name()
                        );
                        best
                    }
                },
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Vnni => "vnni",
            Kernel::Avx512 => "avx512",
        }
    }
}

/// `res[at..at + mm] = acc[..mm]`; a whole group is one fixed-size copy (a `memmove` call per
/// weight row was 3% of a batch-8 decode profile).
#[inline(always)]
fn store_rows(res: &mut [f32], at: usize, acc: &[f32; MAX_ROWS], mm: usize) {
    if mm == MAX_ROWS {
        for (d, &a) in res[at..at + MAX_ROWS].iter_mut().zip(acc) {
            *d = a;
        }
    } else {
        res[at..at + mm].copy_from_slice(&acc[..mm]);
    }
}

/// Products of a stripe of weight rows with all activation rows: `res[j * m + i]` is weight row
/// `j` of the stripe times activation row `i`.
fn stripe(kind: PackedKind, wrows: &[u8], acts: &Acts, m: usize, res: &mut [f32]) {
    stripe_with(Kernel::current(), kind, wrows, acts, m, res)
}

fn stripe_with(
    kernel: Kernel,
    kind: PackedKind,
    wrows: &[u8],
    acts: &Acts,
    m: usize,
    res: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match kernel {
        // SAFETY: `Kernel::available` detected the features; slices are sized by the caller.
        Kernel::Avx2 => return unsafe { avx2::stripe(kind, wrows, acts, m, res) },
        // SAFETY: as above.
        Kernel::Vnni => return unsafe { vnni::stripe(kind, wrows, acts, m, res) },
        // SAFETY: as above; `acts` was laid out for this kernel.
        Kernel::Avx512 if acts.paired => {
            return unsafe { avx512::stripe(kind, wrows, acts, m, res) }
        }
        // SAFETY: as above (Avx512 implies the VNNI features); too few rows for the lanes.
        Kernel::Avx512 => return unsafe { vnni::stripe(kind, wrows, acts, m, res) },
        Kernel::Portable => {}
    }
    let _ = kernel;
    let bpr = acts.bpr;
    let row_bytes = bpr * kind.block_bytes();
    for (j, wrow) in wrows.chunks(row_bytes).enumerate() {
        for m0 in (0..m).step_by(MAX_ROWS) {
            let mm = (m - m0).min(MAX_ROWS);
            let mut acc = [0f32; MAX_ROWS];
            dot_rows_portable(kind, wrow, acts.group(m0, mm).0, bpr, mm, &mut acc);
            store_rows(res, j * m + m0, &acc, mm);
        }
    }
}

fn dot_rows_portable(
    kind: PackedKind,
    wrow: &[u8],
    acts: &[ActBlock],
    bpr: usize,
    mm: usize,
    acc: &mut [f32; MAX_ROWS],
) {
    let bb = kind.block_bytes();
    for b in 0..bpr {
        let blk = &wrow[b * bb..(b + 1) * bb];
        for (i, a) in acc.iter_mut().enumerate().take(mm) {
            let ab = &acts[i * bpr + b];
            match kind {
                PackedKind::Q8_0 => {
                    let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                    let s: i32 = (0..QK)
                        .map(|j| blk[4 + j] as i8 as i32 * ab.q[j] as i32)
                        .sum();
                    *a += d * ab.d * s as f32;
                }
                PackedKind::Q4_1 => {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                    let mut s = 0i32;
                    for j in 0..16 {
                        s += (blk[4 + j] & 0x0F) as i32 * ab.q[j] as i32;
                        s += (blk[4 + j] >> 4) as i32 * ab.q[j + 16] as i32;
                    }
                    *a += d * ab.d * s as f32 + m * ab.s;
                }
            }
        }
    }
}

/// The x86 kernels, written once: `$features` are the target features of the module's
/// functions, and the module defines `dot_u8i8(w, a)`, the eight i32 sums of four
/// unsigned-times-signed byte products each.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    ($features:literal) => {
        use super::MAX_ROWS;
        use super::{ActBlock, Acts, PackedKind};
        use std::arch::x86_64::*;

        /// A stripe of weight rows: each weight block is unpacked once and applied to every
        /// activation row (up to `MAX_ROWS` at a time), so several sequences cost little more
        /// than one. (Interleaving several weight rows instead, re-unpacking each block per
        /// activation row, measured 15-30% slower.)
        #[target_feature(enable = $features)]
        pub(super) unsafe fn stripe(
            kind: PackedKind,
            wrows: &[u8],
            acts: &Acts,
            m: usize,
            res: &mut [f32],
        ) {
            let bpr = acts.bpr;
            let row_bytes = bpr * kind.block_bytes();
            let mut acc = [0f32; MAX_ROWS];
            for (j, wrow) in wrows.chunks_exact(row_bytes).enumerate() {
                let mut m0 = 0;
                while m0 < m {
                    let mm = (m - m0).min(MAX_ROWS);
                    if m >= super::LANE_MIN_ROWS {
                        let (lanes, ds, sums) = acts.group_lanes(m0);
                        match kind {
                            PackedKind::Q4_1 => lanes_q4_1(wrow, lanes, ds, sums, bpr, &mut acc),
                            PackedKind::Q8_0 => lanes_q8_0(wrow, lanes, ds, bpr, &mut acc),
                        }
                    } else {
                        let (blocks, sums) = acts.group(m0, mm);
                        dot_rows(kind, wrow, blocks, sums, bpr, mm, &mut acc);
                    }
                    super::store_rows(res, j * m + m0, &acc, mm);
                    m0 += mm;
                }
            }
        }

        /// A Q4_1 block's f16 scale and minimum, converted together (F16C) and broadcast.
        #[inline]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn q4_1_scale_min(blk: *const u8) -> (__m256, __m256) {
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            (
                _mm256_broadcastss_ps(dm),
                _mm256_broadcastss_ps(_mm_movehdup_ps(dm)),
            )
        }

        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }

        /// Dot products of one weight row with `mm` activation rows, fewer than
        /// `LANE_MIN_ROWS` (more take the lane kernels). Dispatches to a copy specialised for
        /// the row count, so the accumulators stay in
        /// registers (a loop over a run-time count kept them on the stack and ran the batch-8
        /// product at half speed).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot_rows(
            kind: PackedKind,
            wrow: &[u8],
            acts: &[ActBlock],
            sums: &[f32],
            bpr: usize,
            mm: usize,
            out: &mut [f32; MAX_ROWS],
        ) {
            match (kind, mm) {
                (PackedKind::Q4_1, 1) => dot_q4_1::<1>(wrow, acts, sums, bpr, out),
                (PackedKind::Q4_1, 2) => dot_q4_1::<2>(wrow, acts, sums, bpr, out),
                (PackedKind::Q8_0, 1) => dot_q8_0::<1>(wrow, acts, bpr, out),
                (PackedKind::Q8_0, 2) => dot_q8_0::<2>(wrow, acts, bpr, out),
                _ => unreachable!(
                    "row count {mm}: from {} rows on the lane kernels run",
                    super::LANE_MIN_ROWS
                ),
            }
        }

        #[inline]
        #[allow(clippy::needless_range_loop)] // `i` indexes accumulators and activation rows
        #[target_feature(enable = $features)]
        unsafe fn dot_q4_1<const N: usize>(
            wrow: &[u8],
            acts: &[ActBlock],
            sums: &[f32],
            bpr: usize,
            out: &mut [f32; MAX_ROWS],
        ) {
            let mask = _mm_set1_epi8(0x0F);
            let mut acc = [_mm256_setzero_ps(); N];
            // Lane `i` of `mins` gathers row `i`'s minimum term: one register whatever N.
            let mut mins = _mm256_setzero_ps();
            let wp = wrow.as_ptr();
            for b in 0..bpr {
                let blk = wp.add(b * 20);
                let (dv, mv) = q4_1_scale_min(blk);
                let raw = _mm_loadu_si128(blk.add(4) as *const __m128i);
                let lo = _mm_and_si128(raw, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                let w = _mm256_set_m128i(hi, lo);
                for i in 0..N {
                    let a = acts.get_unchecked(i * bpr + b);
                    let av = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
                    let p32 = dot_u8i8(w, av);
                    let scale = _mm256_mul_ps(dv, _mm256_broadcast_ss(&a.d));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), scale, acc[i]);
                }
                let sv = _mm256_loadu_ps(sums.as_ptr().add(b * MAX_ROWS));
                mins = _mm256_fmadd_ps(mv, sv, mins);
            }
            let mut mvs = [0f32; 8];
            _mm256_storeu_ps(mvs.as_mut_ptr(), mins);
            for i in 0..N {
                out[i] = hsum(acc[i]) + mvs[i];
            }
        }

        /// One Q4_1 weight row against a whole group of rows in [`Acts::lanes`] layout: per
        /// four weight bytes, one broadcast and one integer dot step for all eight rows, and
        /// one scaling per block instead of one per row.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn lanes_q4_1(
            wrow: &[u8],
            lanes: &[u8],
            ds: &[f32],
            sums: &[f32],
            bpr: usize,
            out: &mut [f32; MAX_ROWS],
        ) {
            let mask = _mm256_set1_epi8(0x0F);
            let mut acc = _mm256_setzero_ps();
            let mut mins = _mm256_setzero_ps();
            let wp = wrow.as_ptr();
            let lp = lanes.as_ptr();
            for b in 0..bpr {
                let blk = wp.add(b * 20);
                let (dv, mv) = q4_1_scale_min(blk);
                let l = lp.add(b * 256);
                let mut p = _mm256_setzero_si256();
                for g in 0..4 {
                    // Bytes 4g..4g+4 hold weights 4g.. (low nibbles) and 16+4g.. (high).
                    let r = _mm256_set1_epi32((blk.add(4 + 4 * g) as *const i32).read_unaligned());
                    let lo = _mm256_and_si256(r, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(r, 4), mask);
                    p = dot_acc(p, lo, _mm256_loadu_si256(l.add(g * 32) as *const __m256i));
                    p = dot_acc(
                        p,
                        hi,
                        _mm256_loadu_si256(l.add((g + 4) * 32) as *const __m256i),
                    );
                }
                let scale = _mm256_mul_ps(dv, _mm256_loadu_ps(ds.as_ptr().add(b * MAX_ROWS)));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc);
                let sv = _mm256_loadu_ps(sums.as_ptr().add(b * MAX_ROWS));
                mins = _mm256_fmadd_ps(mv, sv, mins);
            }
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, mins));
        }

        /// [`lanes_q4_1`] for Q8_0 weights (signed: `|w| · (a · sign w)`).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn lanes_q8_0(
            wrow: &[u8],
            lanes: &[u8],
            ds: &[f32],
            bpr: usize,
            out: &mut [f32; MAX_ROWS],
        ) {
            let mut acc = _mm256_setzero_ps();
            let wp = wrow.as_ptr();
            let lp = lanes.as_ptr();
            for b in 0..bpr {
                let blk = wp.add(b * 36);
                let d = (blk as *const f32).read_unaligned();
                let l = lp.add(b * 256);
                let mut p = _mm256_setzero_si256();
                for g in 0..8 {
                    let w = _mm256_set1_epi32((blk.add(4 + 4 * g) as *const i32).read_unaligned());
                    let a = _mm256_loadu_si256(l.add(g * 32) as *const __m256i);
                    p = dot_acc(p, _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
                }
                let scale = _mm256_mul_ps(
                    _mm256_set1_ps(d),
                    _mm256_loadu_ps(ds.as_ptr().add(b * MAX_ROWS)),
                );
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc);
            }
            _mm256_storeu_ps(out.as_mut_ptr(), acc);
        }

        #[inline]
        #[allow(clippy::needless_range_loop)] // `i` indexes accumulators and activation rows
        #[target_feature(enable = $features)]
        unsafe fn dot_q8_0<const N: usize>(
            wrow: &[u8],
            acts: &[ActBlock],
            bpr: usize,
            out: &mut [f32; MAX_ROWS],
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            let wp = wrow.as_ptr();
            for b in 0..bpr {
                let blk = wp.add(b * 36);
                let d = (blk as *const f32).read_unaligned();
                let w = _mm256_loadu_si256(blk.add(4) as *const __m256i);
                // Signed times signed as unsigned times signed: |w| · (a · sign w).
                let wabs = _mm256_sign_epi8(w, w);
                let dv = _mm256_set1_ps(d);
                for i in 0..N {
                    let a = acts.get_unchecked(i * bpr + b);
                    let av = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
                    let p32 = dot_u8i8(wabs, _mm256_sign_epi8(av, w));
                    let scale = _mm256_mul_ps(dv, _mm256_broadcast_ss(&a.d));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), scale, acc[i]);
                }
            }
            for i in 0..N {
                out[i] = hsum(acc[i]);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    x86_kernels!("avx2,fma,f16c");

    /// `maddubs` (byte pairs into saturating i16) then `madd` with ones. No pair saturates:
    /// weights are at most 15 (Q4_1) or 127 in magnitude (Q8_0), activations at most 127.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_u8i8(w: __m256i, a: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
    }

    /// `acc + dot_u8i8(w, a)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_acc(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_add_epi32(acc, dot_u8i8(w, a))
    }

    /// [`super::quantize_row_portable`] in AVX2, 32 values at a time. It rounds halves to even
    /// where the portable code rounds them away from zero, which changes a product by at most
    /// one activation step.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
        let sign = _mm256_set1_ps(-0.0);
        for (blk, xs) in out.iter_mut().zip(x.chunks_exact(super::QK)) {
            let p = xs.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let a = v.map(|x| _mm256_andnot_ps(sign, x));
            let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let q = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, id)));
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let total = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)));
            // i32 → i16 → i8 packs work per 128-bit lane; the permute restores the order.
            let w16a = _mm256_packs_epi32(q[0], q[1]);
            let w16b = _mm256_packs_epi32(q[2], q[3]);
            let w8 = _mm256_packs_epi16(w16a, w16b);
            let w8 = _mm256_permutevar8x32_epi32(w8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(blk.q.as_mut_ptr() as *mut __m256i, w8);
            blk.d = d;
            blk.s = d * total as f32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    x86_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni");

    /// One `vpdpbusd`: four byte products summed into each i32 lane, without saturation.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_u8i8(w: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
    }

    /// `acc + dot_u8i8(w, a)`, fused.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_acc(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, a)
    }
}

/// The 512-bit kernels for three activation rows or more, on [`Acts::lanes`] in the paired
/// layout: per eight weight bytes one broadcast (as a 64-bit word) and one `dpbusd` serve two
/// four-byte groups of all eight rows, where the 256-bit kernels need two of each. Lane `2r` of a
/// block's integer sums holds row `r`'s first group and lane `2r + 1` its second; the pairs are
/// added once per weight row, after the blocks.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Acts, PackedKind, MAX_ROWS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn stripe(
        kind: PackedKind,
        wrows: &[u8],
        acts: &Acts,
        m: usize,
        res: &mut [f32],
    ) {
        let bpr = acts.bpr;
        let row_bytes = bpr * kind.block_bytes();
        let mut acc = [0f32; MAX_ROWS];
        for (j, wrow) in wrows.chunks_exact(row_bytes).enumerate() {
            let mut m0 = 0;
            while m0 < m {
                let mm = (m - m0).min(MAX_ROWS);
                let (lanes, ds, sums) = acts.group_lanes(m0);
                match kind {
                    PackedKind::Q4_1 => q4_1(wrow, lanes, ds, sums, bpr, &mut acc),
                    PackedKind::Q8_0 => q8_0(wrow, lanes, ds, bpr, &mut acc),
                }
                super::store_rows(res, j * m + m0, &acc, mm);
                m0 += mm;
            }
        }
    }

    /// Adds lanes `2r` and `2r + 1` of `acc` into row `r` of `out` (plus `mins`, by row).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn fold_pairs(acc: __m512, mins: __m256, out: &mut [f32; MAX_ROWS]) {
        // Even lanes then odd lanes, each as eight rows.
        let idx_even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
        let idx_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
        let e = _mm512_castps512_ps256(_mm512_permutexvar_ps(idx_even, acc));
        let o = _mm512_castps512_ps256(_mm512_permutexvar_ps(idx_odd, acc));
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(_mm256_add_ps(e, o), mins));
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q4_1(
        wrow: &[u8],
        lanes: &[u8],
        ds: &[f32],
        sums: &[f32],
        bpr: usize,
        out: &mut [f32; MAX_ROWS],
    ) {
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = _mm512_setzero_ps();
        let mut mins = _mm256_setzero_ps();
        let wp = wrow.as_ptr();
        let lp = lanes.as_ptr();
        for b in 0..bpr {
            let blk = wp.add(b * 20);
            // The 256-bit kernels' header decode (the same target features and more).
            let (dv, mv) = super::vnni::q4_1_scale_min(blk);
            let l = lp.add(b * 256);
            let mut p = _mm512_setzero_si512();
            for h in 0..2 {
                // Bytes 8h..8h+8: low nibbles are weights 8h.. (pair h), high nibbles weights
                // 16+8h.. (pair 2+h).
                let r = _mm512_set1_epi64((blk.add(4 + 8 * h) as *const i64).read_unaligned());
                let lo = _mm512_and_si512(r, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16(r, 4), mask);
                p = _mm512_dpbusd_epi32(p, lo, _mm512_loadu_si512(l.add(h * 64) as *const _));
                p = _mm512_dpbusd_epi32(p, hi, _mm512_loadu_si512(l.add((h + 2) * 64) as *const _));
            }
            let scale = _mm512_mul_ps(
                _mm512_broadcastss_ps(_mm256_castps256_ps128(dv)),
                _mm512_loadu_ps(ds.as_ptr().add(b * 2 * MAX_ROWS)),
            );
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc);
            let sv = _mm256_loadu_ps(sums.as_ptr().add(b * MAX_ROWS));
            mins = _mm256_fmadd_ps(mv, sv, mins);
        }
        fold_pairs(acc, mins, out);
    }

    /// [`q4_1`] for Q8_0 weights: signed times signed as `|w| · (a · sign w)`, the sign moved
    /// onto the activations with a mask (AVX-512 has no `psignb`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q8_0(wrow: &[u8], lanes: &[u8], ds: &[f32], bpr: usize, out: &mut [f32; MAX_ROWS]) {
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_ps();
        let wp = wrow.as_ptr();
        let lp = lanes.as_ptr();
        for b in 0..bpr {
            let blk = wp.add(b * 36);
            let d = (blk as *const f32).read_unaligned();
            let l = lp.add(b * 256);
            let mut p = _mm512_setzero_si512();
            for q in 0..4 {
                let w = _mm512_set1_epi64((blk.add(4 + 8 * q) as *const i64).read_unaligned());
                let a = _mm512_loadu_si512(l.add(q * 64) as *const _);
                let neg = _mm512_movepi8_mask(w);
                let a = _mm512_mask_sub_epi8(a, neg, zero, a);
                p = _mm512_dpbusd_epi32(p, _mm512_abs_epi8(w), a);
            }
            let scale = _mm512_mul_ps(
                _mm512_set1_ps(d),
                _mm512_loadu_ps(ds.as_ptr().add(b * 2 * MAX_ROWS)),
            );
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc);
        }
        fold_pairs(acc, _mm256_setzero_ps(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn rand_tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn packed_products_match_dequantised_f32_products() {
        for kind in [PackedKind::Q4_1, PackedKind::Q8_0] {
            let w = rand_tensor(70, 96, 1);
            let p = PackedMatrix::quantize(&w, kind).unwrap();
            let wd = p.dequantize().unwrap();
            // Quantisation error of the weights themselves is bounded.
            let err = (&w - &wd)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                err < if kind == PackedKind::Q4_1 {
                    0.07
                } else {
                    0.005
                },
                "{kind:?} {err}"
            );
            for m in [1usize, 2, 3, 5, 8, 11] {
                let x = rand_tensor(m, 96, 2 + m as u64);
                let got = p.forward(&x).unwrap();
                let want = x.matmul(&wd.t().unwrap()).unwrap();
                let d = (&got - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                // Only the 8-bit rounding of the activations separates the two.
                assert!(d < 0.05, "{kind:?} m={m}: max difference {d}");
                // The specialised kernels agree with the portable one for every row count.
                let mm = m.min(MAX_ROWS);
                let xv = x.narrow(0, 0, mm).unwrap().flatten_all().unwrap();
                let xv = xv.to_vec1::<f32>().unwrap();
                let acts = Acts::quantize(&xv, 96, Kernel::Portable);
                let wrow = &p.data[..3 * kind.block_bytes()];
                let mut portable = [0f32; MAX_ROWS];
                dot_rows_portable(kind, wrow, &acts.blocks, 3, mm, &mut portable);
                for kernel in Kernel::available() {
                    let acts = Acts::quantize(&xv, 96, kernel);
                    let mut fast = vec![0f32; mm];
                    stripe_with(kernel, kind, wrow, &acts, mm, &mut fast);
                    for i in 0..mm {
                        assert!(
                            (portable[i] - fast[i]).abs() < 1e-3,
                            "{kind:?} {kernel:?} rows {mm}, row {i}: {} vs {}",
                            portable[i],
                            fast[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_activation_quantisation_matches_the_portable_one() {
        let x = rand_tensor(3, 96, 5)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let blank = ActBlock {
            d: 0.0,
            s: 0.0,
            q: [0; QK],
        };
        let mut want = vec![blank; 9];
        quantize_row_portable(&x, &mut want);
        let mut got = vec![blank; 9];
        quantize_row(&x, &mut got);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w.d, g.d);
            // Only ties round differently (to even rather than away from zero).
            assert!(w
                .q
                .iter()
                .zip(&g.q)
                .all(|(a, b)| (*a as i32 - *b as i32).abs() <= 1));
            let sum: i32 = g.q.iter().map(|&q| q as i32).sum();
            assert!((g.s - g.d * sum as f32).abs() < 1e-6);
        }
    }

    #[test]
    fn row_permutation_moves_whole_rows() {
        let w = rand_tensor(4, 64, 9);
        let p = PackedMatrix::quantize(&w, PackedKind::Q4_1).unwrap();
        let q = p.permute_rows(&[2, 0, 3, 1]).unwrap();
        let a = p.dequantize().unwrap();
        let b = q.dequantize().unwrap();
        assert_eq!(
            a.get(2).unwrap().to_vec1::<f32>().unwrap(),
            b.get(0).unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(p.permute_rows(&[0, 0, 1]).is_err());
        assert!(PackedMatrix::from_q4_1_bytes(4, 64, vec![0; 10]).is_err());
    }
}
