//! The maths of SRCode's RL, on plain slices.
//!
//! Losses return their value *and* their derivative with respect to the quantity the model
//! produces (a token's log-probability, a value estimate). A trainer backpropagates through the
//! model with `sum(coefficient · logp)`, which gives exactly the gradient of the clipped
//! objective while the clipping logic lives in one place, here, tested against hand-computed
//! values.
//!
//! Conventions: one response is one episode; its tokens are `t = 0..T`; the episode ends after
//! the last token (EOS or the length limit), so `V_T = 0`.

use serde::{Deserialize, Serialize};

/// A slice length that does not match the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: expected {expected} values, got {got}")]
pub struct ShapeError {
    pub what: &'static str,
    pub expected: usize,
    pub got: usize,
}

fn same_len(what: &'static str, expected: usize, got: usize) -> Result<(), ShapeError> {
    if expected == got {
        Ok(())
    } else {
        Err(ShapeError {
            what,
            expected,
            got,
        })
    }
}

/// Estimators of the per-token KL divergence KL(π ‖ π_ref) from the log-probabilities of the
/// sampled token under the policy and the reference (Schulman's k1, k2, k3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `log π − log π_ref`: unbiased, can be negative per token.
    K1,
    /// `½ (log π − log π_ref)²`: biased, always ≥ 0, low variance.
    K2,
    /// `exp(log π_ref − log π) − (log π_ref − log π) − 1`: unbiased and ≥ 0.
    #[default]
    K3,
}

/// One token's KL estimate and its derivative with respect to `logp`.
pub fn kl(logp: f32, logp_ref: f32, est: KlEstimator) -> (f32, f32) {
    let d = logp - logp_ref;
    match est {
        KlEstimator::K1 => (d, 1.0),
        KlEstimator::K2 => (0.5 * d * d, d),
        KlEstimator::K3 => {
            let e = (-d).exp();
            (e + d - 1.0, 1.0 - e)
        }
    }
}

/// The entropy bonus's coefficient on `log π(x_t)` for a sampled token. On-policy,
/// `∇H = −E_x[log π(x) ∇log π(x)]` (the `+1` of `∇(p log p)` vanishes in expectation since
/// `Σ∇p = 0`), so the loss term `−c·H` is estimated per sampled token by
/// `c · log π(x_t) · ∇log π(x_t)`: the returned value multiplies `∇log π(x_t)`.
pub fn entropy_bonus_coef(logp_sampled: f32, coef: f32) -> f32 {
    coef * logp_sampled
}

/// The per-token reward stream of one response:
/// `r_t = token_reward_t − β·KL_t`, plus `instance` on the last token.
pub fn reward_stream(
    token_rewards: &[f32],
    kl: &[f32],
    beta: f32,
    instance: f32,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    same_len("kl", token_rewards.len(), kl.len())?;
    same_len("reward stream output", token_rewards.len(), out.len())?;
    for ((o, &r), &k) in out.iter_mut().zip(token_rewards).zip(kl) {
        *o = r - beta * k;
    }
    if let Some(last) = out.last_mut() {
        *last += instance;
    }
    Ok(())
}

/// Generalised advantage estimation over one response: `δ_t = r_t + γ V_{t+1} − V_t` with
/// `V_T = 0`, `A_t = δ_t + γλ A_{t+1}`, and the value targets `R_t = A_t + V_t`.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    gamma: f32,
    lambda: f32,
    advantages: &mut [f32],
    returns: &mut [f32],
) -> Result<(), ShapeError> {
    let n = rewards.len();
    same_len("values", n, values.len())?;
    same_len("advantages", n, advantages.len())?;
    same_len("returns", n, returns.len())?;
    let mut next_value = 0.0f32;
    let mut next_adv = 0.0f32;
    for t in (0..n).rev() {
        let delta = rewards[t] + gamma * next_value - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        advantages[t] = next_adv;
        returns[t] = next_adv + values[t];
        next_value = values[t];
    }
    Ok(())
}

/// One token's term of PPO's clipped surrogate objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surrogate {
    /// `−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)·A)`, to be minimised.
    pub loss: f32,
    /// `∂loss/∂logp`: `−ρA` where the unclipped term is the minimum, else 0.
    pub grad_logp: f32,
    /// `ρ = exp(logp − logp_old)`.
    pub ratio: f32,
    /// Whether the clipped term was the (strictly smaller) minimum: no gradient flows.
    pub clipped: bool,
}

