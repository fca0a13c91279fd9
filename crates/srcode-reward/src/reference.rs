//! The repair-reference reward. From a vulnerable/fixed pair, the lexemes that changed (a
//! token-level diff on normalised lexemes, like SVEN's and SafeCoder's changed-token masks) are
//! the security-relevant hunks. Their n-grams that occur on one side only are the patterns: a
//! rollout that reproduces a *secure* n-gram (the added bounds check, the parameter tuple of a
//! parameterised query) is rewarded there, one that reproduces a *vulnerable* n-gram is
//! penalised there. Matching runs on normalised lexemes, so it follows the pattern through
//! renamed variables, other literals and reformatting.

use crate::lex::{lex, Lexeme};
use similar::{capture_diff_slices, Algorithm, DiffOp};
use srcode_core::{Language, Span};
use std::collections::{HashMap, HashSet};

/// Why a pair yields no pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPattern {
    /// The two versions normalise to the same lexemes (a rename, a comment, a literal).
    NothingChanged,
    /// No lexeme is shared: the "fix" rewrote everything, so no hunk is specific.
    EverythingChanged,
    /// The changes yield no n-gram that is specific to one side.
    NoSpecificNgram,
}

/// Patterns learnt from one repair pair.
#[derive(Debug, Clone)]
pub struct RepairPattern {
    pub lang: Language,
    n: usize,
    vocab: HashMap<String, u32>,
    secure: HashSet<u64>,
    vulnerable: HashSet<u64>,
    /// Byte spans of the changed lexemes in the vulnerable and the fixed version.
    pub vulnerable_hunks: Vec<Span>,
    pub fixed_hunks: Vec<Span>,
}

/// Lexemes of one rollout that reproduce a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternHits {
    /// Byte spans reproducing secure n-grams.
    pub secure: Vec<Span>,
    /// Byte spans reproducing vulnerable n-grams.
    pub vulnerable: Vec<Span>,
}

fn key(ids: &[u32]) -> u64 {
    // FNV-1a over the ids: n-grams are short and the set is per pair.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &id in ids {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(l) if s.start <= l.end => l.end = l.end.max(s.end),
            _ => out.push(s),
        }
    }
    out
}

impl RepairPattern {
    /// Learns the patterns of a pair, with n-grams of `n` lexemes (3 is a good default).
    pub fn new(vulnerable: &str, fixed: &str, lang: Language, n: usize) -> Result<Self, NoPattern> {
        let n = n.max(1);
        let va = lex(vulnerable.as_bytes(), lang);
        let fa = lex(fixed.as_bytes(), lang);
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut intern = |l: &Lexeme| {
            let next = vocab.len() as u32;
            *vocab.entry(l.norm.clone()).or_insert(next)
        };
        let vi: Vec<u32> = va.iter().map(&mut intern).collect();
        let fi: Vec<u32> = fa.iter().map(&mut intern).collect();
        let ops = capture_diff_slices(Algorithm::Myers, &vi, &fi);
        let mut v_changed = vec![false; vi.len()];
        let mut f_changed = vec![false; fi.len()];
        let mut shared = 0;
        for op in &ops {
            match *op {
                DiffOp::Equal { len, .. } => shared += len,
                DiffOp::Delete {
                    old_index, old_len, ..
                } => v_changed[old_index..old_index + old_len].fill(true),
                DiffOp::Insert {
                    new_index, new_len, ..
                } => f_changed[new_index..new_index + new_len].fill(true),
                DiffOp::Replace {
                    old_index,
                    old_len,
                    new_index,
                    new_len,
                } => {
                    v_changed[old_index..old_index + old_len].fill(true);
                    f_changed[new_index..new_index + new_len].fill(true);
                }
            }
        }
        if !v_changed.contains(&true) && !f_changed.contains(&true) {
            return Err(NoPattern::NothingChanged);
        }
        if shared == 0 {
            return Err(NoPattern::EverythingChanged);
        }
        let grams = |ids: &[u32]| -> HashSet<u64> {
            if ids.len() < n {
                return HashSet::from([key(ids)]);
            }
            ids.windows(n).map(key).collect()
        };
        let v_all = grams(&vi);
        let f_all = grams(&fi);
        // n-grams touching a changed lexeme and absent from the other side.
        let specific = |ids: &[u32], changed: &[bool], other: &HashSet<u64>| -> HashSet<u64> {
            let mut out = HashSet::new();
            if ids.len() < n {
                if changed.contains(&true) && !other.contains(&key(ids)) {
                    out.insert(key(ids));
                }
                return out;
            }
            for (p, w) in ids.windows(n).enumerate() {
                if changed[p..p + n].contains(&true) {
                    let k = key(w);
                    if !other.contains(&k) {
                        out.insert(k);
                    }
                }
            }
            out
        };
        let secure = specific(&fi, &f_changed, &v_all);
        let vulnerable_set = specific(&vi, &v_changed, &f_all);
        if secure.is_empty() && vulnerable_set.is_empty() {
            return Err(NoPattern::NoSpecificNgram);
        }
        let hunks = |lx: &[Lexeme], changed: &[bool]| {
            merge(
                lx.iter()
                    .zip(changed)
                    .filter(|(_, &c)| c)
                    .map(|(l, _)| Span::new(l.start, l.end))
                    .collect(),
            )
        };
        Ok(RepairPattern {
            lang,
            n,
            vulnerable_hunks: hunks(&va, &v_changed),
            fixed_hunks: hunks(&fa, &f_changed),
            vocab,
            secure,
            vulnerable: vulnerable_set,
        })
    }

