//! Ingest of the published formats: PrimeVul (paired split), SVEN, generic JSONL (the demo
//! corpus), and bad lines reported with file:line without aborting the file.

use srcode_core::{Cwe, Language};
use srcode_data::{ingest, Format};
use std::collections::BTreeSet;
use std::path::Path;

fn demo_corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/pairs.jsonl")
}

#[test]
fn the_demo_corpus_is_60_pairs_in_c_and_python_across_at_least_ten_cwes() {
    let got = ingest(&demo_corpus(), Format::Auto).unwrap();
    assert!(got.bad.is_empty(), "{:?}", got.bad);
    assert_eq!(got.records.len(), 60);
    let c = got
        .records
        .iter()
        .filter(|r| r.language == Language::C)
        .count();
    let py = got
        .records
        .iter()
        .filter(|r| r.language == Language::Python)
        .count();
    assert_eq!((c, py), (30, 30));
    let cwes: BTreeSet<Cwe> = got.records.iter().filter_map(|r| r.cwe).collect();
    assert!(cwes.len() >= 10, "{cwes:?}");
    for r in &got.records {
        let fixed = r.fixed.as_deref().expect("every demo pair has its fix");
        assert_ne!(fixed, r.vulnerable, "{}", r.id);
        assert!(r.description.is_some(), "{}", r.id);
        assert!(r.func_name.is_some(), "{}", r.id);
        assert!(r.source.starts_with("generic:"), "{}", r.source);
    }
}

#[test]
fn sven_validation_split_is_read_whole_with_languages_cwes_and_fixes() {
    let Some(dir) = srcode_core::shared_data("sven/val", "SVEN ingest") else {
        return;
    };
    let got = ingest(&dir, Format::Auto).unwrap();
    assert!(got.bad.is_empty(), "{:?}", got.bad);
    // 83 pairs in nine files; every record is C/C++ or Python with a CWE and the real fix.
    assert_eq!(got.records.len() + got.skipped.values().sum::<usize>(), 83);
    assert!(got.records.len() >= 80, "{:?}", got.skipped);
    let cwes: BTreeSet<u32> = got
        .records
        .iter()
        .filter_map(|r| r.cwe.map(|c| c.0))
        .collect();
    assert_eq!(
        cwes,
        [22, 78, 79, 89, 125, 190, 416, 476, 787]
            .into_iter()
            .collect()
    );
    for r in &got.records {
        assert!(
            matches!(r.language, Language::C | Language::Cpp | Language::Python),
            "{}: {:?}",
            r.id,
            r.language
        );
        assert!(r.fixed.is_some(), "{} has no fix", r.id);
        assert!(r.func_name.is_some(), "{}", r.id);
    }
    // Ids are unique across files (file stem + line).
    let ids: BTreeSet<&str> = got.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), got.records.len());
}

