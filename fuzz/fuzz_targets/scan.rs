//! Fuzz target for the scan entry points: `Scanner::scan_code` and `Scanner::scan_answer` must
//! never panic, whatever the bytes (binary, non-UTF-8, huge, deeply nested), and every finding
//! they return must carry a span and positions consistent with the input.
//!
//! Input layout: the first byte selects the entry point and the language, the rest is the text.
//!   - bit 7 (`0x80`): set = `scan_answer` (Markdown fences), clear = `scan_code`;
//!   - low bits modulo 5: index into `Language::ALL`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use srcode_scan::{Finding, Language, Scanner};
use std::sync::OnceLock;

static SCANNER: OnceLock<Scanner> = OnceLock::new();

fn scanner() -> &'static Scanner {
    SCANNER.get_or_init(|| Scanner::builtin().expect("built-in rules must compile"))
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
    if let Ok(findings) = res {
        for f in &findings {
            check(f, text.len(), lang, answer);
        }
    }
});
