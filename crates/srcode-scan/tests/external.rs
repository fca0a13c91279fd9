//! External analysers: SARIF and bandit output normalised to byte spans, time limits, and the
//! real tools when installed (`$SRCODE_TOOLS_BIN`, `.venv-tools/bin`, or `$PATH`; otherwise each
//! prints `SKIP <tool>: ...`).

use serde_json::json;
use srcode_scan::external::{self, ColumnUnit, ExternalOptions, Tool};
use srcode_scan::ScanError;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const LINE: &str = "  char b[8]; /* é😀 */ strcpy(b, s);";

fn src() -> String {
    format!("#include <string.h>\nvoid f(const char *s) {{\n{LINE}\n}}\n")
}

fn reader(text: String) -> impl FnMut(&str) -> Option<Vec<u8>> {
    move |_| Some(text.clone().into_bytes())
}

fn sarif(col: u64, end_col: Option<u64>, kind: Option<&str>) -> serde_json::Value {
    let mut region = json!({ "startLine": 3, "startColumn": col });
    if let Some(e) = end_col {
        region["endColumn"] = json!(e);
    }
    let mut run = json!({
        "tool": { "driver": { "name": "t", "rules": [
            { "id": "R1", "properties": { "tags": ["security", "external/cwe/cwe-120"] },
              "defaultConfiguration": { "level": "error" } } ] } },
        "results": [{ "ruleId": "R1", "level": "warning", "message": { "text": "unbounded copy" },
            "locations": [{ "physicalLocation": { "artifactLocation": { "uri": "file:///x/a.c" }, "region": region } }] }]
    });
    if let Some(k) = kind {
        run["columnKind"] = json!(k);
    }
    json!({ "version": "2.1.0", "runs": [run] })
}

#[test]
fn sarif_columns_convert_to_the_right_bytes_in_every_unit() {
    let text = src();
    let want = text.find("strcpy").unwrap();
    // The same position in the three units: UTF-16 24, code points 23, bytes 27.
    for (col, unit) in [
        (24, ColumnUnit::FromRun),
        (24, ColumnUnit::Utf16),
        (23, ColumnUnit::CodePoints),
        (27, ColumnUnit::Bytes),
    ] {
        let f = external::parse_sarif(
            "t",
            &sarif(col, Some(col + 12), None),
            unit,
            &mut reader(text.clone()),
        )
        .unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].byte_start, want, "{unit:?}");
        assert_eq!(
            &text[f[0].byte_start..f[0].byte_end],
            "strcpy(b, s)",
            "{unit:?}"
        );
        assert_eq!(f[0].cwe.map(|c| c.0), Some(120));
        assert_eq!(f[0].file, "/x/a.c");
        assert_eq!(f[0].tool, "t");
    }
    // columnKind in the run is honoured with FromRun.
    let f = external::parse_sarif(
        "t",
        &sarif(23, None, Some("unicodeCodePoints")),
        ColumnUnit::FromRun,
        &mut reader(text.clone()),
    )
    .unwrap();
    assert_eq!(f[0].byte_start, want);
    // No end column: to the end of the line.
    assert_eq!(&text[f[0].byte_start..f[0].byte_end], "strcpy(b, s);");
    // byteOffset/byteLength win over columns.
    let mut doc = sarif(1, None, None);
    doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["byteOffset"] =
        json!(want);
    doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["byteLength"] =
        json!(6);
    let f = external::parse_sarif("t", &doc, ColumnUnit::Utf16, &mut reader(text.clone())).unwrap();
    assert_eq!(&text[f[0].byte_start..f[0].byte_end], "strcpy");
}

