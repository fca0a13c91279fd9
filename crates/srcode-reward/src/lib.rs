//! Token-level rewards for secure code.
//!
//! [`RewardEngine::reward`] scores one completion: analyser findings penalise the tokens of
//! their spans ([`config::AnalyserConfig`]), a repair pair's secure / vulnerable patterns reward
//! or penalise the tokens that reproduce them ([`reference`]), and instance-level terms (parses,
//! analyser-clean, optionally compiles, functional tests in the sandbox; a guard against
//! degenerate answers) give one number for the whole completion. Tokens are byte ranges of any tokenizer ([`align`]).

pub mod align;
pub mod config;
pub mod heatmap;
pub mod lex;
pub mod reference;
pub mod sven;

use align::{tokens_covering, TokenSpan};
use config::{RewardConfig, Spread};
use reference::RepairPattern;
use serde::Serialize;
use srcode_core::{Finding, Language, LineIndex, Span};
use srcode_sandbox::Sandbox;
use srcode_scan::Scanner;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Errors of the reward engine.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("analyser: {0}")]
    Scan(#[from] srcode_scan::ScanError),
    #[error(transparent)]
    Sandbox(#[from] srcode_sandbox::SandboxError),
    #[error("token {index} has byte range {start}..{end}, outside the completion of {len} bytes")]
    BadToken {
        index: usize,
        start: usize,
        end: usize,
        len: usize,
    },
}

/// What each source contributed (sums over tokens for token sources).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Breakdown {
    pub analyser: f32,
    pub reference_secure: f32,
    pub reference_vulnerable: f32,
    pub parse: f32,
    pub clean: f32,
    pub compile: f32,
    pub tests: f32,
    /// Set when the guard judged the answer degenerate (then it is the whole instance reward).
    pub guard: f32,
    /// Why the guard fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard_reason: Option<String>,
}

/// The reward of one completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRewards {
    /// One reward per token (token-level sources only).
    pub per_token: Vec<f32>,
    /// The instance-level reward, for the final token.
    pub instance: f32,
    /// `sum(per_token) + instance`.
    pub total: f32,
    pub breakdown: Breakdown,
    pub findings: Vec<Finding>,
}

impl TokenRewards {
    /// The dense reward stream a trainer uses: per-token rewards with the instance reward added
    /// on the last token.
    pub fn dense(&self) -> Vec<f32> {
        let mut d = self.per_token.clone();
        if let Some(last) = d.last_mut() {
            *last += self.instance;
        }
        d
    }
}

/// One completion to reward.
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// The completion as decoded text (may contain prose and Markdown fences).
    pub completion: &'a str,
    /// Byte range of every token in `completion`, in order.
    pub tokens: &'a [TokenSpan],
    pub lang: Language,
    /// Patterns of the repair pair the prompt came from, if any.
    pub pair: Option<&'a RepairPattern>,
    /// Length in bytes of a reference solution (the fixed function), for the length guard.
    pub reference_len: Option<usize>,
    /// Name of the function the prompt asks for; an answer that does not define it is
    /// degenerate.
    pub function_name: Option<&'a str>,
    /// Functional tests (Python source appended to the answer's code and run in the sandbox).
    pub tests: Option<&'a str>,
}

/// Scores completions. Holds the compiled analyser; cheap to share across threads.
pub struct RewardEngine {
    scanner: Scanner,
    cfg: RewardConfig,
    sandbox: Option<Sandbox>,
}

impl RewardEngine {
    pub fn new(scanner: Scanner, cfg: RewardConfig) -> Self {
        RewardEngine {
            scanner,
            cfg,
            sandbox: None,
        }
    }

