//! External analysers: SARIF and bandit output normalised to byte spans, the time limit, and the
//! real tools when installed (`$SRCODE_TOOLS_BIN`, `.venv-tools/bin`, or `$PATH`; otherwise each
//! prints `SKIP <tool>: not installed (...)`).

use serde_json::{json, Value};
use srcode_scan::external::{self, ColumnUnit, ExternalOptions, Tool};
use srcode_scan::{Finding, ScanError, Severity};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A C line with a 2-byte and a 4-byte (2 UTF-16 units) character before the flagged call.
const LINE: &str = "  char b[8]; /* é😀 */ strcpy(b, s);";
const TOKEN: &str = "strcpy(b, s)";

fn c_source() -> String {
    format!("#include <string.h>\nvoid f(const char *s) {{\n{LINE}\n}}\n")
}

fn reader(text: &str) -> impl FnMut(&str) -> Option<Vec<u8>> {
    let t = text.as_bytes().to_vec();
    move |_| Some(t.clone())
}

/// 1-based column of byte offset `at` in LINE, counted three ways.
fn cols(at: usize) -> (u64, u64, u64) {
    let pre = &LINE[..at];
    (
        pre.encode_utf16().count() as u64 + 1,
        pre.chars().count() as u64 + 1,
        pre.len() as u64 + 1,
    )
}

fn doc(driver: &str, kind: Option<&str>, region: Value) -> Value {
    let mut run = json!({
        "tool": { "driver": { "name": driver, "rules": [
            { "id": "R1", "properties": { "tags": ["security", "external/cwe/cwe-120"] },
              "defaultConfiguration": { "level": "error" } } ] } },
        "results": [{ "ruleId": "R1", "message": { "text": "unbounded copy" },
            "locations": [{ "physicalLocation": {
                "artifactLocation": { "uri": "file:///x/a.c" }, "region": region } }] }]
    });
    if let Some(k) = kind {
        run["columnKind"] = json!(k);
    }
    json!({ "version": "2.1.0", "runs": [run] })
}

fn one(tool: &str, d: &Value, text: &str) -> Finding {
    let f = external::parse_sarif(tool, d, &mut reader(text)).unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    f.into_iter().next().unwrap()
}

fn slice<'a>(text: &'a str, f: &Finding) -> &'a str {
    &text[f.byte_start..f.byte_end]
}

#[test]
fn sarif_columns_in_utf16_code_points_and_bytes_slice_the_flagged_token() {
    let text = c_source();
    let at = LINE.find(TOKEN).unwrap();
    let (u16s, cps, bytes) = cols(at);
    let (u16e, cpe, bytee) = cols(at + TOKEN.len());
    assert_eq!((u16s, cps, bytes), (24, 23, 27));
    let want = text.find(TOKEN).unwrap();

    let check = |f: &Finding| {
        assert_eq!(slice(&text, f), TOKEN, "{f:?}");
        assert_eq!(f.byte_start, want);
        assert_eq!(
            (f.line, f.column),
            (3, bytes as usize),
            "1-based byte column"
        );
        assert_eq!((f.end_line, f.end_column), (3, bytee as usize));
        assert_eq!(f.file, "/x/a.c");
        assert_eq!(f.tool, "t");
        assert_eq!(f.rule_id, "R1");
        assert_eq!(f.cwe.map(|c| c.0), Some(120));
        assert_eq!(
            f.severity,
            Severity::High,
            "defaultConfiguration level error"
        );
    };
    let region = |s, e| json!({ "startLine": 3, "startColumn": s, "endLine": 3, "endColumn": e });
    // SARIF's default column kind: UTF-16 code units.
    check(&one("t", &doc("x", None, region(u16s, u16e)), &text));
    check(&one(
        "t",
        &doc("x", Some("utf16CodeUnits"), region(u16s, u16e)),
        &text,
    ));
    check(&one(
        "t",
        &doc("x", Some("unicodeCodePoints"), region(cps, cpe)),
        &text,
    ));
    // Measured quirks of the real tools, recognised by driver name.
    check(&one(
        "t",
        &doc("Cppcheck", None, region(bytes, bytee)),
        &text,
    ));
    check(&one(
        "t",
        &doc("Semgrep OSS", None, region(bytes, bytee)),
        &text,
    ));
    check(&one(
        "t",
        &doc("Flawfinder", Some("utf16CodeUnits"), region(cps, cpe)),
        &text,
    ));
    // An explicit unit overrides both.
    for (unit, s, e) in [
        (ColumnUnit::Utf16, u16s, u16e),
        (ColumnUnit::CodePoints, cps, cpe),
        (ColumnUnit::Bytes, bytes, bytee),
    ] {
        let f = external::parse_sarif_with(
            "t",
            &doc("Cppcheck", None, region(s, e)),
            unit,
            &mut reader(&text),
        )
        .unwrap();
        check(&f[0]);
    }
    // FromRun ignores the driver quirks.
    let f = external::parse_sarif_with(
        "t",
        &doc("Cppcheck", None, region(u16s, u16e)),
        ColumnUnit::FromRun,
        &mut reader(&text),
    )
    .unwrap();
    check(&f[0]);
}

