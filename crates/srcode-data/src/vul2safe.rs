//! Vul2Safe repair with self-reflection. For each vulnerable function the teacher (1) explains
//! the weakness, (2) writes a repaired function, (3) reflects on its repair in a strict JSON
//! verdict; independent checks (parsing, the analyser, signature, change size, agreement with
//! the real fix) run on every round, and whatever the reflection or the checks found goes back
//! to the teacher for a revision, up to `max_rounds` times. A pair is accepted only when the
//! last round passes everything; a rejected record keeps the reason.

use crate::config::RepairConfig;
use crate::error::{DataError, Result};
use crate::ingest::{function_name, VulnRecord};
use crate::teacher::{ChatRequest, Teacher};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use similar::{capture_diff_slices, Algorithm, DiffOp};
use srcode_core::{Cwe, Language, Severity, Span};
use srcode_lm::chat::ChatMessage;
use srcode_reward::lex::lex;
use srcode_reward::reference::RepairPattern;
use srcode_scan::Scanner;

/// The reflection's answer, as parsed from its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub fixed: bool,
    pub preserves_behaviour: bool,
    pub confidence: f32,
    #[serde(default)]
    pub issues: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agrees_with_reference: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub difference_justification: String,
}

/// Why a record was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Machine-readable reason (`reflection_negative`, `analyser_still_flags`, ...).
    pub code: String,
    pub detail: String,
}

/// The result of repairing one record: accepted with its secure version, or rejected with the
/// reason. One JSON line of `repairs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairOutcome {
    pub id: String,
    pub language: Language,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwe: Option<Cwe>,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
    pub vulnerable: String,
    /// The teacher's last repair (the secure version when accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_fix: Option<String>,
    #[serde(default)]
    pub analysis: String,
    /// Repairs written (1 + revisions).
    pub rounds: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Byte spans of `repair` that differ from `vulnerable` (the fix).
    #[serde(default)]
    pub fix_spans: Vec<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_ratio: Option<f32>,
    /// Whether the repair reproduces a secure n-gram of the real fix (None: no real fix, or
    /// none usable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_agreement: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub func_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub source: String,
    pub teacher: String,
}

fn fence(lang: Language) -> &'static str {
    match lang {
        Language::C => "c",
        Language::Cpp => "cpp",
        Language::Python => "python",
        Language::Java => "java",
        Language::JavaScript => "javascript",
    }
}

fn lang_title(lang: Language) -> &'static str {
    match lang {
        Language::C => "C",
        Language::Cpp => "C++",
        Language::Python => "Python",
        Language::Java => "Java",
        Language::JavaScript => "JavaScript",
    }
}

fn block(lang: Language, code: &str) -> String {
    format!("```{}\n{}\n```", fence(lang), code.trim_end())
}

const SYSTEM: &str = "You are a senior software security engineer. You review code precisely and \
answer exactly in the format you are asked for.";

fn analysis_request(rec: &VulnRecord) -> String {
    let hint = rec
        .cwe
        .map(|c| format!(" It was reported as {c}."))
        .unwrap_or_default();
    format!(
        "This {} function contains a security vulnerability.{hint}\n\n{}\n\nExplain the weakness \
         briefly: name the CWE, the root cause, and the lines involved.",
        lang_title(rec.language),
        block(rec.language, &rec.vulnerable)
    )
}

fn repair_request(lang: Language) -> String {
    format!(
        "Rewrite the function so that this weakness is fixed and its behaviour is otherwise \
         unchanged. Change as little as possible and keep its name and signature. Answer with \
         the complete function in one ```{} code block and nothing else.",
        fence(lang)
    )
}

fn reflection_request(rec: &VulnRecord, repair: &str) -> String {
    let reference = rec
        .fixed
        .as_ref()
        .map(|f| {
            format!(
                "\n\nThe project's own fix, for reference:\n{}",
                block(rec.language, f)
            )
        })
        .unwrap_or_default();
    format!(
        "A vulnerable {lang} function:\n{}\n\nA proposed repair:\n{}{reference}\n\nReview the \
         repair. Does it remove the vulnerability? Does it keep the function's behaviour for \
         valid inputs? Answer with only a JSON object with these keys: \"fixed\" (true or \
         false), \"preserves_behaviour\" (true or false), \"confidence\" (a number from 0 to 1), \
         \"issues\" (a list of problems, empty if none), \"agrees_with_reference\" (true, false \
         or null when there is no reference), \"difference_justification\" (why a different \
         fix is still correct, or an empty string).",
        block(rec.language, &rec.vulnerable),
        block(rec.language, repair),
        lang = lang_title(rec.language),
    )
}

