//! Implicit prompts: task descriptions a developer might write for the function, which never
//! mention security, so that a model trained on them is secure by default. The teacher writes
//! one per style; a leak filter rejects any that mention security words, a CWE, or what the fix
//! added; near-duplicates (word-trigram Jaccard) are dropped. Every prompt ends with the
//! signature (and, for C/C++, the helpers and types the code relies on), so the task is
//! well-posed and its answer testable.

use crate::config::PromptConfig;
use crate::error::{DataError, Result};
use crate::teacher::{ChatRequest, Teacher};
use crate::vul2safe::RepairOutcome;
use serde::{Deserialize, Serialize};
use srcode_core::Language;
use srcode_lm::chat::ChatMessage;
use srcode_reward::lex::{lex, Kind};
use std::collections::{BTreeSet, HashSet};

/// Words no implicit prompt may contain (case-insensitive substrings).
pub const LEAK_WORDS: &[&str] = &[
    "secur",
    "vulnerab",
    "safe",
    "sanitiz",
    "sanitis",
    "escap",
    "inject",
    "overflow",
    "exploit",
    "attack",
    "malicious",
    "untrusted",
    "cwe",
    "cve",
    "bounds check",
    "out-of-bounds",
    "out of bounds",
    "use-after-free",
    "use after free",
    "double free",
    "xss",
    "csrf",
    "traversal",
    "tainted",
    "harden",
    "defensive",
    "threat",
];

/// A prompt the teacher wrote, kept or rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptCandidate {
    pub style: String,
    pub text: String,
    /// Why it was rejected (None: kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// All prompts for one accepted pair. One JSON line of `prompts.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSet {
    pub pair_id: String,
    pub candidates: Vec<PromptCandidate>,
}

impl PromptSet {
    pub fn kept(&self) -> impl Iterator<Item = &PromptCandidate> {
        self.candidates.iter().filter(|c| c.rejected.is_none())
    }
}

fn style_request(style: &str, lang: Language, code: &str, description: Option<&str>) -> String {
    let what = match style {
        "ticket" => {
            "Write a short ticket (two to four sentences) that a developer would file \
                     to ask a teammate for this function."
        }
        "docstring" => {
            "Write a docstring-style specification of this function: a one-line \
                        summary, then its parameters and its return value."
        }
        "story" => {
            "Write a user story (\"As a ..., I want ..., so that ...\") asking for this \
                    function, followed by one sentence of acceptance criteria."
        }
        _ => "Write a one-sentence comment that summarises what this function does for its caller.",
    };
    let hint = description
        .map(|d| format!("\nWhat it is for: {d}\n"))
        .unwrap_or_default();
    format!(
        "Here is a {} function:\n```{}\n{}\n```\n{hint}\n{what} Describe only what the \
         function must do for its caller: inputs, outputs and behaviour on errors. Do not \
         mention security, safety, vulnerabilities or checks, and do not include code. Answer \
         with the text only.",
        match lang {
            Language::C => "C",
            Language::Cpp => "C++",
            Language::Python => "Python",
            Language::Java => "Java",
            Language::JavaScript => "JavaScript",
        },
        match lang {
            Language::Cpp => "cpp",
            Language::Python => "python",
            Language::Java => "java",
            Language::JavaScript => "javascript",
            Language::C => "c",
        },
        code.trim_end()
    )
}

/// The function's header: everything before the body.
pub fn signature(code: &str, lang: Language) -> Option<String> {
    match lang {
        Language::Python => {
            let start = code.find("def ")?;
            let rest = &code[start..];
            // The header ends at the `:` that closes the parameter list.
            let mut depth = 0i32;
            for (i, c) in rest.char_indices() {
                match c {
                    '(' | '[' => depth += 1,
                    ')' | ']' => depth -= 1,
                    ':' if depth == 0 => return Some(rest[..=i].trim().to_string()),
                    _ => {}
                }
            }
            None
        }
        _ => {
            let brace = code.find('{')?;
            let head = code[..brace].trim();
            // Drop leading comments and blank lines.
            let lines: Vec<&str> = head
                .lines()
                .skip_while(|l| {
                    let t = l.trim_start();
                    t.is_empty() || t.starts_with("//") || t.starts_with("/*") || t.starts_with('*')
                })
                .collect();
            let s = lines.join("\n").trim().to_string();
            (!s.is_empty() && s.contains('(')).then_some(s)
        }
    }
}