#[test]
fn sarif_byte_offset_is_preferred_to_columns() {
    let text = c_source();
    let want = text.find("strcpy").unwrap();
    let f = one(
        "t",
        &doc(
            "x",
            None,
            json!({ "startLine": 1, "startColumn": 1, "endColumn": 3,
                    "byteOffset": want, "byteLength": 6 }),
        ),
        &text,
    );
    assert_eq!(slice(&text, &f), "strcpy");
    assert_eq!((f.line, f.column), (3, 27), "lines follow the bytes");
    // A byte region beyond the file is clamped, not a panic.
    let f = one(
        "t",
        &doc(
            "x",
            None,
            json!({ "byteOffset": 1_000_000, "byteLength": 5 }),
        ),
        &text,
    );
    assert_eq!((f.byte_start, f.byte_end), (text.len(), text.len()));
}

#[test]
fn sarif_missing_end_fields_default_to_the_line() {
    let text = c_source();
    let (u16s, _, _) = cols(LINE.find(TOKEN).unwrap());
    // No endLine, no endColumn: to the end of the start line (without its newline).
    let f = one(
        "t",
        &doc("x", None, json!({ "startLine": 3, "startColumn": u16s })),
        &text,
    );
    assert_eq!(slice(&text, &f), "strcpy(b, s);");
    assert_eq!((f.line, f.end_line), (3, 3));
    // No startColumn either: the whole line.
    let f = one("t", &doc("x", None, json!({ "startLine": 3 })), &text);
    assert_eq!(slice(&text, &f), LINE);
    // endColumn without endLine: on the start line.
    let (u16e, _, _) = cols(LINE.find(TOKEN).unwrap() + 6);
    let f = one(
        "t",
        &doc(
            "x",
            None,
            json!({ "startLine": 3, "startColumn": u16s, "endColumn": u16e }),
        ),
        &text,
    );
    assert_eq!(slice(&text, &f), "strcpy");
    // A region over several lines.
    let f = one(
        "t",
        &doc(
            "x",
            None,
            json!({ "startLine": 2, "startColumn": 1, "endLine": 4, "endColumn": 2 }),
        ),
        &text,
    );
    assert_eq!(
        slice(&text, &f),
        format!("void f(const char *s) {{\n{LINE}\n}}")
    );
    assert_eq!((f.line, f.column, f.end_line, f.end_column), (2, 1, 4, 2));
    // CRLF line ends are not part of the line.
    let crlf = text.replace('\n', "\r\n");
    let f = one(
        "t",
        &doc("x", None, json!({ "startLine": 3, "startColumn": u16s })),
        &crlf,
    );
    assert_eq!(slice(&crlf, &f), "strcpy(b, s);");
}

#[test]
fn sarif_empty_regions_are_widened_to_their_token() {
    // cppcheck reports one position (endColumn == startColumn), in bytes.
    let text = "void g(void) {\n  char b[8]; /* é😀 */ b[8] = 0; strcpy(b, \"too long\");\n}\n";
    let line2 = text.lines().nth(1).unwrap();
    let col = |needle: &str| line2.find(needle).unwrap() as u64 + 1;
    let at = |c: u64| json!({ "startLine": 2, "startColumn": c, "endLine": 2, "endColumn": c });
    let f = one("t", &doc("Cppcheck", None, at(col("[8] ="))), text);
    assert_eq!(slice(text, &f), "[");
    let f = one("t", &doc("Cppcheck", None, at(col("b, \"too"))), text);
    assert_eq!(slice(text, &f), "b");
    let f = one("t", &doc("Cppcheck", None, at(col("strcpy"))), text);
    assert_eq!(slice(text, &f), "strcpy");
    // An identifier with non-ASCII letters is kept whole.
    let f = one("t", &doc("Cppcheck", None, at(col("é😀"))), text);
    assert_eq!(slice(text, &f), "é😀");
    // At the end of a line it stays empty.
    let f = one(
        "t",
        &doc("Cppcheck", None, at(line2.len() as u64 + 1)),
        text,
    );
    assert_eq!(f.byte_start, f.byte_end);
}

