//! SARIF output validates against the official SARIF 2.1.0 schema (fetched once from the npm
//! registry by `support/sarif_validate.py`, never vendored), and its columns are UTF-16 code
//! units. Skips, saying why, when the schema or `jsonschema` cannot be obtained.

use serde_json::Value;
use srcode_scan::{sarif, Language, Scanner};
use std::borrow::Cow;
use std::process::Command;

fn validate(files: &[std::path::PathBuf]) {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sarif-schema");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/sarif_validate.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(&cache)
        .args(files)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIP sarif schema: cannot run python3: {e}");
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => eprintln!("{text}"),
        Some(3) => eprintln!("SKIP sarif schema: {text}"),
        _ => panic!("SARIF does not validate:\n{text}"),
    }
}

#[test]
fn sarif_logs_validate_against_the_official_schema() {
    let s = Scanner::builtin().unwrap();
    let c_src = "// 😀 é\nvoid f(const char *s) { char b[8]; strcpy(b, s); gets(b); }\n";
    let py_src = "import os\ndef f(h):\n    os.system(\"ping \" + h)\n";
    let mut findings = s
        .scan_code(c_src.as_bytes(), Language::C, "src/a b.c")
        .unwrap();
    findings.extend(
        s.scan_code(py_src.as_bytes(), Language::Python, "tools/p.py")
            .unwrap(),
    );
    assert!(findings.len() >= 3);
    // One finding as an external analyser would report it.
    let mut ext = findings[0].clone();
    ext.tool = "flawfinder".into();
    ext.rule_id = "FF1001".into();
    findings.push(ext);
    let sources = |name: &str| -> Option<Cow<'static, [u8]>> {
        match name {
            "src/a b.c" => Some(Cow::Owned(c_src.as_bytes().to_vec())),
            "tools/p.py" => Some(Cow::Owned(py_src.as_bytes().to_vec())),
            _ => None,
        }
    };
    let rules = s.rule_infos();
    let log = sarif::to_sarif(&findings, &rules, "0.1.0", &sources);
    let empty = sarif::to_sarif(&[], &rules, "0.1.0", &sources);

    // Structure and metadata.
    assert_eq!(log["version"], "2.1.0");
    let runs = log["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["tool"]["driver"]["name"], "flawfinder");
    let rule = runs[0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "c.strcpy-unbounded")
        .unwrap();
    assert_eq!(rule["defaultConfiguration"]["level"], "error");
    assert_eq!(rule["properties"]["security-severity"], "8.0");
    assert!(rule["properties"]["tags"]
        .as_array()
        .unwrap()
        .contains(&Value::from("external/cwe/cwe-120")));
    // UTF-16 columns: the strcpy sits after no non-ASCII text on its line, gets likewise; the
    // emoji line is a comment. Check the column of strcpy equals its byte column.
    let res = runs[0]["results"].as_array().unwrap();
    let strcpy = res
        .iter()
        .find(|r| r["ruleId"] == "c.strcpy-unbounded")
        .unwrap();
    let region = &strcpy["locations"][0]["physicalLocation"]["region"];
    assert_eq!(region["startLine"], 2);
    assert_eq!(region["snippet"]["text"], "strcpy(b, s)");
    assert_eq!(
        strcpy["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "src/a%20b.c"
    );

    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("findings.sarif");
    let b = dir.path().join("empty.sarif");
    std::fs::write(&a, serde_json::to_vec_pretty(&log).unwrap()).unwrap();
    std::fs::write(&b, serde_json::to_vec_pretty(&empty).unwrap()).unwrap();
    validate(&[a, b]);
}

#[test]
fn columns_after_non_ascii_text_are_utf16_units() {
    let s = Scanner::builtin().unwrap();
    // On the flagged line: "é" (2 bytes, 1 unit) and "😀" (4 bytes, 2 units) before gets.
    let src = "void f(void) { char b[8]; /* é😀 */ gets(b); }\n";
    let f = s.scan_code(src.as_bytes(), Language::C, "x.c").unwrap();
    let g = f.iter().find(|f| f.rule_id == "c.gets").unwrap();
    let sources =
        |_: &str| -> Option<Cow<'static, [u8]>> { Some(Cow::Owned(src.as_bytes().to_vec())) };
    let log = sarif::to_sarif(&f, &s.rule_infos(), "0", &sources);
    let r = log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ruleId"] == "c.gets")
        .unwrap()
        .clone();
    let region = &r["locations"][0]["physicalLocation"]["region"];
    assert_eq!(
        region["startColumn"].as_u64().unwrap() as usize,
        g.column - 3
    );
    assert_eq!(
        region["byteOffset"].as_u64().unwrap() as usize,
        g.byte_start
    );
}
