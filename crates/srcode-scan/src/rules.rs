//! Rules are data: TOML files of `[[rule]]` tables, embedded in the binary (`rules/*.toml`) and
//! extendable from a user directory. A rule matches with a tree-sitter query and/or a regular
//! expression, narrowed by conditions, and carries its own examples that must (`bad`) and must
//! not (`good`) match.
//!
//! ```toml
//! [[rule]]
//! id = "c.strcpy"
//! cwe = "CWE-120"
//! severity = "high"            # low | medium | high | critical
//! languages = ["c", "cpp"]
//! message = "strcpy copies without a bound"
//! query = '''
//! (call_expression function: (identifier) @f (#eq? @f "strcpy")
//!   arguments: (argument_list (_) (_) @src)) @finding
//! '''
//! # Every condition must hold for the captures a match has (a pattern of the rule that does
//! # not capture the name is not constrained). A condition names a capture and tests any of:
//! # literal = true|false (a constant string literal or not), kind / not_kind = [node kinds],
//! # matches / not_matches = "regex on the capture's text".
//! where = [{ capture = "src", literal = false }]
//! # No finding when this regex (captures spliced in as {name}, escaped) occurs in the scope
//! # (function | file), optionally only after the finding.
//! unless = { pattern = 'strlen\s*\(\s*{src}\s*\)', scope = "function", after = false }
//! # `when` is the opposite: keep the finding only if the regex occurs. With `after = true`, a
//! # `stop` regex ends the searched region (e.g. `free(p)` ... use of p, stopping at `p = `).
//! # when = { pattern = '\b{p}\s*->', after = true, stop = '\b{p}\s*=[^=]' }
//! # `report_at = "p"` on a `when` reports the finding at {p} inside the regex's match (the
//! # first unchecked use) instead of at the query's @finding.
//! bad = ["void f(char *s){ char b[8]; strcpy(b, s); }"]
//! good = ['void f(void){ char b[8]; strcpy(b, "hi"); }']
//! ```
//!
//! Where grammars differ, `query` can be a table with one query per language:
//! `query = { c = '...', cpp = '...' }`.
//!
//! Queries in the subset [`crate::matcher`] supports (node patterns, fields, anchors,
//! alternations, quantifiers, captures, and the `eq`/`match`/`any-of` predicates and their
//! `not-` forms) run on srcode's own matcher and cost nothing to compile; any other query runs on
//! tree-sitter's engine, which compiles it when its language is first scanned.
//!
//! The finding's span is the `@finding` capture (else the whole match). A regex rule's span is
//! its named group `finding` (else the whole match); regex matches inside comments are ignored.

use crate::error::{Result, ScanError};
use crate::RuleInfo;
use serde::Deserialize;
use srcode_core::{Cwe, Language, Severity};
use std::path::Path;

/// The built-in rule packs, embedded at build time.
pub const BUILTIN: &[(&str, &str)] = &[
    ("builtin:c.toml", include_str!("../rules/c.toml")),
    ("builtin:python.toml", include_str!("../rules/python.toml")),
    ("builtin:java.toml", include_str!("../rules/java.toml")),
    (
        "builtin:javascript.toml",
        include_str!("../rules/javascript.toml"),
    ),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    id: String,
    cwe: Option<String>,
    severity: Severity,
    languages: Vec<String>,
    message: String,
    query: Option<QueryDef>,
    regex: Option<String>,
    #[serde(default, rename = "where")]
    conditions: Vec<CondDef>,
    unless: Option<CheckDef>,
    when: Option<CheckDef>,
    #[serde(default)]
    bad: Vec<String>,
    #[serde(default)]
    good: Vec<String>,
    /// Language the examples are written in (default: the first of `languages`).
    example_lang: Option<String>,
}

