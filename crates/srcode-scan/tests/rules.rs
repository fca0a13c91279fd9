//! Every rule's own examples behave as the rule says, and the rule packs are big enough.

use srcode_scan::{Language, Scanner};

#[test]
fn every_rule_flags_its_bad_examples_and_spares_its_good_ones() {
    let s = Scanner::builtin().expect("built-in rules load");
    let errs = s.check_examples();
    let msg: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        msg.is_empty(),
        "{} example failures:\n{}",
        msg.len(),
        msg.join("\n")
    );
}

#[test]
fn a_finding_slices_exactly_the_flagged_call() {
    let s = Scanner::builtin().unwrap();
    let code = "// héllo\nvoid f(const char *s) {\n  char b[8];\n  strcpy(b, s);\n}\n";
    let f = s.scan_code(code.as_bytes(), Language::C, "x.c").unwrap();
    let hit = f
        .iter()
        .find(|f| f.rule_id == "c.strcpy-unbounded")
        .expect("flagged");
    assert_eq!(&code[hit.byte_start..hit.byte_end], "strcpy(b, s)");
    assert_eq!(
        (hit.line, hit.column, hit.end_line, hit.end_column),
        (4, 3, 4, 15)
    );
    assert_eq!(hit.file, "x.c");
    assert_eq!(hit.tool, "srcode");
}

#[test]
fn the_rule_packs_cover_every_language_and_the_required_cwes() {
    let s = Scanner::builtin().unwrap();
    let rules: Vec<_> = s.rules().collect();
    assert!(rules.len() >= 60, "only {} rules", rules.len());
    for lang in Language::ALL {
        let n = rules
            .iter()
            .filter(|r| r.info.languages.contains(&lang))
            .count();
        assert!(n >= 10, "{lang}: {n} rules");
    }
    let cwes: Vec<u32> = rules
        .iter()
        .filter_map(|r| r.info.cwe.map(|c| c.0))
        .collect();
    for want in [
        22, 78, 79, 89, 95, 120, 125, 134, 190, 295, 327, 328, 338, 377, 416, 502, 690, 732, 787,
        798,
    ] {
        assert!(cwes.contains(&want), "no rule for CWE-{want}");
    }
}

#[test]
fn a_user_rule_with_a_bad_query_is_named_eagerly_or_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.toml"),
        "[[rule]]\nid = \"java.mine\"\nseverity = \"low\"\nlanguages = [\"java\"]\nmessage = \"m\"\nquery = '(no_such_node) @finding'\nbad = ['class A {}']\ngood = ['class B {}']\n",
    )
    .unwrap();
    let e = Scanner::with_rule_dirs(&[dir.path()])
        .err()
        .expect("eager compile fails")
        .to_string();
    assert!(e.contains("java.mine"), "{e}");
    let lazy = Scanner::with_rule_dirs_lazy(&[dir.path()]).unwrap();
    assert!(
        lazy.scan_code(b"void f(void){ gets(b); }", Language::C, "")
            .unwrap()
            .len()
            == 1
    );
    let e = lazy
        .scan_code(b"class A {}", Language::Java, "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("java.mine"), "{e}");
}