    /// Runs samples' functional tests in this sandbox (the `tests` instance term).
    pub fn with_sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    pub fn config(&self) -> &RewardConfig {
        &self.cfg
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// Rewards one completion. Deterministic for the same input.
    pub fn reward(&self, input: &RewardInput<'_>) -> Result<TokenRewards, RewardError> {
        let text = input.completion.as_bytes();
        for (index, &(start, end)) in input.tokens.iter().enumerate() {
            if start > end || end > text.len() {
                return Err(RewardError::BadToken {
                    index,
                    start,
                    end,
                    len: text.len(),
                });
            }
        }
        let report = self.scanner.scan_answer_report(text, input.lang, "")?;
        let mut per_token = vec![0f32; input.tokens.len()];
        let mut bd = Breakdown::default();
        let cfg = &self.cfg;

        // Analyser: penalise the tokens of every finding.
        if cfg.analyser.weight != 0.0 && !report.findings.is_empty() {
            let ix = (cfg.analyser.spread == Spread::Line).then(|| LineIndex::new(text));
            for f in &report.findings {
                let mut span = f.span();
                if let Some(ix) = &ix {
                    let s = ix.offset(f.line, 1).unwrap_or(span.start);
                    let e = ix.offset(f.end_line + 1, 1).unwrap_or(text.len());
                    span = Span::new(s, e);
                } else if cfg.analyser.spread == Spread::Statement {
                    span = statement_around(text, span, input.lang);
                }
                let w = -cfg.analyser.weight * f.severity.weight();
                for t in tokens_covering(input.tokens, span) {
                    per_token[t] += w;
                    bd.analyser += w;
                }
            }
        }

        // Repair reference: secure and vulnerable n-grams.
        if let Some(p) = input.pair {
            let rc = &cfg.reference;
            for span in &report.code {
                let hits = p.hits(&text[span.start..span.end], span.start);
                for s in hits.secure {
                    for t in tokens_covering(input.tokens, s) {
                        per_token[t] += rc.secure_weight;
                        bd.reference_secure += rc.secure_weight;
                    }
                }
                for s in hits.vulnerable {
                    for t in tokens_covering(input.tokens, s) {
                        per_token[t] -= rc.vulnerable_weight;
                        bd.reference_vulnerable -= rc.vulnerable_weight;
                    }
                }
            }
        }
        if cfg.token_clip > 0.0 {
            for r in &mut per_token {
                *r = r.clamp(-cfg.token_clip, cfg.token_clip);
            }
        }

        // Instance-level terms, or the guard's verdict instead of them.
        let ic = &cfg.instance;
        let code_len: usize = report
            .code
            .iter()
            .map(|s| {
                text[s.start..s.end]
                    .iter()
                    .filter(|b| !b.is_ascii_whitespace())
                    .count()
            })
            .sum();
        let instance = if let Some(reason) = self.degenerate(input, &report, code_len) {
            bd.guard = ic.hack_penalty;
            bd.guard_reason = Some(reason);
            // No positive token reward for an answer that dodges the task.
            for r in &mut per_token {
                *r = r.min(0.0);
            }
            ic.hack_penalty
        } else {
            bd.parse = if report.parses { ic.parse } else { -ic.parse };
            let worst = report.findings.iter().map(|f| f.severity).max();
            bd.clean = match worst {
                None => ic.clean,
                Some(s) => -ic.clean * s.weight(),
            };
            if ic.compile != 0.0 && matches!(input.lang, Language::C | Language::Cpp) {
                if let Some(ok) = compiles(text, &report.code, input.lang) {
                    bd.compile = if ok { ic.compile } else { -ic.compile };
                }
            }
            if let (Some(tests), Some(sb), true) = (
                input.tests,
                &self.sandbox,
                ic.tests != 0.0 && input.lang == Language::Python,
            ) {
                let mut program = String::new();
                for s in &report.code {
                    program.push_str(&String::from_utf8_lossy(&text[s.start..s.end]));
                    program.push('\n');
                }
                program.push_str("\n\n");
                program.push_str(tests);
                program.push('\n');
                let passed = sb.run_python(&program)?.success();
                bd.tests = if passed { ic.tests } else { -ic.tests };
            }
            bd.parse + bd.clean + bd.compile + bd.tests
        };
        let total = per_token.iter().sum::<f32>() + instance;
        Ok(TokenRewards {
            per_token,
            instance,
            total,
            breakdown: bd,
            findings: report.findings,
        })
    }

    /// Why an answer is degenerate (no code, a refusal, far shorter than the reference, the
    /// requested function missing), or `None`.
    fn degenerate(
        &self,
        input: &RewardInput<'_>,
        report: &srcode_scan::ScanReport,
        code_len: usize,
    ) -> Option<String> {
        let g = &self.cfg.instance.guard;
        let unfenced = srcode_scan::extract::fenced_blocks(input.completion.as_bytes()).is_empty();
        if code_len < g.min_code_bytes || (unfenced && !report.parses) {
            // Prose without a fence that does not parse as code, or next to no code at all.
            let lower = input.completion.to_lowercase();
            if let Some(p) = g
                .refusal_phrases
                .iter()
                .find(|p| lower.contains(p.as_str()))
            {
                return Some(format!("refusal (\"{p}\") without code"));
            }
        }
        if code_len < g.min_code_bytes {
            return Some(format!(
                "{code_len} bytes of code (minimum {})",
                g.min_code_bytes
            ));
        }
        if let Some(r) = input.reference_len {
            let r_code = r as f32;
            if (code_len as f32) < g.min_length_ratio * r_code {
                return Some(format!(
                    "{code_len} bytes of code, under {:.0}% of the reference's {r}",
                    100.0 * g.min_length_ratio
                ));
            }
        }
        if let Some(name) = input.function_name.filter(|n| !n.is_empty()) {
            let defined = report.code.iter().any(|s| {
                let code = &input.completion.as_bytes()[s.start..s.end];
                defines(code, name, input.lang)
            });
            if !defined {
                return Some(format!("the requested function `{name}` is not defined"));
            }
        }
        None
    }
}

/// The statement containing `span`: C-family code runs from after the previous `;`, `{` or `}`
/// to the next `;` (inclusive); Python from the start of the line to its end, following
/// backslash and bracket continuations only as far as the span itself reaches.
fn statement_around(text: &[u8], span: Span, lang: Language) -> Span {
    let start = span.start.min(text.len());
    let end = span.end.min(text.len());
    if lang == Language::Python {
        let s = text[..start]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let e = text[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| end + i);
        return Span::new(s, e);
    }
    let s = text[..start]
        .iter()
        .rposition(|&b| matches!(b, b';' | b'{' | b'}'))
        .map_or(0, |i| i + 1);
    let e = text[end..]
        .iter()
        .position(|&b| b == b';')
        .map_or(text.len(), |i| end + i + 1);
    // Skip the whitespace before the statement.
    let s = s + text[s..start]
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    Span::new(s, e)
}

/// Whether `code` defines a function called `name` (a cheap lexical check: the name followed by
/// `(` after `def`, or with a body `{` before the next `;`).
fn defines(code: &[u8], name: &str, lang: Language) -> bool {
    let lx = lex::lex(code, lang);
    lx.iter().enumerate().any(|(i, l)| {
        code.get(l.start..l.end) == Some(name.as_bytes())
            && lx.get(i + 1).is_some_and(|n| n.norm == "(")
            && match lang {
                Language::Python => i > 0 && lx[i - 1].norm == "def",
                _ => {
                    // Skip the parameter list, then expect a body.
                    let mut depth = 0usize;
                    let mut j = i + 1;
                    while j < lx.len() {
                        match lx[j].norm.as_str() {
                            "(" => depth += 1,
                            ")" => {
                                depth = depth.saturating_sub(1);
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    // A truncated answer can end inside the parameter list.
                    lx.get(j + 1..)
                        .unwrap_or(&[])
                        .iter()
                        .take(8)
                        .find(|l| l.norm == "{" || l.norm == ";" || l.norm == "=>")
                        .is_some_and(|l| l.norm != ";")
                }
            }
    })
}

/// `gcc -fsyntax-only` on the code, with a time limit; `None` when gcc is not available.
fn compiles(text: &[u8], code: &[Span], lang: Language) -> Option<bool> {
    let (compiler, x) = match lang {
        Language::C => ("gcc", "c"),
        _ => ("g++", "c++"),
    };
    let mut child = Command::new(compiler)
        .args(["-fsyntax-only", "-w", "-x", x, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        for s in code {
            let _ = stdin.write_all(&text[s.start..s.end]);
            let _ = stdin.write_all(b"\n");
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status.success()),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_survives_answers_cut_off_inside_a_parameter_list() {
        // An RL rollout that hit its token limit mid-signature once panicked here.
        for cut in [
            "int copy_name(char *dst, size_t",
            "int copy_name(",
            "int copy_name(char *dst) ",
            "int copy_name((",
        ] {
            assert!(!defines(cut.as_bytes(), "copy_name", Language::C), "{cut}");
        }
        assert!(defines(
            b"int copy_name(char *dst) { return 0; }",
            "copy_name",
            Language::C
        ));
        assert!(!defines(
            b"int copy_name(char *dst);",
            "copy_name",
            Language::C
        ));
    }
}