#[test]
fn sarif_char_offsets_count_the_run_units() {
    let text = c_source();
    let want = text.find(TOKEN).unwrap();
    let chars = text[..want].encode_utf16().count();
    let f = one(
        "t",
        &doc(
            "x",
            None,
            json!({ "charOffset": chars, "charLength": TOKEN.len() }),
        ),
        &text,
    );
    assert_eq!(slice(&text, &f), TOKEN);
}

#[test]
fn sarif_uris_are_decoded_joined_and_matched_to_readable_files() {
    let text = c_source();
    let mut asked = Vec::new();
    let mut read = |p: &str| {
        asked.push(p.to_string());
        (p == "/src/d é/a b.c" || p == "rel/o%41.c" || p == "/base/dir/x.c")
            .then(|| text.as_bytes().to_vec())
    };
    let loc = |al: Value| {
        json!({ "ruleId": "R", "message": { "text": "m" }, "locations": [{ "physicalLocation": {
            "artifactLocation": al, "region": { "startLine": 3, "startColumn": 24 } } }] })
    };
    let d = json!({ "version": "2.1.0", "runs": [{
        "tool": { "driver": { "name": "x" } },
        "originalUriBaseIds": { "SRC": { "uri": "file:///base/" } },
        "artifacts": [{ "location": { "uri": "dir/x.c", "uriBaseId": "SRC" } }],
        "results": [
            // Percent-encoded (flawfinder, srcode).
            loc(json!({ "uri": "file:///src/d%20%C3%A9/a%20b.c" })),
            // Raw, with a '%' that decodes to something else (cppcheck, semgrep).
            loc(json!({ "uri": "rel/o%41.c", "uriBaseId": "%SRCROOT%" })),
            // Relative to a base the run defines, through the artifacts table.
            loc(json!({ "index": 0 })),
            // A file nobody can read keeps its line and column.
            loc(json!({ "uri": "gone.c" })),
        ] }] });
    let f = external::parse_sarif("t", &d, &mut read).unwrap();
    assert_eq!(f.len(), 4);
    assert_eq!(f[0].file, "/src/d é/a b.c");
    assert_eq!(f[1].file, "rel/o%41.c");
    assert_eq!(f[2].file, "/base/dir/x.c");
    for g in &f[..3] {
        assert!(text[g.byte_start..].starts_with("strcpy"), "{g:?}");
    }
    assert_eq!(f[3].file, "gone.c");
    assert_eq!(
        (f[3].byte_start, f[3].byte_end, f[3].line, f[3].column),
        (0, 0, 3, 24)
    );
    assert!(
        asked.contains(&"rel/oA.c".to_string()),
        "decoded first: {asked:?}"
    );
}