#[test]
fn primevul_pairs_vulnerable_with_patched_functions_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("primevul_valid_paired.jsonl");
    let vuln = "int get(int *a, int n, int i)\n{\n    return a[i];\n}\n";
    let fixed = "int get(int *a, int n, int i)\n{\n    if (i < 0 || i >= n)\n        return -1;\n    return a[i];\n}\n";
    let other = "void f(char *s)\n{\n    char b[4];\n    strcpy(b, s);\n}\n";
    let orphan = "void g(void)\n{\n}\n";
    let lines = [
        serde_json::json!({"idx": 7, "func": vuln, "target": 1, "cwe": ["CWE-125"], "cve": "CVE-2020-1",
            "project": "p", "commit_id": "abc", "file_name": "x.c"})
        .to_string(),
        serde_json::json!({"idx": 8, "func": fixed, "target": 0, "cwe": ["CWE-125"], "cve": "CVE-2020-1",
            "project": "p", "commit_id": "abc", "file_name": "x.c"})
        .to_string(),
        "{not json".to_string(),
        serde_json::json!({"idx": 9, "func": other, "target": 1, "cwe": [], "commit_id": "def",
            "file_name": "y.cpp"})
        .to_string(),
        serde_json::json!({"idx": 10, "func": other, "target": 2, "commit_id": "def"}).to_string(),
        serde_json::json!({"idx": 11, "target": 1, "commit_id": "zzz"}).to_string(),
        serde_json::json!({"idx": 12, "func": orphan, "target": 0, "commit_id": "ghi"}).to_string(),
        String::new(),
        "[1, 2]".to_string(),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let got = ingest(&path, Format::Auto).unwrap();

    assert_eq!(got.records.len(), 2, "{:?}", got.records);
    let a = &got.records[0];
    assert_eq!(a.id, "primevul:7");
    assert_eq!(a.language, Language::C);
    assert_eq!(a.cwe, Some(Cwe(125)));
    assert_eq!(a.fixed.as_deref(), Some(fixed));
    assert_eq!(a.func_name.as_deref(), Some("get"));
    assert_eq!(a.cve.as_deref(), Some("CVE-2020-1"));
    let b = &got.records[1];
    assert_eq!(b.language, Language::Cpp);
    assert_eq!(b.fixed, None, "no patched partner in the file");
    assert_eq!(b.cwe, None);

    // Bad lines: file:line and the reason; the good lines after them were still read.
    let bad: Vec<(usize, &str)> = got
        .bad
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(bad.len(), 4, "{bad:?}");
    assert_eq!(bad[0].0, 3);
    assert!(bad[0].1.contains("not JSON"), "{}", bad[0].1);
    assert_eq!(bad[1].0, 5);
    assert!(bad[1].1.contains("target"), "{}", bad[1].1);
    assert_eq!(bad[2].0, 6);
    assert!(bad[2].1.contains("func"), "{}", bad[2].1);
    assert_eq!(bad[3].0, 9);
    let shown = got.bad[0].to_string();
    assert!(
        shown.starts_with(&format!("{}:3: ", path.display())),
        "{shown}"
    );
    assert_eq!(
        got.skipped
            .get("PrimeVul patched function without its vulnerable version"),
        Some(&1)
    );
}

#[test]
fn generic_lines_need_code_and_a_language_and_say_which_field_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.jsonl");
    let lines = [
        r#"{"id": "a", "language": "python", "vulnerable": "def f(x):\n    return eval(x)\n", "fixed": "def f(x):\n    return int(x)\n", "cwe": "CWE-95"}"#,
        r#"{"id": "b", "language": "cobol", "vulnerable": "DISPLAY X."}"#,
        r#"{"id": "c", "language": "c", "vulnerable": ""}"#,
        r#"{"id": "d", "language": "c", "vulnerable": 5}"#,
        r#"{"id": "e", "language": "c", "vulnerable": "int f(void) { return 0; }", "cwe": "CWE-x"}"#,
        r#"{"id": "a", "language": "python", "vulnerable": "def g():\n    pass\n"}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let got = ingest(&path, Format::Generic).unwrap();
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0].cwe, Some(Cwe(95)));
    assert_eq!(
        got.skipped.get("duplicate id"),
        Some(&1),
        "{:?}",
        got.skipped
    );
    // A language srcode does not analyse is skipped and counted, not an error.
    assert_eq!(
        got.skipped.get("language srcode does not analyse"),
        Some(&1),
        "{:?}",
        got.skipped
    );
    let lines_bad: Vec<usize> = got.bad.iter().map(|b| b.line).collect();
    assert_eq!(lines_bad, vec![3, 4, 5], "{:?}", got.bad);
    assert!(
        got.bad[0].reason.contains("`vulnerable` is empty"),
        "{}",
        got.bad[0].reason
    );
    assert!(
        got.bad[1].reason.contains("`vulnerable` must be a string"),
        "{}",
        got.bad[1].reason
    );
    assert!(
        got.bad[2].reason.to_lowercase().contains("cwe"),
        "{}",
        got.bad[2].reason
    );

    // A missing file and an unknown format name are errors naming them.
    let e = ingest(&dir.path().join("nope.jsonl"), Format::Auto).unwrap_err();
    assert!(e.to_string().contains("nope.jsonl"), "{e}");
    let e = "parquet".parse::<Format>().unwrap_err();
    assert!(e.to_string().contains("parquet"), "{e}");
}
