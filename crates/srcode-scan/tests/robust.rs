//! Messy input never panics: binary, non-UTF-8, huge, deeply nested, truncated.

use srcode_scan::{Language, ScanLimits, Scanner};
use std::time::{Duration, Instant};

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
        ..ScanLimits::default()
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

/// Found by fuzzing: 64k `(` took 5 s to match in every language (tree-sitter's query cursor
/// looks for the next named sibling at every node, so a long run of bare tokens is quadratic;
/// so is a deep tree). Such trees are refused quickly with an error that says why; real code of
/// the same size is still scanned.
#[test]
fn pathological_tree_shapes_are_refused_quickly_and_real_code_is_not() {
    let s = Scanner::builtin().unwrap();
    s.prepare(&Language::ALL).unwrap();
    let n = 65_536;
    let shapes = [
        "(".repeat(n),
        "[".repeat(n),
        "{".repeat(n),
        ";".repeat(n),
        ",".repeat(n),
        format!("x = {}1{};", "f(".repeat(n / 2), ")".repeat(n / 2)),
        format!("x = {}1{};", "[".repeat(n / 2), "]".repeat(n / 2)),
    ];
    for shape in &shapes {
        for lang in Language::ALL {
            let t = Instant::now();
            let r = s.scan_code(shape.as_bytes(), lang, "x");
            let took = t.elapsed();
            // The match deadline (5 s) would also stop it; the shape check must come first.
            assert!(
                took < Duration::from_millis(2500),
                "{lang} {:?}...: {took:?}",
                &shape[..8]
            );
            if let Err(e) = r {
                let e = e.to_string();
                assert!(
                    e.contains("bare tokens") || e.contains("deeper") || e.contains("took longer"),
                    "{lang}: {e}"
                );
            }
        }
    }
    // A 30,000-element initializer is wide but named: scanned, and its finding is found.
    let table = format!(
        "int t[] = {{{}}};\nvoid f(char *s) {{ char b[8]; strcpy(b, s); }}\n",
        (0..30_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let found = s.scan_code(table.as_bytes(), Language::C, "t.c").unwrap();
    assert!(
        found.iter().any(|f| f.rule_id.contains("strcpy")),
        "{found:?}"
    );
    // The limits are settable.
    let tight = Scanner::builtin().unwrap().with_limits(ScanLimits {
        max_depth: 10,
        ..ScanLimits::default()
    });
    let nested = format!("int x = {}1{};", "(".repeat(20), ")".repeat(20));
    let e = tight
        .scan_code(nested.as_bytes(), Language::C, "n.c")
        .unwrap_err()
        .to_string();
    assert!(e.contains("deeper than 10"), "{e}");
}

/// A user rule whose pattern matches every element of a 30,000-element initializer, once with
/// an optional child (the case where matches are compared with each other): every element is
/// reported, quickly.
#[test]
fn a_user_pattern_matching_thousands_of_siblings_stays_fast() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wide.toml"),
        r#"
[[rule]]
id = "c.every-number"
severity = "low"
languages = ["c"]
message = "a number"
query = '(initializer_list (number_literal) @finding)'
bad = ["int t[] = {1};"]
good = ["int t[] = {};"]

[[rule]]
id = "c.every-number-maybe-after-a-string"
severity = "low"
languages = ["c"]
message = "a number"
query = '(initializer_list (string_literal)? (number_literal) @finding)'
bad = ["int t[] = {1};"]
good = ["int t[] = {};"]
"#,
    )
    .unwrap();
    let s = Scanner::with_rule_dirs(&[dir.path()]).unwrap();
    assert!(s.check_examples().is_empty());
    let n = 30_000;
    let table = format!(
        "int t[] = {{{}}};\n",
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let t = Instant::now();
    let found = s.scan_code(table.as_bytes(), Language::C, "t.c").unwrap();
    let took = t.elapsed();
    for id in ["c.every-number", "c.every-number-maybe-after-a-string"] {
        assert_eq!(found.iter().filter(|f| f.rule_id == id).count(), n, "{id}");
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
}