const C_STD: &[&str] = &[
    "malloc", "calloc", "realloc", "free", "memcpy", "memmove", "memset", "memcmp", "strlen",
    "strcpy", "strncpy", "strcat", "strncat", "strcmp", "strncmp", "strchr", "strrchr", "strstr",
    "strdup", "strndup", "snprintf", "sprintf", "printf", "fprintf", "puts", "fputs", "fopen",
    "fclose", "fread", "fwrite", "fgets", "read", "write", "open", "close", "sizeof", "if",
    "while", "for", "switch", "return", "assert", "abort", "exit", "atoi", "strtol", "strtoul",
    "isdigit", "isalpha", "isspace", "toupper", "tolower", "system", "popen", "pclose",
];

/// What a C/C++ function relies on besides the standard library: called functions and named
/// struct/enum types, so a prompt can say they exist.
pub fn c_context(code: &str, lang: Language, own_name: Option<&str>) -> (Vec<String>, Vec<String>) {
    let lx = lex(code.as_bytes(), lang);
    let text = |i: usize| code.get(lx[i].start..lx[i].end).unwrap_or("");
    let mut calls = BTreeSet::new();
    let mut types = BTreeSet::new();
    for i in 0..lx.len() {
        let t = text(i);
        if i + 1 < lx.len() && text(i + 1) == "(" && matches!(lx[i].kind, Kind::Ident) {
            let prev = if i > 0 { text(i - 1) } else { "" };
            if !C_STD.contains(&t) && Some(t) != own_name && prev != "." && prev != "->" {
                calls.insert(t.to_string());
            }
        }
        if (t == "struct" || t == "enum" || t == "union") && i + 1 < lx.len() {
            types.insert(format!("{t} {}", text(i + 1)));
        }
    }
    (calls.into_iter().collect(), types.into_iter().collect())
}

/// Identifiers the fix added: present in the secure version, absent from the vulnerable one.
fn fix_words(o: &RepairOutcome) -> HashSet<String> {
    let Some(secure) = &o.repair else {
        return HashSet::new();
    };
    let before: HashSet<String> = lex(o.vulnerable.as_bytes(), o.language)
        .iter()
        .filter_map(|l| o.vulnerable.get(l.start..l.end).map(str::to_string))
        .collect();
    lex(secure.as_bytes(), o.language)
        .iter()
        .filter(|l| matches!(l.kind, Kind::Ident))
        .filter_map(|l| secure.get(l.start..l.end))
        .filter(|w| w.len() >= 4 && !before.contains(*w))
        .map(str::to_string)
        .collect()
}

fn clean(answer: &str) -> String {
    let t = answer.trim();
    let t = t
        .strip_prefix("```")
        .map(|r| r.split_once('\n').map_or(r, |x| x.1))
        .unwrap_or(t);
    let t = t.strip_suffix("```").unwrap_or(t);
    t.trim().trim_matches('"').trim().to_string()
}

/// Whether more than two lines of `text` read as source code (a small teacher sometimes
/// answers with the function itself, which would put the answer in the prompt).
fn looks_like_code(text: &str) -> bool {
    let starts = [
        "def ", "return", "if ", "if(", "for ", "for(", "while ", "#include", "import ", "else",
        "}", "{",
    ];
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // A definition line is code on its own.
    if lines.iter().any(|l| {
        ["def ", "class ", "#include", "#define"]
            .iter()
            .any(|s| l.starts_with(s))
    }) {
        return true;
    }
    lines
        .iter()
        .filter(|l| {
            !l.is_empty()
                && (starts.iter().any(|s| l.starts_with(s))
                    || l.contains("\"\"\"")
                    || [';', '{', '[', '(', ','].iter().any(|c| l.ends_with(*c))
                    || (l.ends_with(':') && l.contains('(')))
        })
        .count()
        > 2
}

/// Whether `text` repeats itself: fewer than half of its word trigrams are distinct (the
/// degenerate loops of a small model).
fn repetitive(text: &str) -> bool {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    if words.len() < 14 {
        return false;
    }
    let tri: Vec<&[String]> = words.windows(3).collect();
    let distinct: HashSet<&[String]> = tri.iter().copied().collect();
    distinct.len() * 2 < tri.len()
}

/// Why `text` is not an acceptable implicit prompt, if it is not.
pub fn leak(text: &str, cfg: &PromptConfig, fix: &HashSet<String>) -> Option<String> {
    let low = text.to_lowercase();
    if let Some(w) = LEAK_WORDS
        .iter()
        .map(|w| w.to_string())
        .chain(cfg.extra_leak_words.iter().map(|w| w.to_lowercase()))
        .find(|w| low.contains(w.as_str()))
    {
        return Some(format!("mentions `{w}`"));
    }
    if text.contains("```") || looks_like_code(text) {
        return Some("contains code".into());
    }
    if repetitive(text) {
        return Some("repetitive (the same word trigrams over and over)".into());
    }
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    if let Some(w) = words.iter().find(|w| fix.contains(**w)) {
        return Some(format!("mentions `{w}`, which the fix added"));
    }
    if words.len() < cfg.min_words {
        return Some(format!(
            "{} words (at least {})",
            words.len(),
            cfg.min_words
        ));
    }
    None
}