/// The code of an answer: the fenced block (in the language) that defines `name`, else the
/// longest block, else the whole answer.
pub fn extract_code(answer: &str, lang: Language, name: Option<&str>) -> String {
    let spans = srcode_scan::extract::code_spans(answer.as_bytes(), lang);
    let texts: Vec<&str> = spans.iter().filter_map(|s| s.slice(answer)).collect();
    let pick = name
        .and_then(|n| {
            texts
                .iter()
                .find(|t| function_name(t, lang).as_deref() == Some(n))
        })
        .or_else(|| texts.iter().max_by_key(|t| t.len()));
    pick.map_or_else(|| answer.trim().to_string(), |t| t.trim_end().to_string())
}

/// The first JSON object in `text` (models wrap it in prose or fences), read leniently:
/// `"true"` for `true`, a percentage for a confidence.
pub fn parse_verdict(text: &str) -> Option<Verdict> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(off) = text[start..].find('{') {
        let s = start + off;
        let (mut depth, mut in_str, mut esc) = (0i32, false, false);
        let mut end = None;
        for (i, &b) in bytes.iter().enumerate().skip(s) {
            if in_str {
                match b {
                    _ if esc => esc = false,
                    b'\\' => esc = true,
                    b'"' => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        let e = end?;
        if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&text[s..e]) {
            let flag = |k: &str| match o.get(k) {
                Some(Value::Bool(b)) => Some(*b),
                Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "yes" => Some(true),
                    "false" | "no" => Some(false),
                    _ => None,
                },
                _ => None,
            };
            let confidence = match o.get("confidence") {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) => s.trim().trim_end_matches('%').parse::<f64>().ok(),
                _ => None,
            }
            .map(|c| if c > 1.0 && c <= 100.0 { c / 100.0 } else { c });
            if let (Some(fixed), Some(preserves), Some(confidence)) = (
                flag("fixed"),
                flag("preserves_behaviour").or_else(|| flag("preserves_behavior")),
                confidence,
            ) {
                if (0.0..=1.0).contains(&confidence) {
                    let issues = match o.get("issues") {
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                            .collect(),
                        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.clone()],
                        _ => Vec::new(),
                    };
                    return Some(Verdict {
                        fixed,
                        preserves_behaviour: preserves,
                        confidence: confidence as f32,
                        issues,
                        agrees_with_reference: flag("agrees_with_reference"),
                        difference_justification: o
                            .get("difference_justification")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .trim()
                            .to_string(),
                    });
                }
            }
        }
        start = s + 1;
    }
    None
}

/// Share of normalised lexemes changed between two versions, with the changed byte spans of
/// `after`.
pub fn change(before: &str, after: &str, lang: Language) -> (f32, Vec<Span>) {
    let a = lex(before.as_bytes(), lang);
    let b = lex(after.as_bytes(), lang);
    let an: Vec<&str> = a.iter().map(|l| l.norm.as_str()).collect();
    let bn: Vec<&str> = b.iter().map(|l| l.norm.as_str()).collect();
    let mut changed = 0usize;
    let mut spans: Vec<Span> = Vec::new();
    for op in capture_diff_slices(Algorithm::Myers, &an, &bn) {
        match op {
            DiffOp::Equal { .. } => {}
            DiffOp::Delete { old_len, .. } => changed += old_len,
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                changed += new_len;
                spans.push(Span::new(
                    b[new_index].start,
                    b[new_index + new_len - 1].end,
                ));
            }
            DiffOp::Replace {
                old_len,
                new_index,
                new_len,
                ..
            } => {
                changed += old_len + new_len;
                spans.push(Span::new(
                    b[new_index].start,
                    b[new_index + new_len - 1].end,
                ));
            }
        }
    }
    let total = (an.len() + bn.len()).max(1);
    (changed as f32 / total as f32, spans)
}

/// What the automatic checks found wrong with a repair (empty: nothing).
struct Checked {
    problems: Vec<Rejection>,
    change_ratio: f32,
    fix_spans: Vec<Span>,
    reference_agreement: Option<bool>,
}

fn reject(code: &str, detail: impl Into<String>) -> Rejection {
    Rejection {
        code: code.into(),
        detail: detail.into(),
    }
}

