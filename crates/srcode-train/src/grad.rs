//! Batching for the trainers: right-padded id batches, micro-batches under a token budget, and
//! gradient accumulation over them.

use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

/// Rows of `(ids, prompt_len)` right-padded with `pad` into a `[rows, longest]` tensor, and the
/// first position any row scores (the shortest prompt, at least 1).
pub fn right_padded(
    rows: &[(&[u32], usize)],
    pad: u32,
    device: &Device,
) -> Result<(Tensor, usize)> {
    let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let start = rows.iter().map(|r| r.1).min().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(rows.len() * len);
    for (r, _) in rows {
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad, len - r.len()));
    }
    Ok((Tensor::from_vec(ids, (rows.len(), len), device)?, start))
}

/// Adds the gradients of `g` for `params` into `acc` (which takes `g` whole the first time).
pub fn accumulate(
    params: &[(String, Var)],
    acc: &mut Option<GradStore>,
    g: GradStore,
) -> Result<()> {
    match acc {
        None => *acc = Some(g),
        Some(a) => {
            for (_, v) in params {
                if let Some(new) = g.get(v.as_tensor()) {
                    let sum = match a.get(v.as_tensor()) {
                        Some(old) => (old + new)?,
                        None => new.clone(),
                    };
                    a.insert(v.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

/// Splits `lens` (sequence lengths, in order) into consecutive groups whose padded size
/// (rows × longest) stays within `budget` tokens; a sequence longer than the budget is a group
/// of its own. Returns index ranges.
pub fn micro_batches(lens: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut longest) = (0, 0);
    for (i, &l) in lens.iter().enumerate() {
        let wide = longest.max(l);
        if i > start && (i - start + 1) * wide > budget {
            out.push(start..i);
            start = i;
            longest = l;
        } else {
            longest = wide;
        }
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_respect_the_padded_budget() {
        assert_eq!(micro_batches(&[100, 100, 100, 100], 250), vec![0..2, 2..4]);
        assert_eq!(micro_batches(&[100, 300, 50], 250), vec![0..1, 1..2, 2..3]);
        assert_eq!(micro_batches(&[10, 20, 30], 1000), vec![0..3]);
        assert!(micro_batches(&[], 10).is_empty());
    }
}
