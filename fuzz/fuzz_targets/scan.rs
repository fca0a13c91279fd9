//! Fuzz target for the scan entry points: `Scanner::scan_code` and `Scanner::scan_answer` must
//! never panic, whatever the bytes (binary, non-UTF-8, huge, deeply nested), and every finding
//! they return must carry a span and positions consistent with the input.
//!
//! Input layout: the first byte selects the entry point and the language, the rest is the text.
//!   - bit 7 (`0x80`): set = `scan_answer` (Markdown fences), clear = `scan_code`;
//!   - low bits modulo 5: index into `Language::ALL`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use srcode_scan::{Finding, Language, QueryEngine, Scanner};
use std::sync::OnceLock;

static SCANNER: OnceLock<Scanner> = OnceLock::new();
static REFERENCE: OnceLock<Scanner> = OnceLock::new();

fn scanner() -> &'static Scanner {
    SCANNER.get_or_init(|| Scanner::builtin().expect("built-in rules must compile"))
}

/// The same rules on tree-sitter's query engine: the native matcher must agree with it.
fn reference() -> &'static Scanner {
    REFERENCE.get_or_init(|| {
        Scanner::builtin()
            .expect("built-in rules must compile")
            .with_engine(QueryEngine::TreeSitter)
    })
}

fn key(f: &[Finding]) -> Vec<(&str, usize, usize)> {
    let mut v: Vec<_> = f
        .iter()
        .map(|f| (f.rule_id.as_str(), f.byte_start, f.byte_end))
        .collect();
    v.sort();
    v
}

fn check(f: &Finding, len: usize, lang: Language, answer: bool) {
    let ctx = || format!("lang={lang:?} answer={answer} len={len} finding={f:?}");
    assert!(
        f.byte_start <= f.byte_end,
        "byte_start > byte_end: {}",
        ctx()
    );
    assert!(f.byte_end <= len, "byte_end past the input: {}", ctx());
    assert!(f.line >= 1, "line < 1: {}", ctx());
    assert!(f.column >= 1, "column < 1: {}", ctx());
    assert!(f.end_line >= f.line, "end_line < line: {}", ctx());
    assert!(f.end_column >= 1, "end_column < 1: {}", ctx());
    if f.end_line == f.line {
        assert!(
            f.end_column >= f.column,
            "end_column < column on one line: {}",
            ctx()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, text)) = data.split_first() else {
        return;
    };
    let answer = sel & 0x80 != 0;
    let lang = Language::ALL[usize::from(sel & 0x7f) % Language::ALL.len()];
    let s = scanner();
    let res = if answer {
        s.scan_answer(text, lang, "fuzz.md")
    } else {
        s.scan_code(text, lang, "fuzz")
    };
    // An error (too large, parse timeout) is an acceptable answer; a panic is not.
    if let Ok(findings) = &res {
        for f in findings {
            check(f, text.len(), lang, answer);
        }
    }
    // Differential: tree-sitter's query engine finds exactly the same (or fails alike).
    let r = reference();
    let want = if answer {
        r.scan_answer(text, lang, "fuzz.md")
    } else {
        r.scan_code(text, lang, "fuzz")
    };
    match (&res, &want) {
        (Ok(a), Ok(b)) => assert_eq!(key(a), key(b), "native vs tree-sitter, lang={lang:?}"),
        (Err(_), Err(_)) => {}
        (a, b) => {
            // Only a deadline may separate them (the engines take different times).
            let timed_out = |e: &srcode_scan::ScanError| e.to_string().contains("longer than");
            assert!(
                a.as_ref().err().is_some_and(timed_out) || b.as_ref().err().is_some_and(timed_out),
                "one engine failed: native {:?}, tree-sitter {:?}",
                a.as_ref().err().map(|e| e.to_string()),
                b.as_ref().err().map(|e| e.to_string())
            );
        }
    }
});
