//! The rule engine: parses once per text with tree-sitter, runs the rules' queries over the
//! tree (srcode's native matcher; tree-sitter's query engine for queries outside its subset),
//! then the regex rules, and reports findings with byte spans.

use crate::error::{Result, ScanError};
use crate::extract;
use crate::lang;
use crate::matcher::{Kinds, NativeQuery, Walk, WalkLimits};
use crate::rules::{self, Condition, Rule, Scope};
use crate::RuleInfo;
use rayon::prelude::*;
use srcode_core::{Finding, Language, LineIndex};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};
use streaming_iterator::StreamingIterator;
use tree_sitter::{Node, Parser, Query, QueryCursor, Tree};

/// Findings of an answer plus what the reward engine needs to know about its code.
#[derive(Debug, Clone)]
pub struct ScanReport {
    pub findings: Vec<Finding>,
    /// The parts of the answer analysed as code (Markdown fences, or the whole answer).
    pub code: Vec<srcode_core::Span>,
    /// Whether there is code and all of it parses without error nodes.
    pub parses: bool,
}

/// Limits that keep one pathological input from stalling a scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Texts longer than this are refused with an error.
    pub max_bytes: usize,
    /// Parsing that takes longer is abandoned with an error.
    pub parse_timeout: Duration,
    /// Syntax trees nested deeper than this are refused with an error: tree-sitter's query
    /// cursor does work proportional to the depth at every node, so 64k nested brackets would
    /// take seconds. Real code stays far below (the deepest SVEN function nests < 100 levels).
    pub max_depth: usize,
    /// Trees with a longer run of anonymous sibling tokens (punctuation, keywords) are refused
    /// with an error, for the same reason.
    pub max_anonymous_run: usize,
    /// Query matching that takes longer is abandoned with an error (a second guard, after the
    /// depth limit).
    pub match_timeout: Duration,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_bytes: 8 << 20,
            parse_timeout: Duration::from_secs(5),
            max_depth: 2048,
            max_anonymous_run: 4096,
            match_timeout: Duration::from_secs(5),
        }
    }
}

/// The rules of one language: those the native matcher takes ([`crate::matcher`]), and the
/// rest compiled into one tree-sitter query.
struct LangPack {
    kinds: Kinds,
    native: NativeQuery,
    /// Capture index of `@finding` among the native patterns.
    native_finding: Option<u32>,
    query: Option<Query>,
    /// Rule (index into `Scanner::rules`) of each pattern of `query`.
    pattern_rule: Vec<usize>,
    /// Capture index of `@finding` in `query`.
    finding: Option<u32>,
    /// Rules of this language that match by regex.
    regex_rules: Vec<usize>,
    /// Per rule: its conditions with capture indices resolved in the engine that runs it
    /// (empty for other rules).
    conditions: Vec<Vec<(u32, Condition)>>,
}

/// Which engine runs the rules' tree-sitter queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryEngine {
    /// srcode's own matcher for every query in the subset it supports (all built-in rules),
    /// tree-sitter's for the rest. Starts in microseconds instead of tens of milliseconds per
    /// language.
    #[default]
    Native,
    /// tree-sitter's query engine for every rule (a cross-check of the native one).
    TreeSitter,
}

/// The analyser: rules compiled once, reusable from many threads.
pub struct Scanner {
    rules: Vec<Rule>,
    engine: QueryEngine,
    /// Per language (index of `Language::ALL`), compiled on first use unless built eagerly.
    packs: Vec<OnceLock<std::result::Result<LangPack, String>>>,
    limits: ScanLimits,
}

/// Partial matches one pattern may explore at one node before the native matcher gives up on
/// it (tree-sitter's cursor has a similar cap, 1024 in-progress matches here).
const NATIVE_STEP_LIMIT: usize = 100_000;

thread_local! {
    static PARSERS: RefCell<Vec<Option<Parser>>> = RefCell::new((0..5).map(|_| None).collect());
}

/// A compiled `unless`/`when` regex (`None`: the filled-in source does not compile).
type CheckRegex = Option<Arc<regex::bytes::Regex>>;