fn check(
    rec: &VulnRecord,
    repair: &str,
    verdict: Option<&Verdict>,
    cfg: &RepairConfig,
    scanner: &Scanner,
    vuln_findings: &[srcode_core::Finding],
) -> Result<Checked> {
    let lang = rec.language;
    let mut problems = Vec::new();
    let (change_ratio, fix_spans) = change(&rec.vulnerable, repair, lang);
    if repair.trim().is_empty() {
        problems.push(reject("no_code", "the answer holds no code"));
        return Ok(Checked {
            problems,
            change_ratio,
            fix_spans,
            reference_agreement: None,
        });
    }
    let report = match scanner.scan_answer_report(repair.as_bytes(), lang, "repair") {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(reject("repair_unscannable", e.to_string()));
            None
        }
    };
    if let Some(report) = &report {
        if !report.parses {
            problems.push(reject(
                "repair_does_not_parse",
                format!("the repaired {lang} function does not parse"),
            ));
        }
        let snippet = |code: &str, f: &srcode_core::Finding| {
            code.get(f.byte_start..f.byte_end).unwrap_or("").to_string()
        };
        for f in &report.findings {
            let same = vuln_findings.iter().any(|v| {
                v.rule_id == f.rule_id && snippet(&rec.vulnerable, v) == snippet(repair, f)
            });
            if same {
                problems.push(reject(
                    "analyser_still_flags",
                    format!(
                        "{} still flags `{}`: {}",
                        f.rule_id,
                        snippet(repair, f),
                        f.message
                    ),
                ));
            } else if f.severity >= Severity::High
                && !vuln_findings.iter().any(|v| v.rule_id == f.rule_id)
            {
                problems.push(reject(
                    "repair_introduces_finding",
                    format!(
                        "{} flags `{}`: {}",
                        f.rule_id,
                        snippet(repair, f),
                        f.message
                    ),
                ));
            }
        }
    }
    let want = rec
        .func_name
        .clone()
        .or_else(|| function_name(&rec.vulnerable, lang));
    if let Some(name) = &want {
        if function_name(repair, lang).as_deref() != Some(name.as_str()) {
            problems.push(reject(
                "signature_changed",
                format!("the repair does not define `{name}`"),
            ));
        }
    }
    if change_ratio == 0.0 {
        problems.push(reject("repair_unchanged", "the repair changes nothing"));
    } else if change_ratio > cfg.max_change_ratio {
        problems.push(reject(
            "change_too_large",
            format!(
                "{:.0}% of the lexemes changed (at most {:.0}%)",
                change_ratio * 100.0,
                cfg.max_change_ratio * 100.0
            ),
        ));
    }
    let mut reference_agreement = None;
    if let Some(real) = &rec.fixed {
        if let Ok(p) = RepairPattern::new(&rec.vulnerable, real, lang, 3) {
            if p.sizes().0 > 0 {
                let agrees = !p.hits(repair.as_bytes(), 0).secure.is_empty();
                reference_agreement = Some(agrees);
                let justified = verdict.is_some_and(|v| {
                    v.difference_justification.chars().count() >= cfg.min_justification_chars
                });
                if !agrees && !justified {
                    problems.push(reject(
                        "disagrees_with_real_fix",
                        "the repair reproduces none of the real fix's changes and the reflection does not justify the difference",
                    ));
                }
            }
        }
    }
    Ok(Checked {
        problems,
        change_ratio,
        fix_spans,
        reference_agreement,
    })
}

fn verdict_problems(v: Option<&Verdict>, cfg: &RepairConfig) -> Vec<Rejection> {
    match v {
        None => vec![reject(
            "reflection_unreadable",
            "the reflection is not the requested JSON object",
        )],
        Some(v) if !v.fixed || !v.preserves_behaviour => {
            let issues = if v.issues.is_empty() {
                String::new()
            } else {
                format!(": {}", v.issues.join("; "))
            };
            vec![reject(
                "reflection_negative",
                format!(
                    "fixed={}, preserves_behaviour={}{issues}",
                    v.fixed, v.preserves_behaviour
                ),
            )]
        }
        Some(v) if v.confidence < cfg.min_confidence => vec![reject(
            "low_confidence",
            format!("confidence {:.2} < {:.2}", v.confidence, cfg.min_confidence),
        )],
        Some(_) => Vec::new(),
    }
}