/// Word trigrams (lower case) of a text.
pub fn shingles(text: &str) -> HashSet<u64> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut out = HashSet::new();
    if words.len() < 3 {
        if !words.is_empty() {
            out.insert(hash(&words.join(" ")));
        }
        return out;
    }
    for w in words.windows(3) {
        out.insert(hash(&w.join(" ")));
    }
    out
}

fn hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(b).count();
    inter as f32 / (a.len() + b.len() - inter) as f32
}

/// The context appended to every prompt: the signature to implement (and, for C/C++, the
/// helpers and types it may use).
fn context(o: &RepairOutcome, code: &str) -> String {
    context_of(o.language, o.func_name.as_deref(), code)
}

/// What an implicit prompt says about the code around the function: its signature and, for C
/// and C++, the types and functions it relies on.
fn context_of(lang: Language, func_name: Option<&str>, code: &str) -> String {
    let mut s = String::new();
    if let Some(sig) = signature(code, lang) {
        let fence = match lang {
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Python => "python",
            Language::Java => "java",
            Language::JavaScript => "javascript",
        };
        let sig = if lang == Language::Python {
            sig
        } else {
            format!("{sig};")
        };
        s.push_str(&format!(
            "\n\nImplement it with this signature:\n```{fence}\n{sig}\n```"
        ));
    }
    if matches!(lang, Language::C | Language::Cpp) {
        let (calls, types) = c_context(code, lang, func_name);
        if !types.is_empty() {
            s.push_str(&format!(
                "\nThese types are defined elsewhere: {}.",
                types.join(", ")
            ));
        }
        if !calls.is_empty() {
            let list: Vec<String> = calls.iter().map(|c| format!("`{c}()`")).collect();
            s.push_str(&format!(
                "\nThese functions exist and may be called: {}.",
                list.join(", ")
            ));
        }
    }
    s
}

/// The autocomplete stub: a comment or docstring with the summary, then the signature and an
/// open body.
fn stub(o: &RepairOutcome, code: &str, summary: &str) -> Option<String> {
    let sig = signature(code, o.language)?;
    Some(match o.language {
        Language::Python => format!("{sig}\n    \"\"\"{summary}\"\"\"\n"),
        _ => format!("/* {summary} */\n{sig}\n{{\n"),
    })
}

