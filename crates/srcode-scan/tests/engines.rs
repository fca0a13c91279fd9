//! The native query matcher and tree-sitter's query engine find exactly the same on every
//! rule's examples and on real code: SVEN's functions (C, C++, Python), whole and cut off
//! halfway (the error-recovered trees of truncated LLM output). Every built-in rule runs on
//! the native matcher.

use srcode_scan::{lang, Finding, Language, QueryEngine, Scanner};

fn key(f: &[Finding]) -> Vec<(String, usize, usize)> {
    let mut v: Vec<_> = f
        .iter()
        .map(|f| (f.rule_id.clone(), f.byte_start, f.byte_end))
        .collect();
    v.sort();
    v
}

fn engines() -> (Scanner, Scanner) {
    let native = Scanner::builtin().unwrap();
    let ts = Scanner::builtin()
        .unwrap()
        .with_engine(QueryEngine::TreeSitter);
    ts.prepare(&Language::ALL)
        .expect("every built-in query compiles with tree-sitter");
    (native, ts)
}

#[test]
fn every_built_in_rule_runs_on_the_native_matcher() {
    let (native, _) = engines();
    for l in Language::ALL {
        assert_eq!(
            native.tree_sitter_rules(l).unwrap(),
            Vec::<&str>::new(),
            "{l}"
        );
    }
}

#[test]
fn both_engines_agree_on_every_rule_example() {
    let (native, ts) = engines();
    let mut compared = 0;
    for r in native.rules() {
        for ex in r.bad.iter().chain(&r.good) {
            for l in &r.info.languages {
                let a = native.scan_code(ex.as_bytes(), *l, "").unwrap();
                let b = ts.scan_code(ex.as_bytes(), *l, "").unwrap();
                assert_eq!(key(&a), key(&b), "{} example {ex:?} as {l}", r.info.id);
                compared += 1;
            }
        }
    }
    assert!(compared > 300, "{compared}");
}

#[test]
fn both_engines_agree_on_real_code_whole_and_truncated() {
    let Some(root) = srcode_core::shared_data("sven", "engine cross-check on SVEN") else {
        return;
    };
    let (native, ts) = engines();
    let mut files = 0;
    let mut findings = 0;
    for split in ["train", "val"] {
        let mut names: Vec<_> = std::fs::read_dir(root.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let name = v["file_name"].as_str().unwrap_or("");
                let Some(l) = lang::from_path(std::path::Path::new(name)) else {
                    continue;
                };
                for k in ["func_src_before", "func_src_after"] {
                    let Some(src) = v[k].as_str() else { continue };
                    let cut = src
                        .char_indices()
                        .nth(src.chars().count() / 2)
                        .map_or(0, |c| c.0);
                    for code in [src, &src[..cut]] {
                        let a = native.scan_code(code.as_bytes(), l, name).unwrap();
                        let b = ts.scan_code(code.as_bytes(), l, name).unwrap();
                        assert_eq!(key(&a), key(&b), "{name} ({l}), {} bytes", code.len());
                        files += 1;
                        findings += a.len();
                    }
                }
            }
        }
    }
    eprintln!("{files} texts, {findings} findings, identical");
    assert!(
        files > 1000 && findings > 100,
        "{files} texts, {findings} findings"
    );
}