/// PPO's clipped surrogate for one token with advantage `adv`. `eps_high > eps_low` gives the
/// asymmetric ("clip-higher") variant.
pub fn clipped_surrogate(
    logp: f32,
    logp_old: f32,
    adv: f32,
    eps_low: f32,
    eps_high: f32,
) -> Surrogate {
    let ratio = (logp - logp_old).exp();
    let unclipped = ratio * adv;
    let clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv;
    if clipped < unclipped {
        Surrogate {
            loss: -clipped,
            grad_logp: 0.0,
            ratio,
            clipped: true,
        }
    } else {
        Surrogate {
            loss: -unclipped,
            grad_logp: -unclipped,
            ratio,
            clipped: false,
        }
    }
}

/// One token's clipped value loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueLoss {
    /// `½ max((V − R)², (V_clip − R)²)` with `V_clip = V_old + clip(V − V_old, −ε, ε)`.
    pub loss: f32,
    /// `∂loss/∂V`.
    pub grad_v: f32,
    /// Whether the clipped term was the (strictly larger) maximum.
    pub clipped: bool,
}

/// PPO's clipped value loss for one token with value target `ret`.
pub fn clipped_value_loss(v: f32, v_old: f32, ret: f32, eps: f32) -> ValueLoss {
    let diff = v - v_old;
    let v_clip = v_old + diff.clamp(-eps, eps);
    let l_plain = (v - ret) * (v - ret);
    let l_clip = (v_clip - ret) * (v_clip - ret);
    if l_clip > l_plain {
        // V_clip depends on V only inside the clipping range.
        let grad = if diff.abs() < eps { v_clip - ret } else { 0.0 };
        ValueLoss {
            loss: 0.5 * l_clip,
            grad_v: grad,
            clipped: true,
        }
    } else {
        ValueLoss {
            loss: 0.5 * l_plain,
            grad_v: v - ret,
            clipped: false,
        }
    }
}

/// Group-relative normalisation of instance rewards for GRPO: consecutive groups of `group`
/// rewards (the rollouts of one prompt) become `(r − mean) / (std + eps)` (population std), or
/// `r − mean` when `scale_by_std` is false (Dr. GRPO). A group whose rewards are all equal gets
/// zeros: it carries no preference.
pub fn group_normalise(
    rewards: &[f32],
    group: usize,
    scale_by_std: bool,
    eps: f32,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    same_len("group advantages", rewards.len(), out.len())?;
    if group == 0 || rewards.len() % group != 0 {
        return Err(ShapeError {
            what: "rewards (a whole number of groups)",
            expected: group.max(1) * rewards.len().div_ceil(group.max(1)),
            got: rewards.len(),
        });
    }
    for (g, o) in rewards.chunks(group).zip(out.chunks_mut(group)) {
        let n = g.len() as f32;
        let mean = g.iter().sum::<f32>() / n;
        let var = g.iter().map(|r| (r - mean) * (r - mean)).sum::<f32>() / n;
        let scale = if var == 0.0 {
            0.0
        } else if scale_by_std {
            1.0 / (var.sqrt() + eps)
        } else {
            1.0
        };
        for (o, &r) in o.iter_mut().zip(g) {
            *o = (r - mean) * scale;
        }
    }
    Ok(())
}

/// GRPO advantages of one response's tokens with the token-level terms kept per token:
/// `A_t = Â + w · Σ_{k≥t} γ^{k−t} tokrew_k`, where `Â` is the response's group-normalised
/// instance advantage. `γ = 0` credits each token reward to its own token only; `γ = 1` is the
/// undiscounted reward-to-go. Summing the token rewards into the instance reward first (what
/// scalar-reward GRPO implementations do) would give every token the same advantage.
pub fn grpo_token_advantages(
    seq_advantage: f32,
    token_rewards: &[f32],
    weight: f32,
    gamma: f32,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    same_len("token advantages", token_rewards.len(), out.len())?;
    let mut to_go = 0.0f32;
    for t in (0..token_rewards.len()).rev() {
        to_go = token_rewards[t] + gamma * to_go;
        out[t] = seq_advantage + weight * to_go;
    }
    Ok(())
}

