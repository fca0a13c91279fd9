//! Measures the analyser on vulnerable/fixed function pairs (SVEN's `func_src_before` /
//! `func_src_after`): how often each side is flagged, per CWE. A useful analyser flags the
//! vulnerable versions more often than the fixed ones.

use crate::engine::Scanner;
use crate::error::{Result, ScanError};
use crate::lang;
use serde::Deserialize;
use srcode_core::{Cwe, Language};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One vulnerable/fixed pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cwe: Cwe,
    pub lang: Language,
    pub vulnerable: String,
    pub fixed: String,
}

#[derive(Deserialize)]
struct SvenRecord {
    func_src_before: String,
    func_src_after: String,
    vul_type: String,
    file_name: String,
}

/// Reads every `*.jsonl` of a SVEN split directory. Records in languages srcode does not parse
/// are skipped; a malformed line is an error naming file and line.
pub fn load_sven(dir: &Path) -> Result<Vec<Pair>> {
    let io = |p: &Path, e| ScanError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| io(&f, e))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: SvenRecord = serde_json::from_str(line).map_err(|e| ScanError::External {
                tool: "sven".into(),
                message: format!("{}:{}: {e}", f.display(), i + 1),
            })?;
            let Some(lang) = lang::from_path(Path::new(&r.file_name)) else {
                continue;
            };
            let cwe = r.vul_type.parse::<Cwe>().map_err(|e| ScanError::External {
                tool: "sven".into(),
                message: format!("{}:{}: {e}", f.display(), i + 1),
            })?;
            out.push(Pair {
                cwe,
                lang,
                vulnerable: r.func_src_before,
                fixed: r.func_src_after,
            });
        }
    }
    Ok(out)
}

/// Counts for one CWE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairCounts {
    pub pairs: usize,
    /// Vulnerable versions with at least one finding.
    pub vulnerable_flagged: usize,
    /// Fixed versions with at least one finding.
    pub fixed_flagged: usize,
    /// Pairs where the vulnerable version has more findings than the fixed one.
    pub fewer_after_fix: usize,
}

impl PairCounts {
    fn add(&mut self, o: &PairCounts) {
        self.pairs += o.pairs;
        self.vulnerable_flagged += o.vulnerable_flagged;
        self.fixed_flagged += o.fixed_flagged;
        self.fewer_after_fix += o.fewer_after_fix;
    }
    /// Share of vulnerable versions flagged minus share of fixed versions flagged.
    pub fn gap(&self) -> f64 {
        if self.pairs == 0 {
            return 0.0;
        }
        (self.vulnerable_flagged as f64 - self.fixed_flagged as f64) / self.pairs as f64
    }
}

/// Per-CWE counts and their total, and the same per rule: a rule that fires as often on the
/// fixed versions as on the vulnerable ones is noise to a reward built on it.
#[derive(Debug, Clone, Default)]
pub struct PairReport {
    pub by_cwe: BTreeMap<Cwe, PairCounts>,
    pub total: PairCounts,
    /// Counts of the pairs where the rule fired on either side (`pairs` is that number).
    pub by_rule: BTreeMap<String, PairCounts>,
}

/// Findings per rule id.
fn per_rule(findings: &[srcode_core::Finding]) -> BTreeMap<&str, usize> {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for f in findings {
        *m.entry(f.rule_id.as_str()).or_default() += 1;
    }
    m
}

/// Scans both sides of every pair.
pub fn evaluate(scanner: &Scanner, pairs: &[Pair]) -> Result<PairReport> {
    let mut rep = PairReport::default();
    for p in pairs {
        let vf = scanner.scan_code(p.vulnerable.as_bytes(), p.lang, "")?;
        let ff = scanner.scan_code(p.fixed.as_bytes(), p.lang, "")?;
        let counts = |v: usize, f: usize| PairCounts {
            pairs: 1,
            vulnerable_flagged: usize::from(v > 0),
            fixed_flagged: usize::from(f > 0),
            fewer_after_fix: usize::from(v > f),
        };
        let c = counts(vf.len(), ff.len());
        rep.by_cwe.entry(p.cwe).or_default().add(&c);
        rep.total.add(&c);
        let (vr, fr) = (per_rule(&vf), per_rule(&ff));
        let rules: BTreeSet<&str> = vr.keys().chain(fr.keys()).copied().collect();
        for rule in rules {
            let v = vr.get(rule).copied().unwrap_or(0);
            let f = fr.get(rule).copied().unwrap_or(0);
            rep.by_rule
                .entry(rule.to_string())
                .or_default()
                .add(&counts(v, f));
        }
    }
    Ok(rep)
}

impl PairReport {
    /// A Markdown table: one row per CWE and a total row.
    pub fn markdown(&self) -> String {
        let pct = |n: usize, d: usize| {
            if d == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * n as f64 / d as f64)
            }
        };
        let row = |name: &str, c: &PairCounts| {
            format!(
                "| {name} | {} | {} ({}) | {} ({}) | {:+.0} pts | {} |\n",
                c.pairs,
                c.vulnerable_flagged,
                pct(c.vulnerable_flagged, c.pairs),
                c.fixed_flagged,
                pct(c.fixed_flagged, c.pairs),
                100.0 * c.gap(),
                c.fewer_after_fix,
            )
        };
        let mut s = String::from(
            "| CWE | pairs | vulnerable flagged | fixed flagged | gap | fewer findings after fix |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for (cwe, c) in &self.by_cwe {
            s.push_str(&row(&cwe.to_string(), c));
        }
        s.push_str(&row("**all**", &self.total));
        s
    }

    /// A Markdown table with one row per rule that fired on either side of some pair.
    pub fn markdown_by_rule(&self) -> String {
        let mut s = String::from(
            "| rule | pairs | vulnerable flagged | fixed flagged | more findings in vulnerable |\n|---|---:|---:|---:|---:|\n",
        );
        for (rule, c) in &self.by_rule {
            s.push_str(&format!(
                "| {rule} | {} | {} | {} | {} |\n",
                c.pairs, c.vulnerable_flagged, c.fixed_flagged, c.fewer_after_fix
            ));
        }
        s
    }
}