    /// Number of secure and vulnerable n-grams.
    pub fn sizes(&self) -> (usize, usize) {
        (self.secure.len(), self.vulnerable.len())
    }

    /// Spans of `code` (offsets into `code`, shifted by `base`) that reproduce the pair's
    /// secure or vulnerable n-grams.
    pub fn hits(&self, code: &[u8], base: usize) -> PatternHits {
        let lx = lex(code, self.lang);
        let ids: Vec<u32> = lx
            .iter()
            .map(|l| self.vocab.get(&l.norm).copied().unwrap_or(u32::MAX))
            .collect();
        let mut hits = PatternHits::default();
        let n = self.n.min(ids.len());
        if n == 0 {
            return hits;
        }
        for (p, w) in ids.windows(n).enumerate() {
            if w.contains(&u32::MAX) {
                continue;
            }
            let k = key(w);
            let span = Span::new(base + lx[p].start, base + lx[p + n - 1].end);
            if self.secure.contains(&k) {
                hits.secure.push(span);
            }
            if self.vulnerable.contains(&k) {
                hits.vulnerable.push(span);
            }
        }
        hits.secure = merge(hits.secure);
        hits.vulnerable = merge(hits.vulnerable);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VULN: &str = "void f(char *s) {\n  char buf[16];\n  strcpy(buf, s);\n  puts(buf);\n}\n";
    const FIXED: &str = "void f(char *s) {\n  char buf[16];\n  strncpy(buf, s, sizeof(buf) - 1);\n  buf[15] = 0;\n  puts(buf);\n}\n";

    #[test]
    fn hunks_are_the_changed_lexemes() {
        let p = RepairPattern::new(VULN, FIXED, Language::C, 3).unwrap();
        let v: Vec<&str> = p
            .vulnerable_hunks
            .iter()
            .filter_map(|s| s.slice(VULN))
            .collect();
        assert_eq!(v, ["strcpy"]);
        let f: Vec<&str> = p
            .fixed_hunks
            .iter()
            .filter_map(|s| s.slice(FIXED))
            .collect();
        assert!(f.contains(&"strncpy"), "{f:?}");
        assert!(f.iter().any(|h| h.contains("sizeof")), "{f:?}");
    }

    #[test]
    fn a_rollout_with_renamed_variables_still_hits_the_secure_pattern() {
        let p = RepairPattern::new(VULN, FIXED, Language::C, 3).unwrap();
        let roll = "int copy(const char *input) { char out[32]; strncpy(out, input, sizeof(out) - 1); return 0; }";
        let h = p.hits(roll.as_bytes(), 0);
        assert!(!h.secure.is_empty(), "{h:?}");
        assert!(h.vulnerable.is_empty(), "{h:?}");
        assert!(h
            .secure
            .iter()
            .any(|s| s.slice(roll).is_some_and(|t| t.contains("strncpy"))));
        let bad = "int copy(const char *input) { char out[32]; strcpy(out, input); return 0; }";
        let h = p.hits(bad.as_bytes(), 0);
        assert!(h.secure.is_empty() && !h.vulnerable.is_empty(), "{h:?}");
    }

    #[test]
    fn degenerate_pairs_are_refused() {
        assert_eq!(
            RepairPattern::new("int a = 5;", "int  b = 7; // new", Language::C, 3).unwrap_err(),
            NoPattern::NothingChanged
        );
        assert_eq!(
            RepairPattern::new("x = 1", "def g(): pass", Language::Python, 3).unwrap_err(),
            NoPattern::EverythingChanged
        );
    }
}