/// Whitens `x` in place to zero mean (unless `shift_mean` is false, which keeps the mean) and
/// unit variance. Fewer than two values are left as they are.
pub fn whiten(x: &mut [f32], shift_mean: bool) {
    if x.len() < 2 {
        return;
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let inv = 1.0 / (var + 1e-8).sqrt();
    for v in x.iter_mut() {
        let w = (f64::from(*v) - mean) * inv;
        *v = if shift_mean { w } else { w + mean } as f32;
    }
}

/// The adaptive KL controller of Ziegler et al. (2019): β moves towards keeping the measured
/// KL at `target`, by at most ±20% of `n_steps / horizon` per update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKl {
    pub beta: f32,
    pub target: f32,
    pub horizon: f32,
}

impl AdaptiveKl {
    pub fn update(&mut self, measured_kl: f32, n_steps: usize) {
        if !(measured_kl.is_finite() && self.target > 0.0 && self.horizon > 0.0) {
            return;
        }
        let err = (measured_kl / self.target - 1.0).clamp(-0.2, 0.2);
        self.beta *= 1.0 + err * n_steps as f32 / self.horizon;
    }
}

/// Entropy (nats) of the softmax of one row of logits.
pub fn entropy(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return 0.0;
    }
    let (mut z, mut s) = (0.0f64, 0.0f64);
    for &l in logits {
        let d = f64::from(l - max);
        let e = d.exp();
        z += e;
        s += e * d;
    }
    (z.ln() - s / z) as f32
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sampled_entropy_gradient_matches_the_exact_one() {
        // A categorical over 4 logits: E_x[entropy_bonus_coef(log p(x), 1) ∇_z log p(x)] must
        // equal −∇_z H (so the loss term −H descends to higher entropy), checked against
        // finite differences of H.
        let z = [0.3f64, -1.2, 2.0, 0.1];
        let probs = |z: &[f64]| {
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect::<Vec<f64>>()
        };
        let entropy = |z: &[f64]| -> f64 { probs(z).iter().map(|p| -p * p.ln()).sum() };
        let p = probs(&z);
        for j in 0..4 {
            // ∂ log p(x) / ∂ z_j = [x == j] − p_j.
            let est: f64 = (0..4)
                .map(|x| {
                    let g = if x == j { 1.0 } else { 0.0 } - p[j];
                    p[x] * f64::from(entropy_bonus_coef(p[x].ln() as f32, 1.0)) * g
                })
                .sum();
            let h = 1e-5;
            let mut zp = z;
            zp[j] += h;
            let mut zm = z;
            zm[j] -= h;
            let dh = (entropy(&zp) - entropy(&zm)) / (2.0 * h);
            assert!((est + dh).abs() < 1e-5, "logit {j}: {est} vs −{dh}");
        }
    }

    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    fn all_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!(close(*x, *y), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn kl_estimators_by_hand() {
        // logp = ln 0.5, logp_ref = ln 0.25: d = ln 2.
        let (lp, lr) = (0.5f32.ln(), 0.25f32.ln());
        let d = 2f32.ln();
        let (k1, g1) = kl(lp, lr, KlEstimator::K1);
        assert!(close(k1, d) && close(g1, 1.0));
        let (k2, g2) = kl(lp, lr, KlEstimator::K2);
        assert!(close(k2, 0.5 * d * d) && close(g2, d));
        // k3 = π_ref/π − ln(π_ref/π) − 1 = 0.5 + ln 2 − 1.
        let (k3, g3) = kl(lp, lr, KlEstimator::K3);
        assert!(close(k3, 0.5 + d - 1.0), "{k3}");
        assert!(close(g3, 1.0 - 0.5), "{g3}");
        // Same distribution: zero, and k3 is never negative.
        assert_eq!(kl(-1.0, -1.0, KlEstimator::K3).0, 0.0);
        assert!(kl(-3.0, -0.5, KlEstimator::K3).0 > 0.0);
        // Derivatives agree with finite differences.
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let h = 1e-3f32;
            let num = (kl(-1.0 + h, -1.7, est).0 - kl(-1.0 - h, -1.7, est).0) / (2.0 * h);
            assert!((num - kl(-1.0, -1.7, est).1).abs() < 1e-3, "{est:?}");
        }
    }

    #[test]
    fn reward_stream_by_hand() {
        let mut out = [0.0; 3];
        reward_stream(&[0.0, -1.0, 0.5], &[0.2, 0.0, -0.4], 0.5, 2.0, &mut out).unwrap();
        all_close(&out, &[-0.1, -1.0, 0.5 + 0.2 + 2.0]);
        let e = reward_stream(&[0.0; 3], &[0.0; 2], 0.1, 0.0, &mut out).unwrap_err();
        assert_eq!((e.expected, e.got), (3, 2));
        let mut empty: [f32; 0] = [];
        reward_stream(&[], &[], 0.1, 1.0, &mut empty).unwrap();
    }

    #[test]
    fn gae_by_hand() {
        let (mut a, mut r) = ([0.0; 3], [0.0; 3]);
        // γ = λ = 1: advantages are returns-to-go minus values.
        gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 1.0, 1.0, &mut a, &mut r).unwrap();
        all_close(&a, &[0.5, 0.8, 0.9]);
        all_close(&r, &[1.0, 1.0, 1.0]);
        // γ = 0.9, λ = 0.5: δ = (−0.32, −0.11, 0.9); A2 = 0.9, A1 = −0.11 + 0.45·0.9,
        // A0 = −0.32 + 0.45·A1.
        gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 0.9, 0.5, &mut a, &mut r).unwrap();
        all_close(&a, &[-0.18725, 0.295, 0.9]);
        all_close(&r, &[0.31275, 0.495, 1.0]);
        // λ = 0: one-step TD errors.
        gae(&[1.0, 2.0], &[0.0, 0.0], 0.5, 0.0, &mut a[..2], &mut r[..2]).unwrap();
        all_close(&a[..2], &[1.0, 2.0]);
    }

    #[test]
    fn clipped_surrogate_by_hand() {
        let lp = 1.5f32.ln();
        // Positive advantage above the clip range: clipped, no gradient.
        let s = clipped_surrogate(lp, 0.0, 2.0, 0.2, 0.2);
        assert!(close(s.ratio, 1.5) && close(s.loss, -2.4) && s.clipped);
        assert_eq!(s.grad_logp, 0.0);
        // Negative advantage: the unclipped (worse) term is kept; ∂(−ρA)/∂logp = −ρA.
        let s = clipped_surrogate(lp, 0.0, -2.0, 0.2, 0.2);
        assert!(close(s.loss, 3.0) && !s.clipped && close(s.grad_logp, 3.0));
        // Inside the range: plain policy gradient.
        let s = clipped_surrogate(1.1f32.ln(), 0.0, 1.0, 0.2, 0.2);
        assert!(close(s.loss, -1.1) && close(s.grad_logp, -1.1) && !s.clipped);
        // Clip-higher: 1.5 lies inside [0.8, 1.6].
        let s = clipped_surrogate(lp, 0.0, 2.0, 0.2, 0.6);
        assert!(close(s.loss, -3.0) && !s.clipped);
        // Below the range with a negative advantage: clipped.
        let s = clipped_surrogate(0.5f32.ln(), 0.0, -1.0, 0.2, 0.2);
        assert!(close(s.loss, 0.8) && s.clipped && s.grad_logp == 0.0);
    }

    #[test]
    fn clipped_value_loss_by_hand() {
        // V moved 0.5 from V_old, ε = 0.2: V_clip = 0.7 is further from R = 2.
        let v = clipped_value_loss(1.0, 0.5, 2.0, 0.2);
        assert!(close(v.loss, 0.5 * 1.69) && v.clipped && v.grad_v == 0.0);
        // Inside the range the two agree: plain squared error.
        let v = clipped_value_loss(0.6, 0.5, 2.0, 0.2);
        assert!(close(v.loss, 0.98) && !v.clipped && close(v.grad_v, -1.4));
        // Moving away from the target: the plain term is larger and keeps its gradient.
        let v = clipped_value_loss(-0.5, 0.5, 2.0, 0.2);
        assert!(close(v.loss, 3.125) && !v.clipped && close(v.grad_v, -2.5));
        // Overshooting the target: the clipped value (0.7) is further from R, no gradient.
        let v = clipped_value_loss(3.0, 0.5, 2.0, 0.2);
        assert!(close(v.loss, 0.845) && v.clipped && v.grad_v == 0.0);
    }

    #[test]
    fn group_normalisation_by_hand() {
        let mut out = [0.0; 6];
        group_normalise(&[1.0, 0.0, 0.0, 1.0, 3.0, 3.0], 2, true, 0.0, &mut out).unwrap();
        all_close(&out, &[1.0, -1.0, -1.0, 1.0, 0.0, 0.0]);
        let mut out = [0.0; 3];
        group_normalise(&[2.0, 4.0, 6.0], 3, false, 1e-6, &mut out).unwrap();
        all_close(&out, &[-2.0, 0.0, 2.0]);
        // [2, 4, 6]: population std √(8/3).
        group_normalise(&[2.0, 4.0, 6.0], 3, true, 0.0, &mut out).unwrap();
        let s = (8.0f32 / 3.0).sqrt();
        all_close(&out, &[-2.0 / s, 0.0, 2.0 / s]);
        assert!(group_normalise(&[1.0; 5], 2, true, 0.0, &mut [0.0; 5]).is_err());
        assert!(group_normalise(&[1.0; 4], 0, true, 0.0, &mut [0.0; 4]).is_err());
    }

    #[test]
    fn grpo_keeps_token_terms_per_token() {
        let mut out = [0.0; 4];
        // γ = 0: each token reward stays on its token.
        grpo_token_advantages(0.5, &[0.0, -1.0, 0.0, 2.0], 0.5, 0.0, &mut out).unwrap();
        all_close(&out, &[0.5, 0.0, 0.5, 1.5]);
        // γ = 1: reward-to-go.
        grpo_token_advantages(0.5, &[0.0, -1.0, 0.0, 2.0], 0.5, 1.0, &mut out).unwrap();
        all_close(&out, &[1.0, 1.0, 1.5, 1.5]);
        // γ = 0.5: to-go = (0.25·2 − 0.5·1 ... ) by hand: t3 = 2, t2 = 1, t1 = −0.5, t0 = −0.25.
        grpo_token_advantages(0.0, &[0.0, -1.0, 0.0, 2.0], 1.0, 0.5, &mut out).unwrap();
        all_close(&out, &[-0.25, -0.5, 1.0, 2.0]);
    }

    #[test]
    fn whitening_and_adaptive_kl_by_hand() {
        let mut x = [1.0, 2.0, 3.0, 4.0];
        whiten(&mut x, true);
        // mean 2.5, population std √1.25.
        let s = 1.25f32.sqrt();
        all_close(&x, &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]);
        let mut y = [1.0, 2.0, 3.0, 4.0];
        whiten(&mut y, false);
        all_close(
            &y,
            &[2.5 - 1.5 / s, 2.5 - 0.5 / s, 2.5 + 0.5 / s, 2.5 + 1.5 / s],
        );
        let mut one = [7.0];
        whiten(&mut one, true);
        assert_eq!(one, [7.0]);

        let mut c = AdaptiveKl {
            beta: 0.1,
            target: 6.0,
            horizon: 10_000.0,
        };
        c.update(12.0, 256); // error clipped to +0.2
        assert!(close(c.beta, 0.1 * (1.0 + 0.2 * 256.0 / 10_000.0)));
        let b = c.beta;
        c.update(5.4, 1000); // error −0.1
        assert!(close(c.beta, b * (1.0 - 0.1 * 0.1)));
        c.update(f32::NAN, 10);
        assert!(close(c.beta, b * 0.99));
    }

    #[test]
    fn entropy_by_hand() {
        assert!(close(entropy(&[0.0, 0.0, 0.0, 0.0]), 4f32.ln()));
        assert!(entropy(&[100.0, 0.0, 0.0]) < 1e-6);
        // p = (0.5, 0.25, 0.25): H = 1.5 ln 2.
        let l = [0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()];
        assert!(close(entropy(&l), 1.5 * 2f32.ln()));
    }
}
