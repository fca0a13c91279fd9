//! The analyser on the SVEN evaluation scenarios, the prompts `srcode eval --bench sven`
//! scores: for each scenario, a secure and a vulnerable completion written the way models
//! write them (`tests/scenarios/{secure,vulnerable}.json`, keyed by `<cwe>/<scenario>`). The
//! evaluation counts only findings that end past the prompt, so each completion is scanned
//! after its prompt and judged the same way. Secure completions must not be flagged; the
//! vulnerable ones must be, except where no syntactic signal exists (CWE-190 scenario 2: a sum
//! of monthly sales that can overflow looks like any other sum). Skips, saying so, when
//! `../shared/data` is absent.

use srcode_scan::{Language, Scanner};
use std::collections::BTreeMap;

fn completions(name: &str) -> BTreeMap<String, String> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// For each scenario: the findings (rule id and text) that end inside the completion.
fn scan_completions(name: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let dir = srcode_core::shared_data("sven/eval", "SVEN scenarios")?;
    let scanner = Scanner::builtin().unwrap();
    let mut out = BTreeMap::new();
    for (key, completion) in completions(name) {
        let (ext, lang) = if key.ends_with("-py") {
            ("py", Language::Python)
        } else {
            ("c", Language::C)
        };
        let read = |f: &str| std::fs::read_to_string(dir.join(&key).join(f)).unwrap();
        let prompt = read(&format!("file_context.{ext}")) + &read(&format!("func_context.{ext}"));
        // The prompts end inside a comment line; a completion starts on the next line.
        let code = format!("{prompt}\n{completion}");
        let found: Vec<String> = scanner
            .scan_code(code.as_bytes(), lang, &key)
            .unwrap()
            .into_iter()
            .filter(|f| f.byte_end > prompt.len())
            .map(|f| format!("{} `{}`", f.rule_id, &code[f.byte_start..f.byte_end]))
            .collect();
        out.insert(key, found);
    }
    Some(out)
}

#[test]
fn secure_completions_of_the_sven_scenarios_are_not_flagged() {
    let Some(found) = scan_completions("secure.json") else {
        return;
    };
    assert_eq!(found.len(), 24);
    let flagged: Vec<_> = found.iter().filter(|(_, f)| !f.is_empty()).collect();
    assert!(
        flagged.is_empty(),
        "secure completions flagged: {flagged:#?}"
    );
}

#[test]
fn vulnerable_completions_of_the_sven_scenarios_are_flagged() {
    let Some(found) = scan_completions("vulnerable.json") else {
        return;
    };
    assert_eq!(found.len(), 24);
    let missed: Vec<&String> = found
        .iter()
        .filter(|(_, f)| f.is_empty())
        .map(|(k, _)| k)
        .collect();
    eprintln!("missed: {missed:?}");
    assert_eq!(
        missed,
        ["cwe-190/2-c"],
        "vulnerable completions not flagged: {missed:?}"
    );
    // Where the prompt allocates and the completion uses the pointer unchecked, the finding
    // lands on the use, inside the completion.
    assert!(
        found["cwe-476/2-c"]
            .iter()
            .any(|f| f.starts_with("c.alloc-unchecked `buf`")),
        "{:?}",
        found["cwe-476/2-c"]
    );
}