#[test]
fn bad_tool_output_is_an_error_naming_the_tool() {
    let e = external::parse_sarif(
        "cppcheck",
        &json!({"version": "2.1.0"}),
        ColumnUnit::Bytes,
        &mut |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cppcheck") && e.contains("runs"), "{e}");
    let e = external::parse_bandit(&json!([1, 2]), &mut |_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bandit"), "{e}");
}

#[test]
fn bandit_offsets_are_utf8_bytes() {
    let text = "import subprocess\ns = 'é😀'; subprocess.call('ls ' + s, shell=True)\n";
    let start = text.find("subprocess.call").unwrap();
    let line_start = text.find("s = ").unwrap();
    let doc = json!({ "results": [{
        "filename": "p.py", "line_number": 2, "line_range": [2],
        "col_offset": start - line_start, "end_col_offset": text.len() - 1 - line_start,
        "issue_severity": "HIGH", "issue_cwe": { "id": 78 }, "test_id": "B602",
        "issue_text": "subprocess call with shell=True identified" }] });
    let f = external::parse_bandit(&doc, &mut reader(text.to_string())).unwrap();
    assert_eq!(
        &text[f[0].byte_start..f[0].byte_end],
        "subprocess.call('ls ' + s, shell=True)"
    );
    assert_eq!(f[0].cwe.map(|c| c.0), Some(78));
    assert_eq!(f[0].rule_id, "B602");
}

#[test]
fn slow_processes_are_killed_at_the_time_limit() {
    let t = Instant::now();
    let r = external::run_with_timeout(
        Command::new("sleep").arg("30"),
        "sleep",
        Duration::from_millis(300),
    );
    assert!(matches!(r, Err(ScanError::Timeout { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_absent_tool_says_how_to_install_it() {
    let opts = ExternalOptions {
        search_path: vec![PathBuf::from("/nonexistent")],
        use_path: false,
        ..Default::default()
    };
    let e = external::locate(Tool::Flawfinder, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("flawfinder is not installed") && e.contains("pip install flawfinder"),
        "{e}"
    );
}

fn tools_opts() -> ExternalOptions {
    let mut search = Vec::new();
    if let Some(p) = std::env::var_os("SRCODE_TOOLS_BIN") {
        search.extend(std::env::split_paths(&p));
    }
    search.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.venv-tools/bin"
    )));
    ExternalOptions {
        timeout: Duration::from_secs(120),
        semgrep_config: None,
        search_path: search,
        use_path: true,
    }
}

/// Runs `tool` on `file` when installed; `None` (after printing why) when not.
fn real(
    tool: Tool,
    files: &[PathBuf],
    opts: &ExternalOptions,
) -> Option<Vec<srcode_scan::Finding>> {
    if let Err(e) = external::locate(tool, opts) {
        eprintln!("SKIP {tool}: {e}");
        return None;
    }
    Some(external::run(tool, files, opts).unwrap())
}

#[test]
fn real_tools_report_byte_exact_spans() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("a.c");
    let text = src();
    std::fs::write(&c, &text).unwrap();
    let oob = dir.path().join("o.c");
    let oob_text = "void g(void) {\n  char b[8]; /* é😀 */ b[8] = 0;\n}\n";
    std::fs::write(&oob, oob_text).unwrap();
    let py = dir.path().join("p.py");
    let py_text = "import subprocess\ndef f(x):\n    subprocess.call('ls ' + x, shell=True)\n";
    std::fs::write(&py, py_text).unwrap();
    let mut opts = tools_opts();

    if let Some(f) = real(Tool::Flawfinder, std::slice::from_ref(&c), &opts) {
        let hit = f
            .iter()
            .find(|f| text[f.byte_start..f.byte_end].starts_with("strcpy"))
            .expect("strcpy flagged");
        assert_eq!(hit.file, c.display().to_string());
        assert_eq!(hit.tool, "flawfinder");
    }
    if let Some(f) = real(Tool::Cppcheck, std::slice::from_ref(&oob), &opts) {
        let hit = f
            .iter()
            .find(|f| f.rule_id == "arrayIndexOutOfBounds")
            .expect("overrun flagged");
        assert!(oob_text[hit.byte_start..].starts_with("[8] = 0"), "{hit:?}");
    }
    if let Some(f) = real(Tool::Bandit, std::slice::from_ref(&py), &opts) {
        let hit = f
            .iter()
            .find(|f| f.rule_id == "B602")
            .expect("shell=True flagged");
        assert_eq!(
            &py_text[hit.byte_start..hit.byte_end],
            "subprocess.call('ls ' + x, shell=True)"
        );
        assert_eq!(hit.file, py.display().to_string());
    }
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, "rules:\n  - id: strcpy-call\n    languages: [c]\n    severity: ERROR\n    message: strcpy is unbounded\n    metadata: {cwe: [\"CWE-120: Buffer Copy without Checking Size of Input\"]}\n    pattern: strcpy(...)\n").unwrap();
    opts.semgrep_config = Some(rules);
    if let Some(f) = real(Tool::Semgrep, std::slice::from_ref(&c), &opts) {
        let hit = f
            .iter()
            .find(|f| f.rule_id.ends_with("strcpy-call"))
            .expect("semgrep rule fired");
        assert_eq!(&text[hit.byte_start..hit.byte_end], "strcpy(b, s)");
        assert_eq!(hit.cwe.map(|c| c.0), Some(120));
    }
}