#[test]
fn sarif_cwe_and_severity_come_from_where_each_tool_puts_them() {
    let text = c_source();
    let res = |id: &str, extra: Value| {
        let mut r = json!({ "ruleId": id, "message": { "text": format!("msg {id}") },
            "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "a.c" },
                "region": { "startLine": 3 } } }] });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                r[k] = v;
            }
        }
        r
    };
    let d = json!({ "version": "2.1.0", "runs": [{
        "tool": { "driver": { "name": "x", "rules": [
            // semgrep: metadata.cwe lands in the tags.
            { "id": "sg", "defaultConfiguration": { "level": "error" },
              "properties": { "tags": ["CWE-120: Buffer Copy without Checking Size of Input", "security"] } },
            // cppcheck: external/cwe tag and a security-severity score.
            { "id": "cc", "defaultConfiguration": { "level": "error" },
              "properties": { "security-severity": "9.9", "tags": ["external/cwe/cwe-788", "security"] } },
            // flawfinder: relationships; the "!" one (incomparable) loses to the relevant one.
            { "id": "FF1013", "defaultConfiguration": { "level": "note" },
              "shortDescription": { "text": "Statically-sized arrays (CWE-119!/CWE-120)." },
              "helpUri": "https://cwe.mitre.org/data/definitions/119.html",
              "relationships": [
                { "target": { "id": "CWE-119", "toolComponent": { "name": "CWE" } }, "kinds": ["incomparable"] },
                { "target": { "id": "CWE-120", "toolComponent": { "name": "CWE" } }, "kinds": ["relevant"] } ] },
            { "id": "prop", "properties": { "cwe": ["CWE-78", "CWE-77"] } },
            { "id": "help", "helpUri": "https://cwe.mitre.org/data/definitions/22.html" },
            { "id": "plain" },
        ] } },
        "results": [
            res("sg", json!({})),
            res("cc", json!({ "level": "error" })),
            res("FF1013", json!({ "level": "note" })),
            res("prop", json!({ "level": "warning" })),
            res("help", json!({ "level": "none" })),
            res("plain", json!({})),
            res("nomatch", json!({ "message": { "text": "SQL injection (CWE-89)" }, "level": "error" })),
            res("taxa", json!({ "taxa": [{ "id": "476", "toolComponent": { "name": "CWE" } }] })),
            { "ruleIndex": 1, "message": { "text": "by index" }, "locations": [{ "physicalLocation": {
                "artifactLocation": { "uri": "a.c" }, "region": { "startLine": 3 } } }] },
            // An index that contradicts the id loses to the id.
            res("sg", json!({ "ruleIndex": 1 })),
        ] }] });
    let f = external::parse_sarif("t", &d, &mut reader(&text)).unwrap();
    let got: Vec<(&str, Option<u32>, Severity)> = f
        .iter()
        .map(|f| (f.rule_id.as_str(), f.cwe.map(|c| c.0), f.severity))
        .collect();
    assert_eq!(
        got,
        vec![
            ("sg", Some(120), Severity::High),
            ("cc", Some(788), Severity::Critical),
            ("FF1013", Some(120), Severity::Low),
            ("prop", Some(78), Severity::Medium),
            ("help", Some(22), Severity::Low),
            ("plain", None, Severity::Medium), // SARIF's default level is warning
            ("nomatch", Some(89), Severity::High),
            ("taxa", Some(476), Severity::Medium),
            ("cc", Some(788), Severity::Critical),
            ("sg", Some(120), Severity::High),
        ]
    );
    assert_eq!(f[0].message, "msg sg");
}

#[test]
fn srcode_own_sarif_reads_back_to_the_same_findings() {
    let text = c_source();
    let start = text.find(TOKEN).unwrap();
    let ix = srcode_scan::LineIndex::new(text.as_bytes());
    let (line, column) = ix.position(start);
    let (end_line, end_column) = ix.position(start + TOKEN.len());
    let mk = |tool: &str, sev| Finding {
        rule_id: "c-strcpy".into(),
        cwe: Some(srcode_scan::Cwe(120)),
        severity: sev,
        message: "unbounded copy".into(),
        file: "dir é/a b.c".into(),
        byte_start: start,
        byte_end: start + TOKEN.len(),
        line,
        column,
        end_line,
        end_column,
        tool: tool.into(),
    };
    for (tool, sev) in [
        ("srcode", Severity::Critical),
        ("cppcheck", Severity::Low),
        ("flawfinder", Severity::Medium),
    ] {
        let original = mk(tool, sev);
        let bytes = text.as_bytes().to_vec();
        let info = srcode_scan::RuleInfo {
            id: "c-strcpy".into(),
            cwe: Some(srcode_scan::Cwe(120)),
            severity: sev,
            languages: vec![srcode_scan::Language::C],
            message: "unbounded copy".into(),
            source: "test".into(),
        };
        let log =
            srcode_scan::sarif::to_sarif(std::slice::from_ref(&original), &[info], "0", &|_| {
                Some(std::borrow::Cow::Owned(bytes.clone()))
            });
        let back: Vec<Finding> = external::parse_sarif(tool, &log, &mut reader(&text))
            .unwrap()
            .into_iter()
            .filter(|f| f.rule_id == "c-strcpy")
            .collect();
        assert_eq!(back, vec![original], "{log}");
        // And without byteOffset: the UTF-16 columns of srcode's writer.
        let mut log = log;
        for run in log["runs"].as_array_mut().unwrap() {
            for r in run["results"].as_array_mut().unwrap() {
                let reg = &mut r["locations"][0]["physicalLocation"]["region"];
                reg.as_object_mut().unwrap().remove("byteOffset");
                reg.as_object_mut().unwrap().remove("byteLength");
            }
        }
        let back = external::parse_sarif(tool, &log, &mut reader(&text)).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(slice(&text, &back[0]), TOKEN, "{tool}");
    }
}

