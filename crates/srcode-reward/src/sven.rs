//! The hunk-reward check on vulnerable/fixed pairs: each version of a function is rewarded as a
//! completion (with the pair's own patterns), and the mean per-token reward over the tokens of
//! its changed hunks is compared. Used by the test suite and the `sven_rewards` example.

use crate::align::{tokens_covering, TokenSpan};
use crate::reference::RepairPattern;
use crate::{RewardEngine, RewardError, RewardInput};
use srcode_core::{Cwe, Span};
use srcode_scan::pairs::Pair;
use std::collections::BTreeMap;

/// Per-CWE means of the hunk-token reward.
#[derive(Debug, Clone, Default)]
pub struct HunkReport {
    /// CWE → (pairs used, pairs skipped, mean over fixed hunks, mean over vulnerable hunks).
    pub by_cwe: BTreeMap<Cwe, (usize, usize, f64, f64)>,
}

impl HunkReport {
    /// CWEs where fixed hunks earn more than vulnerable ones, and CWEs with any pair used.
    pub fn wins(&self) -> (usize, usize) {
        let used: Vec<_> = self.by_cwe.values().filter(|v| v.0 > 0).collect();
        (used.iter().filter(|v| v.2 > v.3).count(), used.len())
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| CWE | pairs used | skipped (no specific hunk) | mean reward, fixed hunks | mean reward, vulnerable hunks | fixed higher |\n|---|---:|---:|---:|---:|:---:|\n",
        );
        for (c, (n, k, f, v)) in &self.by_cwe {
            s.push_str(&format!(
                "| {c} | {n} | {k} | {f:+.3} | {v:+.3} | {} |\n",
                if f > v { "yes" } else { "no" }
            ));
        }
        let (w, t) = self.wins();
        s.push_str(&format!("\nfixed hunks earn more in {w} of {t} CWEs\n"));
        s
    }
}

fn mean_over(per_token: &[f32], tokens: &[TokenSpan], hunks: &[Span]) -> Option<f64> {
    let mut seen = vec![false; tokens.len()];
    for h in hunks {
        for t in tokens_covering(tokens, *h) {
            seen[t] = true;
        }
    }
    let (sum, n) = seen
        .iter()
        .zip(per_token)
        .filter(|(s, _)| **s)
        .fold((0f64, 0usize), |(a, n), (_, &r)| (a + f64::from(r), n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Runs the check. `tokenize` returns the byte range of each token of a text.
pub fn hunk_rewards(
    engine: &RewardEngine,
    pairs: &[Pair],
    tokenize: &dyn Fn(&str) -> Vec<TokenSpan>,
) -> Result<HunkReport, RewardError> {
    let n = engine.config().reference.ngram;
    let mut acc: BTreeMap<Cwe, (usize, usize, f64, f64)> = BTreeMap::new();
    for p in pairs {
        let e = acc.entry(p.cwe).or_default();
        let Ok(pat) = RepairPattern::new(&p.vulnerable, &p.fixed, p.lang, n) else {
            e.1 += 1;
            continue;
        };
        let score = |code: &str, hunks: &[Span]| -> Result<Option<f64>, RewardError> {
            let toks = tokenize(code);
            let r = engine.reward(&RewardInput {
                completion: code,
                tokens: &toks,
                lang: p.lang,
                pair: Some(&pat),
                reference_len: None,
                function_name: None,
                tests: None,
            })?;
            Ok(mean_over(&r.per_token, &toks, hunks))
        };
        let (Some(f), Some(v)) = (
            score(&p.fixed, &pat.fixed_hunks)?,
            score(&p.vulnerable, &pat.vulnerable_hunks)?,
        ) else {
            e.1 += 1;
            continue;
        };
        e.0 += 1;
        e.2 += f;
        e.3 += v;
    }
    for v in acc.values_mut() {
        if v.0 > 0 {
            v.2 /= v.0 as f64;
            v.3 /= v.0 as f64;
        }
    }
    Ok(HunkReport { by_cwe: acc })
}