/// Compiled `unless`/`when` regexes by their filled-in source, shared by all threads: the same
/// identifier recurs in a file, across files and across rollouts, and compiling (~90 µs)
/// costs far more than matching.
static CHECKS: LazyLock<Mutex<HashMap<String, CheckRegex>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A compiled check regex from the shared cache (ASCII classes: `\w`, `\b` over bytes).
fn check_regex<R>(src: String, f: impl FnOnce(Option<&regex::bytes::Regex>) -> R) -> R {
    let cached = CHECKS.lock().ok().and_then(|map| map.get(&src).cloned());
    let re = match cached {
        Some(re) => re,
        None => {
            // Compiled outside the lock; two threads may both compile a new source once.
            let re = regex::bytes::RegexBuilder::new(&src)
                .unicode(false)
                .size_limit(1 << 22)
                .build()
                .ok()
                .map(Arc::new);
            if let Ok(mut map) = CHECKS.lock() {
                if map.len() > 8192 {
                    map.clear();
                }
                map.insert(src, re.clone());
            }
            re
        }
    };
    f(re.as_deref())
}

impl Scanner {
    /// The built-in rules.
    pub fn builtin() -> Result<Self> {
        Self::new(rules::builtin()?)
    }

    /// The built-in rules plus every `*.toml` rule file of `dirs`. A user rule with the id of a
    /// built-in one replaces it.
    pub fn with_rule_dirs(dirs: &[impl AsRef<Path>]) -> Result<Self> {
        Self::new(Self::load_rules(dirs)?)
    }

    /// Like [`Scanner::with_rule_dirs`], but each language's queries are compiled when that
    /// language is first scanned (a query error then surfaces on that scan). Only queries
    /// outside the native matcher's subset cost much to compile (tree-sitter analyses them
    /// against the grammar, 20–60 ms per language).
    pub fn with_rule_dirs_lazy(dirs: &[impl AsRef<Path>]) -> Result<Self> {
        Self::lazy(Self::load_rules(dirs)?)
    }

    fn load_rules(dirs: &[impl AsRef<Path>]) -> Result<Vec<Rule>> {
        let mut all = rules::builtin()?;
        for d in dirs {
            for r in rules::from_dir(d.as_ref())? {
                match all.iter_mut().find(|x| x.info.id == r.info.id) {
                    Some(slot) => *slot = r,
                    None => all.push(r),
                }
            }
        }
        Ok(all)
    }

    /// A scanner over exactly these rules, all queries compiled now. Rule ids must be unique.
    pub fn new(rules: Vec<Rule>) -> Result<Self> {
        let s = Self::lazy(rules)?;
        // The languages compile in parallel (it matters for queries tree-sitter compiles).
        s.prepare(&Language::ALL)?;
        Ok(s)
    }

    /// A scanner whose queries compile per language on first use. Rule ids must be unique.
    pub fn lazy(rules: Vec<Rule>) -> Result<Self> {
        for (i, r) in rules.iter().enumerate() {
            if rules[..i].iter().any(|o| o.info.id == r.info.id) {
                return Err(ScanError::Rule {
                    id: r.info.id.clone(),
                    path: r.info.source.clone(),
                    message: "duplicate rule id".into(),
                });
            }
        }
        let packs = Language::ALL.iter().map(|_| OnceLock::new()).collect();
        Ok(Scanner {
            rules,
            engine: QueryEngine::default(),
            packs,
            limits: ScanLimits::default(),
        })
    }

    /// Compiles the queries of these languages now, in parallel (a lazy scanner would otherwise
    /// compile each on its first scan, holding up the threads that wait for it).
    pub fn prepare(&self, langs: &[Language]) -> Result<()> {
        langs.par_iter().try_for_each(|&l| self.pack(l).map(|_| ()))
    }

    /// The compiled rules of a language (compiling them on first use).
    fn pack(&self, lang: Language) -> Result<&LangPack> {
        self.packs[lang::index(lang)]
            .get_or_init(|| compile_pack(lang, &self.rules, self.engine).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ScanError::Unsupported(format!("rules for {lang}: {e}")))
    }

