//! The analyser on SVEN's held-out validation pairs (83 real CVE fixes): vulnerable versions
//! must be flagged more often than fixed ones. Skips, saying so, when `../shared/data` is absent.

use srcode_scan::{pairs, Scanner};

#[test]
fn vulnerable_versions_are_flagged_more_often_than_fixed_ones() {
    let Some(dir) = srcode_core::shared_data("sven/val", "sven pairs") else {
        return;
    };
    let scanner = Scanner::builtin().unwrap();
    let ps = pairs::load_sven(&dir).unwrap();
    assert_eq!(ps.len(), 83, "the validation split has 83 pairs");
    let rep = pairs::evaluate(&scanner, &ps).unwrap();
    eprintln!("{}", rep.markdown());
    assert!(
        rep.total.gap() > 0.0,
        "gap {:.3} is not positive:\n{}",
        rep.total.gap(),
        rep.markdown()
    );
    // The per-rule table accounts for every flagged side.
    let sum = |f: fn(&pairs::PairCounts) -> usize| rep.by_rule.values().map(f).sum::<usize>();
    assert!(sum(|c| c.vulnerable_flagged) >= rep.total.vulnerable_flagged);
    assert!(sum(|c| c.fixed_flagged) >= rep.total.fixed_flagged);
    for (rule, c) in &rep.by_rule {
        assert!(
            c.pairs >= c.vulnerable_flagged.max(c.fixed_flagged),
            "{rule}"
        );
        assert!(c.vulnerable_flagged + c.fixed_flagged > 0, "{rule}");
    }
}