/// Asks the teacher for the prompts of one accepted pair and filters them. `others` holds the
/// shingles of prompts kept so far (across pairs), for near-duplicate removal; kept prompts are
/// added to it.
pub fn prompts_for(
    o: &RepairOutcome,
    teacher: &dyn Teacher,
    cfg: &PromptConfig,
    others: &std::sync::Mutex<Vec<HashSet<u64>>>,
) -> Result<PromptSet> {
    let code = o
        .repair
        .as_deref()
        .ok_or_else(|| DataError::Input(format!("{}: an accepted pair without a repair", o.id)))?;
    let fix = fix_words(o);
    let mut set = PromptSet {
        pair_id: o.id.clone(),
        candidates: Vec::new(),
    };
    for k in 0..cfg.per_pair {
        let style = cfg.styles[k % cfg.styles.len()].clone();
        let req = ChatRequest {
            messages: vec![ChatMessage::user(style_request(
                &style,
                o.language,
                code,
                o.description.as_deref(),
            ))],
            temperature: cfg.temperature,
            top_p: None,
            max_tokens: cfg.max_tokens,
            seed: cfg.seed + (k / cfg.styles.len()) as u64,
        };
        let answer = match teacher.complete(&req) {
            Ok(a) => a,
            Err(DataError::Input(m)) => {
                set.candidates.push(PromptCandidate {
                    style,
                    text: String::new(),
                    rejected: Some(format!("teacher refused the input: {m}")),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        let body = clean(&answer);
        let mut rejected = leak(&body, cfg, &fix);
        let text = if style == "stub" {
            match stub(o, code, body.lines().next().unwrap_or("").trim()) {
                Some(s) => s,
                None => {
                    rejected.get_or_insert_with(|| "no signature to build a stub from".into());
                    body.clone()
                }
            }
        } else {
            format!("{body}{}", context(o, code))
        };
        if rejected.is_none() {
            let sh = shingles(&body);
            let mut seen = others
                .lock()
                .map_err(|_| DataError::Input("prompt index poisoned".into()))?;
            if let Some(sim) = seen
                .iter()
                .map(|s| jaccard(s, &sh))
                .find(|j| *j > cfg.max_similarity)
            {
                rejected = Some(format!(
                    "near-duplicate of a kept prompt (Jaccard {sim:.2})"
                ));
            } else {
                seen.push(sh);
            }
        }
        set.candidates.push(PromptCandidate {
            style,
            text,
            rejected,
        });
    }
    if cfg.fallback_to_description && set.kept().next().is_none() {
        if let Some(d) = o
            .description
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            let rejected = leak(d, cfg, &fix);
            set.candidates.push(PromptCandidate {
                style: DESCRIPTION.into(),
                text: format!("{d}{}", context(o, code)),
                rejected,
            });
        }
    }
    Ok(set)
}

/// An implicit prompt written without a teacher: the record's own description, then the
/// function's signature and context as Vul2Safe's prompts give them (what
/// `fallback_to_description` uses), checked by the same leak filter. The evaluation tasks of
/// pairs held out of training (`srcode data tasks`). `Err` says why there is none.
pub fn description_prompt(
    r: &crate::ingest::VulnRecord,
    cfg: &PromptConfig,
) -> std::result::Result<String, String> {
    let d = r
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| "no description".to_string())?;
    if let Some(why) = leak(d, cfg, &HashSet::new()) {
        return Err(why);
    }
    let code = r.fixed.as_deref().unwrap_or(&r.vulnerable);
    Ok(format!(
        "{d}{}",
        context_of(r.language, r.func_name.as_deref(), code)
    ))
}

/// The style of a prompt that is the record's own description (`fallback_to_description`).
pub const DESCRIPTION: &str = "description";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(
            signature(
                "/* copy */\nstatic int\ncopy_name(char *dst, const char *src)\n{\n return 0; }",
                Language::C
            )
            .as_deref(),
            Some("static int\ncopy_name(char *dst, const char *src)")
        );
        assert_eq!(
            signature(
                "def load(path: str, opts: dict = {}) -> bytes:\n    return b''",
                Language::Python
            )
            .as_deref(),
            Some("def load(path: str, opts: dict = {}) -> bytes:")
        );
    }

    #[test]
    fn the_leak_filter_catches_security_words_cwes_code_and_the_fix() {
        let cfg = PromptConfig::default();
        let fix: HashSet<String> = ["strlcpy".to_string()].into();
        assert!(leak(
            "Copy the name safely into the buffer of the caller.",
            &cfg,
            &fix
        )
        .is_some());
        assert!(leak("Fix CWE-787 in the function that copies names.", &cfg, &fix).is_some());
        assert!(leak(
            "Copy the name with strlcpy into the buffer given by the caller.",
            &cfg,
            &fix
        )
        .is_some());
        assert!(leak("Copy it.", &cfg, &fix).is_some());
        assert_eq!(
            leak(
                "Copy the user's display name into the caller's buffer and return its length.",
                &cfg,
                &fix
            ),
            None
        );
    }

    #[test]
    fn code_and_loops_are_not_prompts() {
        let cfg = PromptConfig::default();
        let none = HashSet::new();
        let code = "def git_hook(strict=False):\n    if strict:\n        return 0\n    return 1";
        assert_eq!(leak(code, &cfg, &none).as_deref(), Some("contains code"));
        let looped = "It must accept a maximum of 10 connections. ".repeat(6);
        assert!(leak(&looped, &cfg, &none).is_some_and(|r| r.starts_with("repetitive")));
        let fine = "Return the title of the video at the given URL, or an empty string when the \
                    page has none. It raises ValueError for a URL that is not a video page.";
        assert_eq!(leak(fine, &cfg, &none), None);
    }

    #[test]
    fn near_duplicates_score_high() {
        let a = shingles("Return the number of users whose name starts with the given prefix.");
        let b = shingles("Return the number of users whose name starts with the given prefix!");
        let c = shingles("Parse a configuration file and return a map from keys to values.");
        assert!(jaccard(&a, &b) > 0.9);
        assert!(jaccard(&a, &c) < 0.1);
    }

    #[test]
    fn c_context_lists_helpers_and_types() {
        let (calls, types) = c_context(
            "int f(struct conn *c) { char *p = malloc(4); lookup_user(c->id); c->ops->send(p); return parse_hdr(p); }",
            Language::C,
            Some("f"),
        );
        assert_eq!(calls, ["lookup_user", "parse_hdr"]);
        assert_eq!(types, ["struct conn"]);
    }
}