    /// Ids of the rules of `lang` whose queries tree-sitter's engine runs (with
    /// [`QueryEngine::Native`]: those outside the native matcher's subset).
    pub fn tree_sitter_rules(&self, lang: Language) -> Result<Vec<&str>> {
        let pack = self.pack(lang)?;
        let mut ids: Vec<&str> = pack
            .pattern_rule
            .iter()
            .map(|&ri| self.rules[ri].info.id.as_str())
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// Chooses the query engine. Languages already compiled are compiled again on next use.
    pub fn with_engine(mut self, engine: QueryEngine) -> Self {
        self.engine = engine;
        self.packs = Language::ALL.iter().map(|_| OnceLock::new()).collect();
        self
    }

    /// Replaces the input limits.
    pub fn with_limits(mut self, limits: ScanLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The rules, in load order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// Metadata of every rule (for reports).
    pub fn rule_infos(&self) -> Vec<RuleInfo> {
        self.rules.iter().map(|r| r.info.clone()).collect()
    }

    /// Scans source code. `file` is copied into the findings.
    pub fn scan_code(&self, code: &[u8], lang: Language, file: &str) -> Result<Vec<Finding>> {
        let mut raw = Vec::new();
        self.scan_region(code, 0, code.len(), lang, &mut raw)?;
        Ok(self.finish(code, raw, file))
    }

    /// Scans an LLM answer: the code of its Markdown fences in `lang` (or the whole answer when
    /// it has no fence, see [`extract::code_spans`]). Offsets are into `answer`.
    pub fn scan_answer(&self, answer: &[u8], lang: Language, file: &str) -> Result<Vec<Finding>> {
        let mut raw = Vec::new();
        for span in extract::code_spans(answer, lang) {
            self.scan_region(answer, span.start, span.end, lang, &mut raw)?;
        }
        Ok(self.finish(answer, raw, file))
    }

    /// [`Scanner::scan_answer`] with what a reward needs besides the findings: which parts of
    /// the answer are code, and whether they parse without error nodes.
    pub fn scan_answer_report(
        &self,
        answer: &[u8],
        lang: Language,
        file: &str,
    ) -> Result<ScanReport> {
        let mut raw = Vec::new();
        let spans = extract::code_spans(answer, lang);
        let mut parses = !spans.is_empty();
        for span in &spans {
            parses &= self.scan_region(answer, span.start, span.end, lang, &mut raw)?;
        }
        Ok(ScanReport {
            findings: self.finish(answer, raw, file),
            code: spans,
            parses,
        })
    }

    /// Sorts, removes duplicates and fills in lines and columns.
    fn finish(&self, text: &[u8], mut raw: Vec<(usize, usize, usize)>, file: &str) -> Vec<Finding> {
        raw.sort_unstable();
        raw.dedup();
        if raw.is_empty() {
            return Vec::new();
        }
        let ix = LineIndex::new(text);
        raw.into_iter()
            .map(|(start, end, ri)| {
                let info = &self.rules[ri].info;
                let (line, column) = ix.position(start);
                let (end_line, end_column) = ix.position(end);
                Finding {
                    rule_id: info.id.clone(),
                    cwe: info.cwe,
                    severity: info.severity,
                    message: info.message.clone(),
                    file: file.to_string(),
                    byte_start: start,
                    byte_end: end,
                    line,
                    column,
                    end_line,
                    end_column,
                    tool: "srcode".into(),
                }
            })
            .collect()
    }

    /// Scans `text[start..end]`, pushing `(byte_start, byte_end, rule)` with offsets into `text`.
    /// Returns whether the region parsed without error nodes.
    fn scan_region(
        &self,
        text: &[u8],
        start: usize,
        end: usize,
        lang: Language,
        out: &mut Vec<(usize, usize, usize)>,
    ) -> Result<bool> {
        let code = &text[start..end];
        if code.len() > self.limits.max_bytes {
            return Err(ScanError::Unsupported(format!(
                "input of {} bytes exceeds the limit of {} bytes",
                code.len(),
                self.limits.max_bytes
            )));
        }
        let pack = self.pack(lang)?;
        let tree = self.parse(code, lang)?;
        let root = tree.root_node();
        let deadline = Instant::now() + self.limits.match_timeout;
        // The native matcher reads the tree once, checking its shape (before tree-sitter's
        // cursor, which a pathological shape would make quadratic, ever sees it), and runs the
        // native patterns on what it read.
        let walk_limits = WalkLimits {
            max_depth: self.limits.max_depth,
            max_anonymous_run: self.limits.max_anonymous_run,
            step_limit: NATIVE_STEP_LIMIT,
        };
        let walk = pack.native.for_each_match(
            &pack.kinds,
            &tree,
            code,
            walk_limits,
            &mut || Instant::now() > deadline,
            &mut |ri, caps| {
                let name_index = |name: &str| pack.native.capture_index(name);
                if let Some((s, e)) = self.accept(
                    lang,
                    code,
                    ri,
                    caps,
                    pack.native_finding,
                    &pack.conditions[ri],
                    name_index,
                ) {
                    out.push((start + s, start + e, ri));
                }
            },
        );
        if let Walk::Refused(problem) = walk {
            return Err(ScanError::Unsupported(format!(
                "{lang} syntax tree {problem}"
            )));
        }
        // A walk stopped by the deadline leaves tree-sitter's query unrun (an error below).
        if let Some(q) = pack.query.as_ref().filter(|_| walk == Walk::Complete) {
            let mut cursor = QueryCursor::new();
            cursor.set_match_limit(1024);
            let mut past_deadline = |_: &tree_sitter::QueryCursorState| Instant::now() > deadline;
            let opts = tree_sitter::QueryCursorOptions::new().progress_callback(&mut past_deadline);
            let mut matches = cursor.matches_with_options(q, root, code, opts);
            let mut caps = Vec::new();
            while let Some(m) = matches.next() {
                if Instant::now() > deadline {
                    break;
                }
                let Some(&ri) = pack.pattern_rule.get(m.pattern_index) else {
                    continue;
                };
                caps.clear();
                caps.extend(m.captures.iter().map(|c| (c.index, c.node)));
                let name_index = |name: &str| q.capture_index_for_name(name);
                if let Some((s, e)) = self.accept(
                    lang,
                    code,
                    ri,
                    &caps,
                    pack.finding,
                    &pack.conditions[ri],
                    name_index,
                ) {
                    out.push((start + s, start + e, ri));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(ScanError::Unsupported(format!(
                "matching the {lang} rules took longer than {:?}",
                self.limits.match_timeout
            )));
        }
        for &ri in &pack.regex_rules {
            let rule = &self.rules[ri];
            let Some(re) = &rule.regex else { continue };
            for caps in re.captures_iter(code) {
                let Some(whole) = caps.get(0) else { continue };
                let m = caps.name("finding").unwrap_or(whole);
                if m.start() == m.end() {
                    continue;
                }
                let Some(node) = root.descendant_for_byte_range(m.start(), m.end()) else {
                    continue;
                };
                if in_comment(node) {
                    continue;
                }
                let span = (m.start(), m.end());
                if let Some((s, e)) = checked_span(lang, code, rule, node, span, |_| None, |_| None)
                {
                    out.push((start + s, start + e, ri));
                }
            }
        }
        Ok(!root.has_error())
    }

    /// The span of a query match of rule `ri`, if the rule's conditions and checks let it stand.
    /// `caps` are (capture index, node); `name_index` resolves capture names in the same
    /// engine's numbering.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &self,
        lang: Language,
        code: &[u8],
        ri: usize,
        caps: &[(u32, Node<'_>)],
        finding: Option<u32>,
        conditions: &[(u32, Condition)],
        name_index: impl Fn(&str) -> Option<u32>,
    ) -> Option<(usize, usize)> {
        let rule = &self.rules[ri];
        let nodes = |ci: u32| caps.iter().filter(move |c| c.0 == ci).map(|c| c.1);
        if !conditions
            .iter()
            .all(|(ci, c)| condition_holds(lang, code, nodes(*ci), c))
        {
            return None;
        }
        // The span covers the `@finding` nodes (anchored at the last), else every capture
        // (anchored at the first).
        let has_finding = caps.iter().any(|c| finding == Some(c.0));
        let mut span: Option<(usize, usize)> = None;
        let mut anchor: Option<Node> = None;
        for &(_, node) in caps.iter().filter(|c| !has_finding || finding == Some(c.0)) {
            let (s, e) = (node.start_byte(), node.end_byte());
            span = Some(span.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
            if has_finding || anchor.is_none() {
                anchor = Some(node);
            }
        }
        let ((s, e), anchor) = (span?, anchor?);
        let capture_node = |name: &str| nodes(name_index(name)?).next();
        let capture_text = |name: &str| -> Option<String> {
            let node = capture_node(name)?;
            let t = &code[node.start_byte()..node.end_byte()];
            Some(regex::escape(&String::from_utf8_lossy(t)))
        };
        checked_span(lang, code, rule, anchor, (s, e), capture_text, capture_node)
    }

    fn parse(&self, code: &[u8], lang: Language) -> Result<Tree> {
        PARSERS.with(|cell| {
            let mut parsers = cell.borrow_mut();
            let slot = &mut parsers[lang::index(lang)];
            if slot.is_none() {
                let mut p = Parser::new();
                p.set_language(&lang::grammar(lang)).map_err(|e| {
                    ScanError::Unsupported(format!("tree-sitter grammar for {lang}: {e}"))
                })?;
                *slot = Some(p);
            }
            let Some(parser) = slot.as_mut() else {
                return Err(ScanError::Unsupported("parser unavailable".into()));
            };
            let deadline = Instant::now() + self.limits.parse_timeout;
            let mut past_deadline = |_: &tree_sitter::ParseState| Instant::now() > deadline;
            let opts = tree_sitter::ParseOptions::new().progress_callback(&mut past_deadline);
            let len = code.len();
            let tree = parser.parse_with_options(
                &mut |i, _| if i < len { &code[i..] } else { &[] },
                None,
                Some(opts),
            );
            match tree {
                Some(t) => Ok(t),
                None => {
                    parser.reset();
                    Err(ScanError::Unsupported(format!(
                        "parsing {} bytes of {lang} took longer than {:?}",
                        len, self.limits.parse_timeout
                    )))
                }
            }
        })
    }

    /// Checks every rule's own examples: each `bad` example must produce a finding of that rule,
    /// each `good` example must not. Returns one error per violation.
    pub fn check_examples(&self) -> Vec<ScanError> {
        let mut errs = Vec::new();
        for r in &self.rules {
            let id = &r.info.id;
            if r.bad.is_empty() || r.good.is_empty() {
                errs.push(ScanError::Example {
                    id: id.clone(),
                    message: "needs at least one `bad` and one `good` example".into(),
                });
            }
            for (want, list) in [(true, &r.bad), (false, &r.good)] {
                for ex in list.iter() {
                    match self.scan_code(ex.as_bytes(), r.example_lang, "") {
                        Ok(f) => {
                            let hit = f.iter().any(|f| &f.rule_id == id);
                            if hit != want {
                                errs.push(ScanError::Example {
                                    id: id.clone(),
                                    message: format!(
                                        "{} example {}: {:?}",
                                        if want { "bad" } else { "good" },
                                        if want {
                                            "was not flagged"
                                        } else {
                                            "was flagged"
                                        },
                                        ex
                                    ),
                                });
                            }
                        }
                        Err(e) => errs.push(ScanError::Example {
                            id: id.clone(),
                            message: format!("example {ex:?} could not be scanned: {e}"),
                        }),
                    }
                }
            }
        }
        errs
    }
}

fn compile_pack(lang: Language, rules: &[Rule], engine: QueryEngine) -> Result<LangPack> {
    let grammar = lang::grammar(lang);
    let kinds = Kinds::new(&grammar);
    let mut native = NativeQuery::new();
    let mut native_rules = Vec::new();
    let mut src = String::new();
    let mut ranges = Vec::new(); // (start byte in src, rule index)
    let mut regex_rules = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if !r.info.languages.contains(&lang) {
            continue;
        }
        if let Some((_, q)) = r.queries.iter().find(|(l, _)| *l == lang) {
            let builtin = r.info.source.starts_with("builtin:");
            if engine == QueryEngine::Native && native.add(&kinds, q, i).is_ok() {
                native_rules.push(i);
                // A user's query is also checked by tree-sitter, which names errors the
                // native matcher would not see (a field the node kind cannot have); the
                // built-in queries are checked by the test suite.
                if !builtin {
                    query_error(&grammar, r, lang)?;
                }
            } else {
                ranges.push((src.len(), i));
                src.push_str(q);
                src.push('\n');
            }
        } else if r.regex.is_some() {
            regex_rules.push(i);
        }
    }
    let mut conditions = vec![Vec::new(); rules.len()];
    for &i in &native_rules {
        check_capture_names(&rules[i], lang)?;
        for c in &rules[i].conditions {
            if let Some(ci) = native.capture_index(&c.capture) {
                conditions[i].push((ci, c.clone()));
            }
        }
    }
    let native_finding = native.capture_index("finding");
    let mut pack = LangPack {
        kinds,
        native,
        native_finding,
        query: None,
        pattern_rule: Vec::new(),
        finding: None,
        regex_rules,
        conditions,
    };
    if ranges.is_empty() {
        return Ok(pack);
    }
    let query = match Query::new(&grammar, &src) {
        Ok(q) => q,
        Err(_) => {
            // Find the culprit to name it.
            for &(_, i) in &ranges {
                query_error(&grammar, &rules[i], lang)?;
            }
            return Err(ScanError::Unsupported(format!(
                "the {lang} rules compile one by one but not together"
            )));
        }
    };
    let mut pattern_rule = Vec::with_capacity(query.pattern_count());
    for p in 0..query.pattern_count() {
        let at = query.start_byte_for_pattern(p);
        let k = ranges.partition_point(|&(s, _)| s <= at);
        pattern_rule.push(ranges[k.saturating_sub(1)].1);
    }
    for &(_, i) in &ranges {
        let r = &rules[i];
        check_capture_names(r, lang)?;
        for c in &r.conditions {
            if let Some(ci) = query.capture_index_for_name(&c.capture) {
                pack.conditions[i].push((ci, c.clone()));
            }
        }
    }
    pack.finding = query.capture_index_for_name("finding");
    pack.pattern_rule = pattern_rule;
    pack.query = Some(query);
    Ok(pack)
}

/// tree-sitter's verdict on one rule's query, as a rule error naming it.
fn query_error(grammar: &tree_sitter::Language, r: &Rule, lang: Language) -> Result<()> {
    match Query::new(grammar, query_text(r, lang)) {
        Ok(_) => Ok(()),
        Err(e) => Err(ScanError::Rule {
            id: r.info.id.clone(),
            path: r.info.source.clone(),
            message: format!(
                "query does not compile for {lang} ({:?}): {} at row {}, column {}",
                e.kind, e.message, e.row, e.column
            ),
        }),
    }
}

/// Every capture a rule's conditions and checks name is captured by its query.
fn check_capture_names(r: &Rule, lang: Language) -> Result<()> {
    let q_text = query_text(r, lang);
    let uses = |name: &str| {
        q_text.match_indices(&format!("@{name}")).any(|(at, m)| {
            !q_text[at + m.len()..]
                .starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '.')
        })
    };
    let mut names: Vec<&str> = r.conditions.iter().map(|c| c.capture.as_str()).collect();
    for c in r.unless.iter().chain(&r.when) {
        names.extend(c.captures.iter().map(String::as_str));
    }
    for name in names {
        if !uses(name) {
            return Err(ScanError::Rule {
                id: r.info.id.clone(),
                path: r.info.source.clone(),
                message: format!("refers to @{name}, which its query does not capture"),
            });
        }
    }
    Ok(())
}

fn query_text(r: &Rule, lang: Language) -> &str {
    r.queries
        .iter()
        .find(|(l, _)| *l == lang)
        .map_or("", |(_, q)| q.as_str())
}

fn condition_holds<'a>(
    lang: Language,
    code: &[u8],
    nodes: impl Iterator<Item = Node<'a>>,
    c: &Condition,
) -> bool {
    for n in nodes {
        let text = &code[n.start_byte()..n.end_byte()];
        let kind = n.kind();
        if c.kind
            .as_ref()
            .is_some_and(|ks| !ks.iter().any(|k| k == kind))
            || c.not_kind
                .as_ref()
                .is_some_and(|ks| ks.iter().any(|k| k == kind))
            || c.matches.as_ref().is_some_and(|r| !r.is_match(text))
            || c.not_matches.as_ref().is_some_and(|r| r.is_match(text))
            || c.literal
                .is_some_and(|want| lang::is_constant_string(lang, n) != want)
        {
            return false;
        }
    }
    // A condition constrains a capture the match has; patterns of a rule that do not capture
    // it (or leave an optional capture empty) are not constrained by it.
    true
}

fn in_comment(mut node: Node<'_>) -> bool {
    loop {
        if lang::is_comment(node.kind()) {
            return true;
        }
        match node.parent() {
            Some(p) => node = p,
            None => return false,
        }
    }
}

/// A finding's span `(s, e)` once the rule's `unless` and `when` have had their say: `None`
/// when they drop it, else the span, moved by `when.report_at` onto that capture's text inside
/// the `when` match (its first use). `capture_text` fills the checks' placeholders;
/// `capture_node` finds a capture's node.
fn checked_span<'t>(
    lang: Language,
    code: &[u8],
    rule: &Rule,
    anchor: Node<'t>,
    (s, e): (usize, usize),
    capture_text: impl Fn(&str) -> Option<String>,
    capture_node: impl Fn(&str) -> Option<Node<'t>>,
) -> Option<(usize, usize)> {
    if let Some(u) = &rule.unless {
        if find_check(lang, code, anchor, e, u, &capture_text, false).is_some() {
            return None;
        }
    }
    let Some(w) = &rule.when else {
        return Some((s, e));
    };
    let (ms, me) = find_check(
        lang,
        code,
        anchor,
        e,
        w,
        &capture_text,
        w.report_at.is_some(),
    )?;
    let at = w.report_at.as_deref().and_then(|name| {
        let node = capture_node(name)?;
        let t = code.get(node.start_byte()..node.end_byte())?;
        if t.is_empty() {
            return None;
        }
        let i = code[ms..me].windows(t.len()).position(|x| x == t)?;
        Some((ms + i, ms + i + t.len()))
    });
    Some(at.unwrap_or((s, e)))
}

/// Whether a rule's `unless`/`when` regex occurs in its scope around `anchor`, and with
/// `locate`, where it first matches (without, only whether: `Some` of an empty span).
fn find_check(
    lang: Language,
    code: &[u8],
    anchor: Node<'_>,
    finding_end: usize,
    c: &rules::Check,
    capture_text: impl Fn(&str) -> Option<String>,
    locate: bool,
) -> Option<(usize, usize)> {
    let (mut s, mut e) = match c.scope {
        Scope::File => (0, code.len()),
        Scope::Function => {
            let mut n = anchor;
            loop {
                if lang::is_function(lang, n.kind()) {
                    break (n.start_byte(), n.end_byte());
                }
                match n.parent() {
                    Some(p) => n = p,
                    None => break (0, code.len()),
                }
            }
        }
    };
    e = e.min(code.len());
    if c.after {
        s = s.max(finding_end);
        if let Some(stop) = &c.stop {
            if s < e {
                let cut = check_regex(rules::fill(stop, &capture_text), |re| {
                    re.and_then(|re| re.find(&code[s..e]))
                        .map(|m| s + m.start())
                });
                if let Some(cut) = cut {
                    e = cut;
                }
            }
        }
    }
    if s >= e {
        return None;
    }
    check_regex(rules::fill(&c.template, &capture_text), |re| {
        let (re, hay) = (re?, &code[s..e]);
        if locate {
            re.find(hay).map(|m| (s + m.start(), s + m.end()))
        } else {
            re.is_match(hay).then_some((s, s))
        }
    })
}
