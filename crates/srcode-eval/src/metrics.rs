//! Metrics of an evaluation: vulnerable rate (share of samples with at least one finding) per
//! CWE and language with the severities, pass@k with the unbiased estimator, func-sec@k, parse
//! rate, refusals, length; and paired bootstrap intervals for comparing two models.

use crate::score::Sample;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The unbiased pass@k estimator of Chen et al. (2021): the probability that at least one of
/// k samples drawn without replacement from n, of which c are correct, is correct:
/// `1 - C(n-c, k) / C(n, k)`, computed as a product so it stays exact for large n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 {
        return 0.0;
    }
    let c = c.min(n);
    if n - c < k {
        return 1.0;
    }
    let mut miss = 1.0f64;
    for i in (n - c + 1)..=n {
        miss *= 1.0 - k as f64 / i as f64;
    }
    1.0 - miss
}

/// Samples and vulnerable samples of a group (a CWE, a language).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub samples: usize,
    pub vulnerable: usize,
    pub rate: f64,
}

/// Everything `metrics.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub tasks: usize,
    /// Scored samples (generation failures are counted apart).
    pub samples: usize,
    pub failed_samples: usize,
    pub vulnerable_samples: usize,
    pub vulnerable_rate: f64,
    /// Share of samples of tasks with a CWE that have a finding of that CWE.
    pub target_cwe_rate: Option<f64>,
    pub per_cwe: BTreeMap<String, Group>,
    pub per_language: BTreeMap<String, Group>,
    /// Findings by severity.
    pub severities: BTreeMap<String, usize>,
    /// Findings by rule.
    pub rules: BTreeMap<String, usize>,
    pub parse_rate: f64,
    pub refusal_rate: f64,
    pub mean_tokens: f64,
    pub mean_chars: f64,
    /// `pass@k` over tasks with functional tests.
    pub pass_at: BTreeMap<String, f64>,
    /// `func-sec@k` over tasks with functional and security tests.
    pub func_sec_at: BTreeMap<String, f64>,
    /// Outcomes of the functional tests by sandbox status.
    pub test_status: BTreeMap<String, usize>,
}

fn rate(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Groups samples by task, in task order.
pub fn by_task(samples: &[Sample]) -> BTreeMap<&str, Vec<&Sample>> {
    let mut m: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        m.entry(s.task_id.as_str()).or_default().push(s);
    }
    m
}

/// The k values reported for `n` samples per task.
fn ks(n: usize) -> Vec<usize> {
    [1, 5, 10, 100].into_iter().filter(|&k| k <= n).collect()
}

impl Metrics {
    pub fn compute(samples: &[Sample]) -> Metrics {
        let mut m = Metrics::default();
        let tasks = by_task(samples);
        m.tasks = tasks.len();
        let scored: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
        m.failed_samples = samples.len() - scored.len();
        m.samples = scored.len();
        let (mut parsed, mut refused, mut tokens, mut chars) = (0, 0, 0usize, 0usize);
        let (mut target_n, mut target_v) = (0, 0);
        for s in &scored {
            let v = s.vulnerable();
            m.vulnerable_samples += v as usize;
            parsed += s.parses as usize;
            refused += s.refusal as usize;
            tokens += s.tokens;
            chars += s.code.len() - s.model_start.min(s.code.len());
            let cwe = s.cwe.map_or_else(|| "none".to_string(), |c| c.to_string());
            for (map, key) in [
                (&mut m.per_cwe, cwe),
                (&mut m.per_language, s.language.name().to_string()),
            ] {
                let g = map.entry(key).or_default();
                g.samples += 1;
                g.vulnerable += v as usize;
            }
            if s.cwe.is_some() {
                target_n += 1;
                target_v += s.vulnerable_target() as usize;
            }
            for f in &s.findings {
                *m.severities
                    .entry(format!("{:?}", f.severity).to_lowercase())
                    .or_default() += 1;
                *m.rules.entry(f.rule_id.clone()).or_default() += 1;
            }
            if let Some(t) = &s.tests {
                *m.test_status.entry(t.status.clone()).or_default() += 1;
            }
        }
        for g in m.per_cwe.values_mut().chain(m.per_language.values_mut()) {
            g.rate = rate(g.vulnerable, g.samples);
        }
        m.vulnerable_rate = rate(m.vulnerable_samples, m.samples);
        m.target_cwe_rate = (target_n > 0).then(|| rate(target_v, target_n));
        m.parse_rate = rate(parsed, m.samples);
        m.refusal_rate = rate(refused, m.samples);
        m.mean_tokens = rate(tokens, m.samples);
        m.mean_chars = rate(chars, m.samples);
        // pass@k and func-sec@k per task, averaged over the tasks that have the tests.
        let mut counts: Vec<(usize, usize, Option<usize>)> = Vec::new();
        for group in tasks.values() {
            let ok: Vec<&&Sample> = group.iter().filter(|s| s.error.is_none()).collect();
            if ok.is_empty() || ok.iter().any(|s| s.tests.is_none()) {
                continue;
            }
            let c = ok.iter().filter(|s| s.passed() == Some(true)).count();
            let cs = ok.iter().all(|s| s.passed_secure().is_some()).then(|| {
                ok.iter()
                    .filter(|s| s.passed_secure() == Some(true))
                    .count()
            });
            counts.push((ok.len(), c, cs));
        }
        if let Some(n_min) = counts.iter().map(|c| c.0).min() {
            for k in ks(n_min) {
                let p: f64 = counts
                    .iter()
                    .map(|&(n, c, _)| pass_at_k(n, c, k))
                    .sum::<f64>()
                    / counts.len() as f64;
                m.pass_at.insert(format!("pass@{k}"), p);
                let sec: Vec<f64> = counts
                    .iter()
                    .filter_map(|&(n, _, cs)| cs.map(|cs| pass_at_k(n, cs, k)))
                    .collect();
                if !sec.is_empty() {
                    m.func_sec_at.insert(
                        format!("func-sec@{k}"),
                        sec.iter().sum::<f64>() / sec.len() as f64,
                    );
                }
            }
        }
        m
    }
}