/// Repairs one record. Teacher failures are returned as errors (the record is not finished);
/// everything else ends in an outcome, accepted or rejected.
pub fn repair_record(
    rec: &VulnRecord,
    teacher: &dyn Teacher,
    scanner: &Scanner,
    cfg: &RepairConfig,
) -> Result<RepairOutcome> {
    let lang = rec.language;
    let mut out = RepairOutcome {
        id: rec.id.clone(),
        language: lang,
        cwe: rec.cwe,
        accepted: false,
        rejection: None,
        vulnerable: rec.vulnerable.clone(),
        repair: None,
        real_fix: rec.fixed.clone(),
        analysis: String::new(),
        rounds: 0,
        verdict: None,
        fix_spans: Vec::new(),
        change_ratio: None,
        reference_agreement: None,
        func_name: rec
            .func_name
            .clone()
            .or_else(|| function_name(&rec.vulnerable, lang)),
        description: rec.description.clone(),
        source: rec.source.clone(),
        teacher: teacher.id().to_string(),
    };
    if rec.vulnerable.len() > cfg.max_function_bytes {
        out.rejection = Some(reject(
            "too_long",
            format!(
                "{} bytes (max_function_bytes = {})",
                rec.vulnerable.len(),
                cfg.max_function_bytes
            ),
        ));
        return Ok(out);
    }
    let vuln_findings = scanner
        .scan_code(rec.vulnerable.as_bytes(), lang, "vulnerable")
        .unwrap_or_default();
    let req = |messages: Vec<ChatMessage>, max_tokens: usize| ChatRequest {
        messages,
        temperature: cfg.temperature,
        top_p: None,
        max_tokens,
        seed: cfg.seed,
    };
    // A record the teacher cannot take (too long for its context) is rejected, not fatal.
    let ask = |r: ChatRequest| -> Result<std::result::Result<String, Rejection>> {
        match teacher.complete(&r) {
            Ok(s) => Ok(Ok(s)),
            Err(DataError::Input(m)) => Ok(Err(reject("teacher_refused_input", m))),
            Err(e) => Err(e),
        }
    };
    let mut conv = vec![
        ChatMessage::system(SYSTEM),
        ChatMessage::user(analysis_request(rec)),
    ];
    out.analysis = match ask(req(conv.clone(), cfg.analysis_max_tokens))? {
        Ok(a) => a,
        Err(r) => {
            out.rejection = Some(r);
            return Ok(out);
        }
    };
    conv.push(ChatMessage::assistant(out.analysis.clone()));
    conv.push(ChatMessage::user(repair_request(lang)));
    // Rounded up to a multiple of 128 so that repairs of functions of similar length share a
    // decode batch in the local teacher (it batches equal budgets only).
    let repair_tokens = (rec.vulnerable.len() / 3 + cfg.repair_extra_tokens)
        .div_ceil(128)
        .saturating_mul(128)
        .min(cfg.repair_max_tokens);
    let mut last_problems = Vec::new();
    for round in 0..=cfg.max_rounds {
        let answer = match ask(req(conv.clone(), repair_tokens))? {
            Ok(a) => a,
            Err(r) => {
                last_problems = vec![r];
                break;
            }
        };
        out.rounds = round + 1;
        let repair = extract_code(&answer, lang, out.func_name.as_deref());
        let reflection = match ask(req(
            vec![
                ChatMessage::system(SYSTEM),
                ChatMessage::user(reflection_request(rec, &repair)),
            ],
            cfg.reflect_max_tokens,
        ))? {
            Ok(r) => r,
            Err(r) => {
                last_problems = vec![r];
                out.repair = Some(repair);
                break;
            }
        };
        let verdict = parse_verdict(&reflection);
        let mut problems = verdict_problems(verdict.as_ref(), cfg);
        let checked = check(rec, &repair, verdict.as_ref(), cfg, scanner, &vuln_findings)?;
        problems.extend(checked.problems);
        out.verdict = verdict;
        out.change_ratio = Some(checked.change_ratio);
        out.fix_spans = checked.fix_spans;
        out.reference_agreement = checked.reference_agreement;
        out.repair = Some(repair);
        if problems.is_empty() {
            out.accepted = true;
            return Ok(out);
        }
        last_problems = problems;
        if round < cfg.max_rounds {
            let mut feedback = String::from("A review of your repair found these problems:\n");
            for p in &last_problems {
                feedback.push_str(&format!("- {}\n", p.detail));
            }
            if let Some(v) = &out.verdict {
                for i in &v.issues {
                    feedback.push_str(&format!("- {i}\n"));
                }
            }
            feedback.push_str(&format!(
                "Write the corrected complete function in one ```{} code block and nothing else.",
                fence(lang)
            ));
            conv.push(ChatMessage::assistant(answer));
            conv.push(ChatMessage::user(feedback));
        }
    }
    out.rejection = last_problems.into_iter().next();
    Ok(out)
}

