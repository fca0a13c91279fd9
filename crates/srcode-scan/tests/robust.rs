//! Messy input never panics: binary, non-UTF-8, huge, deeply nested, truncated.

use srcode_scan::{Language, ScanLimits, Scanner};
use std::time::Duration;

#[test]
fn hostile_inputs_give_results_or_errors_never_panics() {
    let s = Scanner::builtin().unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x00\x01\x02\xff\xfe\xfd".repeat(1000),
        b"strcpy(\xff\xfe, s);".to_vec(),
        "(".repeat(20_000).into_bytes(),
        "{".repeat(20_000).into_bytes(),
        "[".repeat(20_000).into_bytes(),
        format!("x = {}1{}", "f(".repeat(5000), ")".repeat(5000)).into_bytes(),
        b"```c\nvoid f(char *s){ char b[4]; strcpy(b, s".to_vec(),
        "def f(:\n    os.system(\"ls \" + x".into(),
        "é".repeat(10_000).into_bytes(),
    ];
    let mut rng = 12345u64;
    for _ in 0..200 {
        let n = (rng % 400) as usize;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let alphabet: &[u8] = b"(){}[];\"'\\ \n*&%sfreeistrcpy#define";
            v.push(alphabet[(rng % alphabet.len() as u64) as usize]);
        }
        inputs.push(v);
    }
    for inp in &inputs {
        for lang in Language::ALL {
            let a = s.scan_code(inp, lang, "x");
            let b = s.scan_answer(inp, lang, "x");
            for f in a.iter().chain(b.iter()).flatten() {
                assert!(f.byte_start <= f.byte_end && f.byte_end <= inp.len());
            }
        }
    }
}

#[test]
fn limits_turn_into_errors_naming_the_problem() {
    let s = Scanner::builtin().unwrap().with_limits(ScanLimits {
        max_bytes: 100,
        parse_timeout: Duration::from_secs(5),
    });
    let e = s
        .scan_code(&[b'x'; 101], Language::C, "big.c")
        .unwrap_err()
        .to_string();
    assert!(e.contains("101 bytes") && e.contains("limit"), "{e}");
}

#[test]
fn answers_are_scanned_only_in_their_code_fences_with_offsets_into_the_answer() {
    let s = Scanner::builtin().unwrap();
    let answer = "Use `gets` carefully? No:\n\n```c\nvoid f(void){ char b[8]; gets(b); }\n```\n";
    let f = s.scan_answer(answer.as_bytes(), Language::C, "").unwrap();
    let g = f
        .iter()
        .find(|f| f.rule_id == "c.gets")
        .expect("flagged in the fence");
    assert_eq!(&answer[g.byte_start..g.byte_end], "gets(b)");
    assert_eq!(g.line, 4);
    // The prose mention of gets outside the fence is not code.
    assert_eq!(f.iter().filter(|f| f.rule_id == "c.gets").count(), 1);
}