#[test]
fn bad_sarif_is_an_error_naming_the_tool_never_a_panic() {
    let text = c_source();
    for d in [
        json!(null),
        json!([1, 2]),
        json!({ "version": "2.1.0" }),
        json!({ "runs": 3 }),
        json!({ "runs": [{ "results": 5 }] }),
    ] {
        let e = external::parse_sarif("cppcheck", &d, &mut reader(&text))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cppcheck: SARIF:"), "{e}");
    }
    // Odd but well-formed: no panic, whatever comes out.
    let weird = json!({ "runs": [
        { "results": null },
        { "results": [
            {},
            { "locations": "x" },
            { "locations": [{ "physicalLocation": { "artifactLocation": { "uri": 5 } } }] },
            { "ruleId": 7, "message": 3, "locations": [{ "physicalLocation": {
                "artifactLocation": { "uri": "a.c" },
                "region": { "startLine": -1, "startColumn": 1e300, "endLine": 2, "endColumn": "x" } } }] },
            { "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "a.c" },
                "region": { "startLine": 99, "startColumn": 99999, "endLine": 1, "charOffset": 5 } } }] },
            { "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "a.c" },
                "region": { "charOffset": 99999, "charLength": 99999 } } }] },
            { "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "%ZZ%" },
                "region": { "byteOffset": 3, "byteLength": 18446744073709551615u64 } } }] },
            { "locations": [{ "physicalLocation": { "artifactLocation": { "index": 42 } } }] },
            { "ruleIndex": 99999, "ruleId": "r", "locations": [{ "physicalLocation": {
                "artifactLocation": { "uri": "file://" }, "region": {} } }] },
        ] },
    ] });
    let f = external::parse_sarif("t", &weird, &mut reader(&text)).unwrap();
    for g in &f {
        assert!(
            g.byte_start <= g.byte_end && g.byte_end <= text.len(),
            "{g:?}"
        );
        assert!(g.line >= 1 && g.column >= 1, "{g:?}");
    }
    // Unreadable bytes in the file are fine too.
    let mut junk = b"\xff\xfe\xc3(\xf0\x28\x8c\x28 strcpy(a, b);\n".to_vec();
    junk.extend_from_slice("é😀".as_bytes());
    let d = doc(
        "x",
        None,
        json!({ "startLine": 1, "startColumn": 6, "endColumn": 50 }),
    );
    let f = external::parse_sarif("t", &d, &mut |_| Some(junk.clone())).unwrap();
    assert!(f[0].byte_start <= f[0].byte_end && f[0].byte_end <= junk.len());
}

// ------------------------------------------------------------------------------------------
// bandit

#[test]
fn bandit_offsets_are_utf8_bytes_on_the_first_and_last_line_of_the_range() {
    // What bandit 1.9.4 reports for B602 here: line_number is the `shell=True` line, col_offset
    // is on the call's first line, end_col_offset on its last.
    let text = "import subprocess\nimport yaml\ndef f(x):\n    s = \"é😀\"; subprocess.call(\"ls \" + x,\n        shell=True)\n    return yaml.load(x)\n";
    let doc = json!({ "errors": [], "results": [
        { "filename": "./p.py", "line_number": 5, "line_range": [4, 5], "col_offset": 18,
          "end_col_offset": 19, "issue_severity": "HIGH", "issue_confidence": "HIGH",
          "issue_cwe": { "id": 78, "link": "https://cwe.mitre.org/data/definitions/78.html" },
          "test_id": "B602", "test_name": "subprocess_popen_with_shell_equals_true",
          "issue_text": "subprocess call with shell=True identified, security issue." },
        { "filename": "./p.py", "line_number": 6, "line_range": [6], "col_offset": 11,
          "end_col_offset": 23, "issue_severity": "MEDIUM", "issue_cwe": { "id": 20 },
          "test_id": "B506", "issue_text": "Use of unsafe yaml load." },
        // No end column: to the end of the line.
        { "filename": "./p.py", "line_number": 1, "col_offset": 0,
          "issue_severity": "LOW", "test_id": "B404", "issue_text": "subprocess module" },
    ] });
    let f = external::parse_bandit(&doc, &mut reader(text)).unwrap();
    assert_eq!(
        slice(text, &f[0]),
        "subprocess.call(\"ls \" + x,\n        shell=True)"
    );
    assert_eq!((f[0].line, f[0].column, f[0].end_line), (4, 19, 5));
    assert_eq!(f[0].cwe.map(|c| c.0), Some(78));
    assert_eq!(
        (f[0].rule_id.as_str(), f[0].severity, f[0].tool.as_str()),
        ("B602", Severity::High, "bandit")
    );
    assert_eq!(f[0].file, "./p.py");
    assert_eq!(slice(text, &f[1]), "yaml.load(x)");
    assert_eq!(
        (f[1].cwe.map(|c| c.0), f[1].severity),
        (Some(20), Severity::Medium)
    );
    assert_eq!(slice(text, &f[2]), "import subprocess");
    assert_eq!((f[2].cwe, f[2].severity), (None, Severity::Low));
}

