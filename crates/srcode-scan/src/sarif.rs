//! SARIF 2.1.0 output. One run per tool (srcode's own rules, then each external analyser), rule
//! metadata in `tool.driver.rules` the way GitHub code scanning reads it (`security` and
//! `external/cwe/cwe-N` tags, a numeric `security-severity`), and regions with line/column
//! (UTF-16 code units, SARIF's default column kind, so viewers highlight the right characters)
//! plus the exact `byteOffset`/`byteLength`.

use crate::RuleInfo;
use serde_json::{json, Map, Value};
use srcode_core::{Finding, Severity};
use std::borrow::Cow;

/// Where the URI of a finding's file is relative to.
const SRCROOT: &str = "%SRCROOT%";

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    }
}

fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
    }
}

/// Percent-encodes what a URI reference may not contain (keeps `/` and unreserved characters).
fn uri_encode(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// 1-based UTF-16 column of a 1-based byte column on a line of `src` starting at `line_start`.
fn utf16_column(src: &[u8], line_start: usize, byte_col: usize) -> usize {
    let end = (line_start + byte_col.saturating_sub(1)).min(src.len());
    let prefix = String::from_utf8_lossy(&src[line_start.min(end)..end]);
    1 + prefix.encode_utf16().count()
}

fn rule_descriptor(r: &RuleInfo) -> Value {
    let mut tags = vec![json!("security")];
    let mut props = Map::new();
    if let Some(c) = r.cwe {
        tags.push(json!(format!("external/cwe/cwe-{}", c.0)));
    }
    props.insert("tags".into(), json!(tags));
    props.insert(
        "security-severity".into(),
        json!(security_severity(r.severity)),
    );
    props.insert("precision".into(), json!("medium"));
    let mut d = json!({
        "id": r.id,
        "name": r.id,
        "shortDescription": { "text": r.message.split("; ").next().unwrap_or(&r.message) },
        "fullDescription": { "text": r.message },
        "defaultConfiguration": { "level": level(r.severity) },
        "properties": Value::Object(props),
    });
    if let Some(c) = r.cwe {
        d["helpUri"] = json!(format!(
            "https://cwe.mitre.org/data/definitions/{}.html",
            c.0
        ));
        d["help"] = json!({ "text": format!("{}\n\n{c}: https://cwe.mitre.org/data/definitions/{}.html", r.message, c.0) });
    }
    d
}

fn fingerprint(f: &Finding, snippet: &[u8]) -> String {
    // FNV-1a of rule, file and the flagged text: stable across runs and line moves.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in f
        .rule_id
        .bytes()
        .chain([0])
        .chain(f.file.bytes())
        .chain([0])
        .chain(snippet.iter().copied())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Builds a SARIF 2.1.0 log. `rules` describes srcode's rules (all of them are listed in the
/// srcode run); `source` returns the bytes of a finding's file, used for UTF-16 columns and
/// snippets (without it, columns are the byte columns, exact for ASCII lines).
pub fn to_sarif<'a>(
    findings: &[Finding],
    rules: &[RuleInfo],
    tool_version: &str,
    source: &dyn Fn(&str) -> Option<Cow<'a, [u8]>>,
) -> Value {
    let mut tools: Vec<&str> = vec!["srcode"];
    for f in findings {
        if !tools.contains(&f.tool.as_str()) {
            tools.push(&f.tool);
        }
    }
    let mut cache: std::collections::HashMap<&str, Option<Cow<'a, [u8]>>> = Default::default();
    let mut runs = Vec::new();
    for tool in tools {
        let mine: Vec<&Finding> = findings.iter().filter(|f| f.tool == tool).collect();
        // Rule table: srcode's own, or one entry per rule id the external tool reported.
        let descriptors: Vec<Value> = if tool == "srcode" {
            rules.iter().map(rule_descriptor).collect()
        } else {
            let mut seen: Vec<&Finding> = Vec::new();
            for f in &mine {
                if !seen.iter().any(|s| s.rule_id == f.rule_id) {
                    seen.push(f);
                }
            }
            seen.iter()
                .map(|f| {
                    rule_descriptor(&RuleInfo {
                        id: f.rule_id.clone(),
                        cwe: f.cwe,
                        severity: f.severity,
                        languages: Vec::new(),
                        message: f.message.clone(),
                        source: tool.to_string(),
                    })
                })
                .collect()
        };
        let ids: Vec<String> = descriptors
            .iter()
            .map(|d| d["id"].as_str().unwrap_or_default().to_string())
            .collect();
        let mut artifacts: Vec<String> = Vec::new();
        let mut results = Vec::new();
        for f in mine {
            let src = cache
                .entry(f.file.as_str())
                .or_insert_with(|| source(&f.file));
            let (mut sc, mut ec) = (f.column, f.end_column);
            let mut snippet: Option<String> = None;
            let mut snip_bytes: &[u8] = &[];
            if let Some(src) = src.as_deref() {
                let ix = srcode_core::LineIndex::new(src);
                if let (Some(ls), Some(le)) = (ix.offset(f.line, 1), ix.offset(f.end_line, 1)) {
                    sc = utf16_column(src, ls, f.column);
                    ec = utf16_column(src, le, f.end_column);
                }
                if f.byte_start <= f.byte_end && f.byte_end <= src.len() {
                    snip_bytes = &src[f.byte_start..f.byte_end];
                    snippet = Some(String::from_utf8_lossy(snip_bytes).into_owned());
                }
            }
            let uri = uri_encode(&f.file);
            let index = match artifacts.iter().position(|a| a == &uri) {
                Some(i) => i,
                None => {
                    artifacts.push(uri.clone());
                    artifacts.len() - 1
                }
            };
            let mut region = json!({
                "startLine": f.line.max(1),
                "startColumn": sc.max(1),
                "endLine": f.end_line.max(f.line).max(1),
                "endColumn": ec.max(1),
                "byteOffset": f.byte_start,
                "byteLength": f.byte_end.saturating_sub(f.byte_start),
            });
            if let Some(s) = snippet {
                region["snippet"] = json!({ "text": s });
            }
            let mut loc = json!({ "uri": uri, "index": index });
            if !f.file.starts_with('/') {
                loc["uriBaseId"] = json!(SRCROOT);
            }
            let mut r = json!({
                "ruleId": f.rule_id,
                "level": level(f.severity),
                "message": { "text": f.message },
                "locations": [{ "physicalLocation": { "artifactLocation": loc, "region": region } }],
                "partialFingerprints": { "srcodeFindingHash/v1": fingerprint(f, snip_bytes) },
            });
            if let Some(i) = ids.iter().position(|id| id == &f.rule_id) {
                r["ruleIndex"] = json!(i);
            }
            results.push(r);
        }
        let (name, uri) = if tool == "srcode" {
            ("srcode", "https://example.invalid/srcode")
        } else {
            (tool, "")
        };
        let mut driver = json!({ "name": name, "rules": descriptors });
        if tool == "srcode" {
            driver["version"] = json!(tool_version);
            driver["informationUri"] = json!(uri);
        }
        runs.push(json!({
            "tool": { "driver": driver },
            "columnKind": "utf16CodeUnits",
            "originalUriBaseIds": { SRCROOT: { "description": { "text": "The directory srcode scan ran in." } } },
            "artifacts": artifacts.iter().map(|a| {
                let mut l = json!({ "uri": a });
                if !a.starts_with('/') { l["uriBaseId"] = json!(SRCROOT); }
                json!({ "location": l })
            }).collect::<Vec<_>>(),
            "results": results,
        }));
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_columns_count_code_units() {
        // "é" is 2 bytes / 1 unit, "😀" 4 bytes / 2 units.
        let src = "x = \"é😀\"; strcpy(a, b);".as_bytes();
        let byte_col = 1 + src.windows(6).position(|w| w == b"strcpy").unwrap();
        assert_eq!(byte_col, 15);
        assert_eq!(utf16_column(src, 0, byte_col), 15 - 1 - 2);
        assert_eq!(uri_encode("dir with space/a.c"), "dir%20with%20space/a.c");
    }
}