/// The fallback pair of a record whose teacher repair was rejected: the project's own fix as the
/// secure version, when it passes the same independent checks a teacher repair must pass
/// (parses, the analyser does not flag it where it flagged the vulnerable code, it keeps the
/// function's name, the change is within `max_change_ratio`). There is no reflection, so no
/// confidence. `None` when the record has no real fix or the real fix fails a check.
pub fn real_fix_fallback(
    rec: &VulnRecord,
    rejected: &RepairOutcome,
    scanner: &Scanner,
    cfg: &RepairConfig,
) -> Result<Option<RepairOutcome>> {
    let Some(real) = rec.fixed.as_deref() else {
        return Ok(None);
    };
    if rejected.accepted || rec.vulnerable.len() > cfg.max_function_bytes {
        return Ok(None);
    }
    let vuln_findings = scanner
        .scan_code(rec.vulnerable.as_bytes(), rec.language, "vulnerable")
        .unwrap_or_default();
    let checked = check(rec, real, None, cfg, scanner, &vuln_findings)?;
    if !checked.problems.is_empty() {
        return Ok(None);
    }
    Ok(Some(RepairOutcome {
        accepted: true,
        repair: Some(real.to_string()),
        verdict: None,
        fix_spans: checked.fix_spans,
        change_ratio: Some(checked.change_ratio),
        reference_agreement: Some(true),
        teacher: REAL_FIX.to_string(),
        ..rejected.clone()
    }))
}

/// The `teacher` of a pair whose secure version is the project's own fix.
pub const REAL_FIX: &str = "real-fix";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_prose_fences_and_loose_types() {
        let v = parse_verdict(
            "Sure! ```json\n{\"fixed\": true, \"preserves_behaviour\": \"yes\", \"confidence\": 90, \"issues\": []}\n```",
        )
        .unwrap();
        assert!(v.fixed && v.preserves_behaviour);
        assert!((v.confidence - 0.9).abs() < 1e-6);
        // A brace inside a string does not end the object; a first object without the keys is
        // skipped.
        let v = parse_verdict(
            "{\"note\": 1} then {\"fixed\": false, \"preserves_behaviour\": true, \"confidence\": 0.3, \"issues\": [\"still copies } unbounded\"]}",
        )
        .unwrap();
        assert!(!v.fixed);
        assert_eq!(v.issues, ["still copies } unbounded"]);
        assert_eq!(parse_verdict("I think it is fixed."), None);
        assert_eq!(
            parse_verdict("{\"fixed\": true, \"preserves_behaviour\": true, \"confidence\": 7}"),
            Some(Verdict {
                fixed: true,
                preserves_behaviour: true,
                confidence: 0.07,
                issues: vec![],
                agrees_with_reference: None,
                difference_justification: String::new()
            })
        );
        assert_eq!(
            parse_verdict("{\"fixed\": true, \"preserves_behaviour\": true, \"confidence\": 300}"),
            None
        );
    }

    #[test]
    fn change_ratio_and_spans() {
        let a = "void f(char *s) { char b[8]; strcpy(b, s); }";
        let b = "void f(char *s) { char b[8]; snprintf(b, sizeof(b), \"%s\", s); }";
        let (r, spans) = change(a, b, Language::C);
        assert!(r > 0.0 && r < 0.5, "{r}");
        let texts: Vec<&str> = spans.iter().filter_map(|s| s.slice(b)).collect();
        assert!(texts.iter().any(|t| t.contains("snprintf")), "{texts:?}");
        assert_eq!(change(a, a, Language::C).0, 0.0);
    }

    #[test]
    fn code_is_taken_from_the_block_that_defines_the_function() {
        let ans = "Here:\n```c\nint helper(void) { return 1; }\n```\nand\n```c\nvoid f(char *s) { puts(s); }\n```\n";
        assert_eq!(
            extract_code(ans, Language::C, Some("f")),
            "void f(char *s) { puts(s); }"
        );
        assert_eq!(
            extract_code("def f(): pass", Language::Python, None),
            "def f(): pass"
        );
    }
}