#[test]
fn bad_bandit_output_is_an_error_naming_the_tool() {
    for d in [
        json!([1, 2]),
        json!({ "errors": [] }),
        json!({ "results": [{ "line_number": 1 }] }),
    ] {
        let e = external::parse_bandit(&d, &mut |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bandit: "), "{e}");
    }
    // Odd values do not panic.
    let d = json!({ "results": [{ "filename": "p.py", "line_number": -3, "line_range": [9, "x", 2],
        "col_offset": 999, "end_col_offset": 0, "issue_cwe": { "id": "CWE-78" } }] });
    let f = external::parse_bandit(&d, &mut reader("x = 1\n")).unwrap();
    assert!(f[0].byte_start <= f[0].byte_end && f[0].byte_end <= 6);
    assert_eq!(f[0].cwe.map(|c| c.0), Some(78));
}

// ------------------------------------------------------------------------------------------
// Processes

#[test]
fn slow_processes_are_killed_at_the_time_limit() {
    let t = Instant::now();
    let r = external::run_with_timeout(
        Command::new("sleep").arg("30"),
        "sleep",
        Duration::from_millis(300),
    );
    assert!(
        matches!(&r, Err(ScanError::Timeout { tool, secs: 1 }) if tool == "sleep"),
        "{r:?}"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn the_time_limit_kills_the_children_too() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
    let r = external::run_with_timeout(
        Command::new("sh").args(["-c", &script]),
        "sh",
        Duration::from_millis(300),
    );
    assert!(matches!(r, Err(ScanError::Timeout { .. })), "{r:?}");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let stat = PathBuf::from(format!("/proc/{}/stat", pid.trim()));
    // Dead (gone, or a zombie waiting for init) within a moment.
    let t = Instant::now();
    loop {
        let state = std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()));
        match state {
            None => break,
            Some(s) if s.starts_with('Z') => break,
            Some(s) => assert!(
                t.elapsed() < Duration::from_secs(3),
                "grandchild still alive: {s}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn large_outputs_do_not_deadlock_and_statuses_are_reported() {
    let r = external::run_with_timeout(
        Command::new("sh").args([
            "-c",
            "head -c 3000000 /dev/zero >&2; head -c 5000000 /dev/zero; exit 3",
        ]),
        "sh",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(r.stdout.len(), 5_000_000);
    assert_eq!(r.stderr.len(), external::STDERR_KEPT);
    assert_eq!((r.status, r.signal), (Some(3), None));
    let r = external::run_with_timeout(
        Command::new("sh").args(["-c", "kill -9 $$"]),
        "sh",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!((r.status, r.signal), (None, Some(9)));
    let e = external::run_with_timeout(
        &mut Command::new("/nonexistent/tool"),
        "tool",
        Duration::from_secs(1),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("tool: cannot start"), "{e}");
}

#[test]
fn tools_parse_print_and_choose_their_files() {
    for t in Tool::ALL {
        assert_eq!(t.name().parse::<Tool>().unwrap(), t);
        assert_eq!(t.to_string(), t.name());
        assert!(t.install_hint().starts_with("pip install"));
    }
    assert_eq!(" Bandit ".parse::<Tool>().unwrap(), Tool::Bandit);
    assert!("pylint"
        .parse::<Tool>()
        .unwrap_err()
        .to_string()
        .contains("pylint"));
    assert!(
        Tool::Cppcheck.handles(Path::new("x/a.cpp")) && Tool::Cppcheck.handles(Path::new("a.h"))
    );
    assert!(!Tool::Cppcheck.handles(Path::new("a.py")));
    assert!(Tool::Bandit.handles(Path::new("a.py")) && !Tool::Bandit.handles(Path::new("a.c")));
    assert!(Tool::Semgrep.handles(Path::new("a.js")));
    assert_eq!(
        Tool::Flawfinder.languages(),
        &[srcode_scan::Language::C, srcode_scan::Language::Cpp]
    );
}

#[test]
fn an_absent_tool_says_how_to_install_it() {
    let opts = ExternalOptions {
        search_path: vec![PathBuf::from("/nonexistent")],
        use_path: false,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let c = write(dir.path(), "a.c", "int x;\n");
    let py = write(dir.path(), "a.py", "x = 1\n");
    for t in Tool::ALL {
        let e = external::locate(t, &opts).unwrap_err();
        assert!(matches!(e, ScanError::NotInstalled { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with(&format!("{t} is not installed: pip install {t}")),
            "{e}"
        );
        let e = external::run(t, &[c.clone(), py.clone()], &{
            let mut o = opts.clone();
            o.semgrep_config = Some(PathBuf::from("/"));
            o
        })
        .unwrap_err();
        assert!(matches!(e, ScanError::NotInstalled { .. }), "{e:?}");
    }
    // A missing file, before anything runs.
    let e = external::run(Tool::Cppcheck, &[PathBuf::from("/nonexistent/a.c")], &opts).unwrap_err();
    assert!(matches!(e, ScanError::Io { .. }), "{e:?}");
    // Nothing to do is not an error, installed or not.
    let f = external::run(Tool::Bandit, &[PathBuf::from("a.c")], &opts).unwrap();
    assert!(f.is_empty());
    // semgrep without rules: a clear message before anything runs.
    let e = external::run(Tool::Semgrep, &[PathBuf::from("a.c")], &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("semgrep") && e.contains("--semgrep-config"),
        "{e}"
    );
}

// ------------------------------------------------------------------------------------------
// The real tools

fn tools_opts() -> ExternalOptions {
    let mut search = Vec::new();
    if let Some(p) = std::env::var_os("SRCODE_TOOLS_BIN") {
        search.extend(std::env::split_paths(&p));
    }
    search.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-tools/bin"));
    ExternalOptions {
        timeout: Duration::from_secs(120),
        semgrep_config: None,
        search_path: search,
        use_path: true,
    }
}

/// Whether `tool` is installed; prints why not.
fn installed(tool: Tool, opts: &ExternalOptions) -> bool {
    match external::locate(tool, opts) {
        Ok(p) => {
            eprintln!("{tool}: {}", p.display());
            true
        }
        Err(_) => {
            eprintln!("SKIP {tool}: not installed ({})", tool.install_hint());
            false
        }
    }
}

/// A temporary directory under the target directory (inside the repository, so that
/// [`relative`] can name files in it relative to the current directory).
fn workdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// `p` relative to the current directory (the package root under `cargo test`), to check that
/// relative names come back as given.
fn relative(p: &Path) -> PathBuf {
    let p = p.canonicalize().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let cwd = std::env::current_dir().unwrap();
    // Run from elsewhere than inside the repository: the absolute path will do.
    let (Ok(up), Ok(down)) = (cwd.strip_prefix(&root), p.strip_prefix(&root)) else {
        return p;
    };
    let mut r = PathBuf::new();
    for _ in up.components() {
        r.push("..");
    }
    r.join(down)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn hit<'a>(found: &'a [Finding], rule: &str) -> &'a Finding {
    found
        .iter()
        .find(|f| f.rule_id == rule)
        .unwrap_or_else(|| panic!("no {rule} in {found:#?}"))
}

#[test]
fn real_flawfinder() {
    let opts = tools_opts();
    if !installed(Tool::Flawfinder, &opts) {
        return;
    }
    let dir = workdir();
    let text = format!("{}  strcpy(b, s); /* Flawfinder: ignore */\n", c_source());
    let abs = write(dir.path(), "d é/a b.c", &text);
    let rel = relative(&abs);
    let found = external::run(Tool::Flawfinder, std::slice::from_ref(&rel), &opts).unwrap();
    let f = hit(&found, "FF1001");
    // flawfinder's span runs from the call to the end of the line.
    assert_eq!(slice(&text, f), "strcpy(b, s);");
    assert_eq!(f.line, 3);
    assert_eq!(f.file, rel.display().to_string(), "the name as given");
    assert_eq!(
        (f.cwe.map(|c| c.0), f.severity, f.tool.as_str()),
        (Some(120), Severity::High, "flawfinder")
    );
    // The ignore comment does not silence it.
    assert_eq!(found.iter().filter(|f| f.rule_id == "FF1001").count(), 2);
}

#[test]
fn real_cppcheck() {
    let opts = tools_opts();
    if !installed(Tool::Cppcheck, &opts) {
        return;
    }
    let dir = workdir();
    let text = "#include <string.h>\n#include <stdlib.h>\nvoid f(void) {\n  char b[4]; /* é😀 */ strcpy(b, \"too long\");\n  char c[2]; c[2] = 0; // cppcheck-suppress arrayIndexOutOfBounds\n}\n";
    let c = write(dir.path(), "d é/o b.c", text);
    let t = Instant::now();
    let found = external::run(Tool::Cppcheck, std::slice::from_ref(&c), &opts).unwrap();
    eprintln!("cppcheck: {:?}", t.elapsed());
    let f = hit(&found, "bufferAccessOutOfBounds");
    // cppcheck points at the overflowing buffer inside the call.
    let call = text.find("strcpy(b, \"too long\")").unwrap();
    assert_eq!(slice(text, f), "b");
    assert_eq!(f.byte_start, call + "strcpy(".len());
    assert_eq!(
        (f.cwe.map(|c| c.0), f.severity, f.file.as_str()),
        (Some(788), Severity::Critical, c.to_str().unwrap())
    );
    let g = hit(&found, "arrayIndexOutOfBounds");
    assert_eq!(g.line, 5, "the suppression comment is not honoured");
    assert_eq!(slice(text, g), "[");
    // A failing run (here: a `.c` that is an empty directory): an error with its message.
    let empty = dir.path().join("empty.c");
    std::fs::create_dir(&empty).unwrap();
    let e = external::run(Tool::Cppcheck, &[empty], &opts)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.starts_with("cppcheck: exit status 1") && e.contains("could not find or open"),
        "{e}"
    );
}

#[test]
fn real_bandit() {
    let opts = tools_opts();
    if !installed(Tool::Bandit, &opts) {
        return;
    }
    let dir = workdir();
    let text = "import subprocess\nimport yaml\ndef f(x):\n    s = \"é😀\"; subprocess.call(\"ls \" + x,\n        shell=True)\n    return yaml.load(x)  # nosec\n";
    let p = write(dir.path(), "p q.py", text);
    let rel = relative(&p);
    let found = external::run(Tool::Bandit, std::slice::from_ref(&rel), &opts).unwrap();
    let f = hit(&found, "B602");
    assert_eq!(
        slice(text, f),
        "subprocess.call(\"ls \" + x,\n        shell=True)"
    );
    assert_eq!(
        (f.cwe.map(|c| c.0), f.severity, f.tool.as_str()),
        (Some(78), Severity::High, "bandit")
    );
    assert_eq!(f.file, rel.display().to_string());
    let g = hit(&found, "B506");
    assert_eq!(slice(text, g), "yaml.load(x)", "# nosec is not honoured");
    // A file it cannot parse is reported by bandit and skipped, not fatal.
    let bad = write(dir.path(), "bad.py", "def f(:\n");
    let found = external::run(Tool::Bandit, &[bad, p], &opts).unwrap();
    assert!(found.iter().any(|f| f.rule_id == "B602"));
}

#[test]
fn real_semgrep() {
    let mut opts = tools_opts();
    if !installed(Tool::Semgrep, &opts) {
        return;
    }
    let dir = workdir();
    let text = format!("{}  strcpy(b, s); // nosemgrep\n", c_source());
    let c = write(dir.path(), "d é/a b.c", &text);
    let py = write(dir.path(), "p.py", "print(1)\n");
    let rules = write(
        dir.path(),
        "rules.yml",
        "rules:\n  - id: strcpy-call\n    languages: [c]\n    severity: ERROR\n    message: strcpy is unbounded\n    metadata: {cwe: [\"CWE-120: Buffer Copy without Checking Size of Input\"]}\n    pattern: strcpy(...)\n",
    );
    opts.semgrep_config = Some(rules);
    let t = Instant::now();
    let found = external::run(Tool::Semgrep, &[c.clone(), py], &opts).unwrap();
    eprintln!("semgrep: {:?}", t.elapsed());
    let f = hit(&found, "strcpy-call");
    assert_eq!(slice(&text, f), TOKEN);
    assert_eq!((f.line, f.column), (3, 27));
    assert_eq!(
        (
            f.cwe.map(|c| c.0),
            f.severity,
            f.file.as_str(),
            f.tool.as_str()
        ),
        (Some(120), Severity::High, c.to_str().unwrap(), "semgrep")
    );
    assert_eq!(found.len(), 2, "nosemgrep is not honoured: {found:#?}");
    // Broken rules: an error with semgrep's own message.
    let bad = write(
        dir.path(),
        "bad.yml",
        "rules:\n  - id: x\n    pattern: strcpy(\n",
    );
    opts.semgrep_config = Some(bad);
    let e = external::run(Tool::Semgrep, std::slice::from_ref(&c), &opts)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.starts_with("semgrep: exit status 7") && e.contains("Rule parse error"),
        "{e}"
    );
    // Missing rules.
    opts.semgrep_config = Some(dir.path().join("none.yml"));
    let e = external::run(Tool::Semgrep, &[c], &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.yml") && e.contains("do not exist"), "{e}");
}