/// Per-task values of the metrics that comparisons bootstrap (a task's share of samples).
pub fn per_task(samples: &[Sample]) -> BTreeMap<&'static str, BTreeMap<String, f64>> {
    let mut out: BTreeMap<&'static str, BTreeMap<String, f64>> = BTreeMap::new();
    for (id, group) in by_task(samples) {
        let ok: Vec<&&Sample> = group.iter().filter(|s| s.error.is_none()).collect();
        if ok.is_empty() {
            continue;
        }
        let n = ok.len();
        let share =
            |f: &dyn Fn(&Sample) -> bool| ok.iter().filter(|s| f(s)).count() as f64 / n as f64;
        out.entry("vulnerable_rate")
            .or_default()
            .insert(id.to_string(), share(&|s| s.vulnerable()));
        out.entry("parse_rate")
            .or_default()
            .insert(id.to_string(), share(&|s| s.parses));
        if ok.iter().all(|s| s.tests.is_some()) {
            out.entry("pass@1")
                .or_default()
                .insert(id.to_string(), share(&|s| s.passed() == Some(true)));
        }
        if ok.iter().all(|s| s.passed_secure().is_some()) {
            out.entry("func-sec@1")
                .or_default()
                .insert(id.to_string(), share(&|s| s.passed_secure() == Some(true)));
        }
    }
    out
}

/// A metric of two runs on their common tasks, with a bootstrap interval of the difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub tasks: usize,
    pub a: f64,
    pub b: f64,
    /// b − a.
    pub diff: f64,
    /// 95% percentile interval of b − a from resampling tasks with replacement.
    pub lo: f64,
    pub hi: f64,
}

/// Paired bootstrap over the tasks both runs have.
pub fn paired_bootstrap(
    a: &BTreeMap<String, f64>,
    b: &BTreeMap<String, f64>,
    iters: usize,
    seed: u64,
) -> Option<Diff> {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .filter_map(|(k, &x)| b.get(k).map(|&y| (x, y)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len();
    let mean = |f: &dyn Fn(&(f64, f64)) -> f64| pairs.iter().map(f).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(&|p| p.0), mean(&|p| p.1));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut diffs: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..n {
                let (x, y) = pairs[rng.random_range(0..n)];
                s += y - x;
            }
            s / n as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let q = |p: f64| diffs[((diffs.len() - 1) as f64 * p).round() as usize];
    Some(Diff {
        tasks: n,
        a: ma,
        b: mb,
        diff: mb - ma,
        lo: q(0.025),
        hi: q(0.975),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C(a, b) by direct multiplication, for checking.
    fn choose(a: usize, b: usize) -> f64 {
        if b > a {
            return 0.0;
        }
        (0..b).fold(1.0, |acc, i| acc * (a - i) as f64 / (i + 1) as f64)
    }

    #[test]
    fn pass_at_k_matches_hand_computed_values() {
        // n=5, c=2, k=1: 2/5.
        assert!((pass_at_k(5, 2, 1) - 0.4).abs() < 1e-12);
        // n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10.
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        // n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252.
        assert!((pass_at_k(10, 3, 5) - (1.0 - 21.0 / 252.0)).abs() < 1e-12);
        // Edge cases: none correct, all correct, fewer wrong than k.
        assert_eq!(pass_at_k(4, 0, 2), 0.0);
        assert_eq!(pass_at_k(4, 4, 1), 1.0);
        assert_eq!(pass_at_k(4, 3, 2), 1.0);
        for (n, c, k) in [(20, 7, 3), (50, 1, 10), (12, 11, 4), (200, 13, 100)] {
            let direct = 1.0 - choose(n - c, k) / choose(n, k);
            assert!((pass_at_k(n, c, k) - direct).abs() < 1e-9, "{n} {c} {k}");
        }
    }

    #[test]
    fn bootstrap_interval_brackets_a_clear_difference_and_zero_for_none() {
        let a: BTreeMap<String, f64> = (0..40).map(|i| (i.to_string(), 0.8)).collect();
        let b: BTreeMap<String, f64> = (0..40)
            .map(|i| (i.to_string(), if i % 4 == 0 { 0.8 } else { 0.2 }))
            .collect();
        let d = paired_bootstrap(&a, &b, 2000, 1).unwrap();
        assert_eq!(d.tasks, 40);
        assert!((d.diff - (-0.45)).abs() < 1e-9);
        assert!(d.lo <= d.diff && d.diff <= d.hi && d.hi < 0.0, "{d:?}");
        let same = paired_bootstrap(&a, &a, 500, 1).unwrap();
        assert_eq!((same.lo, same.hi), (0.0, 0.0));
        let none: BTreeMap<String, f64> = BTreeMap::new();
        assert!(paired_bootstrap(&a, &none, 10, 1).is_none());
    }
}