/// One query for every language of the rule, or one per language where grammars differ
/// (`query = { c = '...', cpp = '...' }`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum QueryDef {
    One(String),
    PerLanguage(std::collections::BTreeMap<String, String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CondDef {
    capture: String,
    kind: Option<Vec<String>>,
    not_kind: Option<Vec<String>>,
    matches: Option<String>,
    not_matches: Option<String>,
    literal: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckDef {
    pattern: String,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    after: bool,
    stop: Option<String>,
    report_at: Option<String>,
}

/// Where a rule's `unless` pattern is searched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The innermost enclosing function (the whole text outside any function).
    #[default]
    Function,
    /// The whole scanned text.
    File,
}

/// A condition on one capture of a query match.
#[derive(Debug, Clone)]
pub struct Condition {
    pub capture: String,
    pub kind: Option<Vec<String>>,
    pub not_kind: Option<Vec<String>>,
    pub matches: Option<regex::bytes::Regex>,
    pub not_matches: Option<regex::bytes::Regex>,
    pub literal: Option<bool>,
}

/// A regex searched around the finding: `unless` drops the finding when it is found (the code
/// guards against the weakness), `when` keeps the finding only when it is found (the weakness
/// needs a second ingredient, e.g. a use after the `free`).
#[derive(Debug, Clone)]
pub struct Check {
    /// Regex source with `{capture}` placeholders, replaced by the escaped capture text.
    pub template: String,
    pub scope: Scope,
    /// Search only after the finding.
    pub after: bool,
    /// With `after`: the search region ends at the first match of this regex (same
    /// placeholders), e.g. where the freed pointer is assigned again.
    pub stop: Option<String>,
    /// Capture names the templates refer to.
    pub captures: Vec<String>,
    /// `when` only: the finding is reported at this capture's text inside the regex match (an
    /// unchecked pointer's first use rather than its allocation), so it lands on the code that
    /// is missing the check even when the allocation came before it (e.g. in a prompt).
    pub report_at: Option<String>,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub info: RuleInfo,
    /// The tree-sitter query per language (empty for regex rules).
    pub queries: Vec<(Language, String)>,
    pub regex: Option<regex::bytes::Regex>,
    pub conditions: Vec<Condition>,
    pub unless: Option<Check>,
    pub when: Option<Check>,
    pub bad: Vec<String>,
    pub good: Vec<String>,
    pub example_lang: Language,
}

fn rule_err(id: &str, path: &str, message: impl Into<String>) -> ScanError {
    ScanError::Rule {
        id: id.to_string(),
        path: path.to_string(),
        message: message.into(),
    }
}

fn compile_regex(id: &str, path: &str, what: &str, src: &str) -> Result<regex::bytes::Regex> {
    // ASCII classes (`\w`, `\b`, `(?i)`) over bytes: code is ASCII where it matters, and the
    // automata are far smaller than their Unicode versions.
    regex::bytes::RegexBuilder::new(src)
        .unicode(false)
        .size_limit(1 << 22)
        .build()
        .map_err(|e| rule_err(id, path, format!("bad {what} regex: {e}")))
}

/// Parses one rule file. `path` names it in errors (`builtin:c.toml` or a file path).
pub fn parse_rules(path: &str, text: &str) -> Result<Vec<Rule>> {
    let file: RuleFile = toml::from_str(text).map_err(|e| ScanError::RuleFile {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(file.rule.len());
    for d in file.rule {
        let id = d.id.trim().to_string();
        if id.is_empty() || id.contains(char::is_whitespace) {
            return Err(rule_err(
                &d.id,
                path,
                "id must be non-empty, without spaces",
            ));
        }
        let cwe = match &d.cwe {
            Some(c) => Some(
                c.parse::<Cwe>()
                    .map_err(|e| rule_err(&id, path, format!("cwe: {e}")))?,
            ),
            None => None,
        };
        if d.languages.is_empty() {
            return Err(rule_err(&id, path, "languages is empty"));
        }
        let mut languages = Vec::new();
        for l in &d.languages {
            let l = l
                .parse::<Language>()
                .map_err(|e| rule_err(&id, path, e.to_string()))?;
            if !languages.contains(&l) {
                languages.push(l);
            }
        }
        if d.query.is_none() == d.regex.is_none() {
            return Err(rule_err(
                &id,
                path,
                "give exactly one of `query` and `regex`",
            ));
        }
        let queries = match d.query {
            None => Vec::new(),
            Some(QueryDef::One(q)) => languages.iter().map(|&l| (l, q.clone())).collect(),
            Some(QueryDef::PerLanguage(map)) => {
                let mut qs = Vec::new();
                for (name, q) in map {
                    let l = name
                        .parse::<Language>()
                        .map_err(|e| rule_err(&id, path, format!("query: {e}")))?;
                    if !languages.contains(&l) {
                        return Err(rule_err(
                            &id,
                            path,
                            format!("query for {l}, which is not in languages"),
                        ));
                    }
                    qs.push((l, q));
                }
                if let Some(l) = languages.iter().find(|l| !qs.iter().any(|(m, _)| m == *l)) {
                    return Err(rule_err(&id, path, format!("no query for {l}")));
                }
                qs
            }
        };
        let regex = match &d.regex {
            Some(r) => Some(compile_regex(&id, path, "match", r)?),
            None => None,
        };
        if regex.is_some() && !d.conditions.is_empty() {
            return Err(rule_err(&id, path, "`where` conditions need a `query`"));
        }
        let mut conditions = Vec::new();
        for c in d.conditions {
            let cond = Condition {
                matches: match &c.matches {
                    Some(r) => Some(compile_regex(&id, path, "where.matches", r)?),
                    None => None,
                },
                not_matches: match &c.not_matches {
                    Some(r) => Some(compile_regex(&id, path, "where.not_matches", r)?),
                    None => None,
                },
                capture: c.capture,
                kind: c.kind,
                not_kind: c.not_kind,
                literal: c.literal,
            };
            if cond.kind.is_none()
                && cond.not_kind.is_none()
                && cond.matches.is_none()
                && cond.not_matches.is_none()
                && cond.literal.is_none()
            {
                return Err(rule_err(
                    &id,
                    path,
                    format!("condition on @{} tests nothing", cond.capture),
                ));
            }
            conditions.push(cond);
        }
        let check = |what: &str, c: Option<CheckDef>| -> Result<Option<Check>> {
            let Some(c) = c else { return Ok(None) };
            let mut captures = placeholders(&c.pattern);
            if let Some(stop) = &c.stop {
                if !c.after {
                    return Err(rule_err(
                        &id,
                        path,
                        format!("{what}.stop needs after = true"),
                    ));
                }
                for n in placeholders(stop) {
                    if !captures.contains(&n) {
                        captures.push(n);
                    }
                }
            }
            if regex.is_some() && !captures.is_empty() {
                return Err(rule_err(
                    &id,
                    path,
                    format!("a regex rule's `{what}` cannot use captures"),
                ));
            }
            if let Some(at) = &c.report_at {
                if what != "when" {
                    return Err(rule_err(
                        &id,
                        path,
                        format!("{what}.report_at: only `when` can move the finding"),
                    ));
                }
                if !placeholders(&c.pattern).contains(at) {
                    return Err(rule_err(
                        &id,
                        path,
                        format!("when.report_at names `{at}`, which the pattern does not use as {{{at}}}"),
                    ));
                }
            }
            // Check the templates compile with placeholder text in place.
            for t in std::iter::once(&c.pattern).chain(c.stop.as_ref()) {
                compile_regex(&id, path, what, &fill(t, |_| Some("x".to_string())))?;
            }
            Ok(Some(Check {
                template: c.pattern,
                scope: c.scope,
                after: c.after,
                stop: c.stop,
                captures,
                report_at: c.report_at,
            }))
        };
        let unless = check("unless", d.unless)?;
        let when = check("when", d.when)?;
        let example_lang = match &d.example_lang {
            Some(l) => l
                .parse::<Language>()
                .map_err(|e| rule_err(&id, path, format!("example_lang: {e}")))?,
            None => languages[0],
        };
        out.push(Rule {
            info: RuleInfo {
                id,
                cwe,
                severity: d.severity,
                languages,
                message: d.message.trim().to_string(),
                source: path.to_string(),
            },
            queries,
            regex,
            conditions,
            unless,
            when,
            bad: d.bad,
            good: d.good,
            example_lang,
        });
    }
    Ok(out)
}

/// The `{name}` placeholders of an `unless` template (`{{`/`}}` and regex repetitions such as
/// `{2,3}` are not placeholders).
pub fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let _ = fill(template, |n| {
        if !names.iter().any(|m: &String| m == n) {
            names.push(n.to_string());
        }
        Some(String::new())
    });
    names
}

/// Replaces `{name}` placeholders with `f(name)` (left as is when `f` returns `None`).
pub fn fill(template: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let is_name = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && after[name_len..].starts_with('}');
        if is_name {
            match f(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            }
            rest = &after[name_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// All built-in rules.
pub fn builtin() -> Result<Vec<Rule>> {
    let mut all = Vec::new();
    for (path, text) in BUILTIN {
        all.extend(parse_rules(path, text)?);
    }
    Ok(all)
}

/// Rules from every `*.toml` file of a directory (sorted by name, not recursive).
pub fn from_dir(dir: &Path) -> Result<Vec<Rule>> {
    let io = |e| ScanError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ScanError::RuleFile {
            path: dir.display().to_string(),
            message: "no *.toml rule file in this directory".into(),
        });
    }
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| ScanError::Io {
            path: f.clone(),
            source: e,
        })?;
        all.extend(parse_rules(&f.display().to_string(), &text)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_skip_repetitions_and_escapes() {
        assert_eq!(
            placeholders(r"free\({p}\);.*{q}\b[a-z]{2,3}"),
            vec!["p", "q"]
        );
        assert_eq!(fill(r"x{a}y{2}", |_| Some("Z".into())), "xZy{2}");
    }

    #[test]
    fn report_at_is_for_when_and_names_a_placeholder() {
        let rule = |check: &str| {
            format!(
                "[[rule]]\nid='x'\nseverity='low'\nlanguages=['c']\nmessage='m'\n\
                 query='(call_expression function: (identifier) @p) @finding'\n{check}\n"
            )
        };
        let e = parse_rules(
            "t.toml",
            &rule("unless = { pattern = '{p}', report_at = 'p' }"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only `when`"), "{e}");
        let e = parse_rules(
            "t.toml",
            &rule("when = { pattern = '{p}', report_at = 'q' }"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`q`"), "{e}");
        let ok = parse_rules(
            "t.toml",
            &rule("when = { pattern = '{p}', report_at = 'p' }"),
        )
        .unwrap();
        assert_eq!(ok[0].when.as_ref().unwrap().report_at.as_deref(), Some("p"));
    }

    #[test]
    fn bad_rule_files_name_the_rule_and_the_problem() {
        let e = parse_rules(
            "t.toml",
            "[[rule]]\nid='x'\nseverity='high'\nlanguages=['c']\nmessage='m'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rule x") && e.contains("exactly one of"), "{e}");
        let e = parse_rules("t.toml", "[[rule]]\nid='x'\nseverity='huge'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml"), "{e}");
        let e = parse_rules(
            "t.toml",
            "[[rule]]\nid='x'\nseverity='low'\nlanguages=['cobol']\nmessage='m'\nregex='a'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cobol"), "{e}");
        let e = parse_rules(
            "t.toml",
            "[[rule]]\nid='x'\nseverity='low'\nlanguages=['c']\nmessage='m'\nregex='('\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad match regex"), "{e}");
    }
}
