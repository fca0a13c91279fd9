//! A tree-sitter query matcher of srcode's own, for the subset of the query language the rules
//! use. tree-sitter's `Query::new` analyses every pattern against the grammar's parse tables,
//! which costs 20–60 ms per language pack (C++ is the slowest) and cannot be cached across
//! processes; for a command-line scan of a few files that is most of the run. This matcher
//! compiles a pattern in microseconds, reads the syntax tree once into a flat array (kinds,
//! fields, children lists), and tries at each node only the patterns whose root node kind it
//! has.
//!
//! Supported: node patterns `(kind ...)`, `(_)`, `_`, anonymous nodes `"text"`, fields
//! `name: pattern`, anchors `.`, alternations `[...]`, quantifiers `?` `*` `+`, captures
//! `@name`, a grouping around one pattern with its predicates, and the text predicates
//! `#eq?` `#not-eq?` `#match?` `#not-match?` `#any-of?` `#not-any-of?`. Anything else (negated
//! fields, supertypes, sibling groups, the `#any-…` forms, other predicates) is
//! [`CompileError::Unsupported`]: the caller then uses tree-sitter's own engine for that rule,
//! which also reports real syntax errors by name.
//!
//! The matches reported are tree-sitter's: every assignment of children to steps that capture
//! something or have children, the first fitting sibling for bare uncaptured steps, and no
//! match whose captures another match at the same node extends. The scanner's differential
//! tests and fuzz target check that both engines find the same.

use std::collections::HashMap;
use std::num::NonZeroU16;
use tree_sitter::{Language, Node, Tree};

/// Why a query was not compiled by this matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// Uses something outside the supported subset (or is malformed): let tree-sitter compile it.
    Unsupported(String),
}

/// Node kinds of a grammar, with aliases of one visible name folded into one id (queries match
/// by name, and a grammar can have several symbols of the same name).
pub struct Kinds {
    canon: Vec<u16>,
    by_name: HashMap<(String, bool), u16>,
    language: Language,
}

impl Kinds {
    pub fn new(language: &Language) -> Self {
        let n = language.node_kind_count();
        let mut canon = Vec::with_capacity(n);
        let mut by_name: HashMap<(String, bool), u16> = HashMap::new();
        for id in 0..n {
            let id = id as u16;
            let name = language.node_kind_for_id(id).unwrap_or("");
            let named = language.node_kind_is_named(id);
            let c = *by_name.entry((name.to_string(), named)).or_insert(id);
            canon.push(c);
        }
        Kinds {
            canon,
            by_name,
            language: language.clone(),
        }
    }

    #[inline]
    fn canonical(&self, kind_id: u16) -> u16 {
        self.canon
            .get(kind_id as usize)
            .copied()
            .unwrap_or(u16::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Kind(u16),
    Named,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quant {
    One,
    Opt,
    Star,
    Plus,
}

#[derive(Debug, Clone)]
struct NodePat {
    test: Test,
    /// A field of its own, inside an alternation (`[left: (x) right: (y)]`).
    field: Option<NonZeroU16>,
    caps: Vec<u32>,
    children: Vec<Child>,
    /// `.` after the last child: no named sibling may follow it.
    anchor_last: bool,
}

#[derive(Debug, Clone)]
struct Child {
    field: Option<NonZeroU16>,
    alts: Vec<NodePat>,
    quant: Quant,
    /// `.` before this child: it is the first named node after the previous child (or the
    /// parent's first named child).
    anchored: bool,
    /// Whether later siblings are tried for this step once one matched. tree-sitter keeps
    /// that alternative only for steps that capture something or have children of their own
    /// (which might fail); a bare uncaptured step such as `(_)` takes the first sibling it
    /// fits, so `(argument_list (_) . (_) @second)` means the second argument.
    splits: bool,
}

impl Child {
    fn new(field: Option<NonZeroU16>, alts: Vec<NodePat>, quant: Quant, anchored: bool) -> Self {
        let splits = alts
            .iter()
            .any(|a| !a.caps.is_empty() || !a.children.is_empty());
        Child {
            field,
            alts,
            quant,
            anchored,
            splits,
        }
    }
}

#[derive(Debug, Clone)]
enum Pred {
    /// `#eq?` against a string, `#any-of?` (several strings), `#match?`; `positive: false`
    /// for the `not-` forms.
    Text {
        cap: u32,
        test: TextTest,
        positive: bool,
    },
    /// `#eq? @a @b`.
    SameText { a: u32, b: u32, positive: bool },
}

#[derive(Debug, Clone)]
enum TextTest {
    OneOf(Vec<Vec<u8>>),
    Regex(regex::bytes::Regex),
}

impl TextTest {
    fn holds(&self, text: &[u8]) -> bool {
        match self {
            TextTest::OneOf(v) => v.iter().any(|s| s.as_slice() == text),
            TextTest::Regex(r) => r.is_match(text),
        }
    }
}

/// One top-level pattern.
#[derive(Debug, Clone)]
struct Pattern {
    owner: usize,
    alts: Vec<NodePat>,
    preds: Vec<Pred>,
    /// Has a child with `?`, `*` or `+` somewhere.
    optional: bool,
}

fn has_quantifier(np: &NodePat) -> bool {
    np.children
        .iter()
        .any(|c| c.quant != Quant::One || c.alts.iter().any(has_quantifier))
}

/// Compiled patterns of one language, each tagged with an owner (the rule it belongs to).
pub struct NativeQuery {
    patterns: Vec<Pattern>,
    capture_names: Vec<String>,
    /// Per canonical kind id: (pattern, alternative) whose root tests that kind.
    roots: Vec<Vec<(u32, u32)>>,
    /// Roots `(_)` and `_`, tried at every node.
    wild_roots: Vec<(u32, u32)>,
}

impl Default for NativeQuery {
    fn default() -> Self {
        Self::new()
    }
}

impl NativeQuery {
    pub fn new() -> Self {
        NativeQuery {
            patterns: Vec::new(),
            capture_names: Vec::new(),
            roots: Vec::new(),
            wild_roots: Vec::new(),
        }
    }

    /// Capture id of a name used by any added pattern.
    pub fn capture_index(&self, name: &str) -> Option<u32> {
        self.capture_names
            .iter()
            .position(|n| n == name)
            .map(|i| i as u32)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Compiles `source` (one or more patterns) and adds its patterns under `owner`. On error
    /// nothing is added.
    pub fn add(&mut self, kinds: &Kinds, source: &str, owner: usize) -> Result<(), CompileError> {
        let toks = lex(source)?;
        let mut names = self.capture_names.clone();
        let mut p = Parser {
            toks: &toks,
            at: 0,
            kinds,
            names: &mut names,
            preds: Vec::new(),
        };
        let mut pats = Vec::new();
        while p.at < toks.len() {
            p.preds.clear();
            let (alts, quant) = p.pattern()?;
            if quant != Quant::One {
                return Err(unsupported("a quantifier on a top-level pattern"));
            }
            pats.push(Pattern {
                owner,
                optional: alts.iter().any(has_quantifier),
                alts,
                preds: std::mem::take(&mut p.preds),
            });
        }
        if pats.is_empty() {
            return Err(unsupported("an empty query"));
        }
        self.capture_names = names;
        for pat in pats {
            let pi = self.patterns.len() as u32;
            for (ai, alt) in pat.alts.iter().enumerate() {
                match alt.test {
                    Test::Kind(k) => {
                        let k = k as usize;
                        if self.roots.len() <= k {
                            self.roots.resize(k + 1, Vec::new());
                        }
                        self.roots[k].push((pi, ai as u32));
                    }
                    Test::Named | Test::Any => self.wild_roots.push((pi, ai as u32)),
                }
            }
            self.patterns.push(pat);
        }
        Ok(())
    }

    /// Calls `f(owner, captures)` for every match in `tree`. The tree is first read once into
    /// a flat array (checking its shape against `limits`, see [`Walk`]); patterns are then
    /// tried node by node on that array instead of through tree-sitter's cursor, which made
    /// every attempt and every listing of a node's children a chain of C calls. `stop` is
    /// asked every few thousand nodes whether to give up.
    pub fn for_each_match<'t>(
        &self,
        kinds: &Kinds,
        tree: &'t Tree,
        code: &[u8],
        limits: WalkLimits,
        stop: &mut dyn FnMut() -> bool,
        f: OnMatch<'_, 't>,
    ) -> Walk {
        let flat = match FlatTree::read(kinds, tree, limits, stop) {
            Ok(t) => t,
            Err(w) => return w,
        };
        let mut ctx = Ctx {
            tree: &flat,
            code,
            caps: Vec::new(),
            steps: 0,
            limit: limits.step_limit,
        };
        let mut found: Vec<Vec<(u32, Node<'t>)>> = Vec::new();
        for (i, n) in flat.nodes.iter().enumerate() {
            let by_kind = self
                .roots
                .get(n.kind as usize)
                .map_or(&[][..], |v| v.as_slice());
            for &(pi, ai) in by_kind.iter().chain(&self.wild_roots) {
                let pat = &self.patterns[pi as usize];
                ctx.steps = 0;
                ctx.caps.clear();
                let alt = &pat.alts[ai as usize];
                if !pat.optional {
                    ctx.match_node(pat, alt, i as u32, &mut |ctx| {
                        if ctx.cross_preds_hold(pat) {
                            f(pat.owner, &ctx.caps);
                        }
                    });
                    continue;
                }
                found.clear();
                ctx.match_node(pat, alt, i as u32, &mut |ctx| {
                    if ctx.cross_preds_hold(pat) {
                        found.push(ctx.caps.clone());
                    }
                });
                // Like tree-sitter, a match is not reported when another match of the same
                // pattern at the same node captured everything it did and more (an optional
                // child that could match, did). Only patterns with optional or repeated
                // children can have such pairs; past a few hundred matches at one node the
                // quadratic comparison is skipped.
                let filter = found.len() > 1 && found.len() <= 256;
                for (i, m) in found.iter().enumerate() {
                    let dominated = filter
                        && found.iter().enumerate().any(|(j, o)| {
                            j != i && o.len() > m.len() && m.iter().all(|c| o.contains(c))
                        });
                    if !dominated {
                        f(pat.owner, m);
                    }
                }
            }
            if (i + 1).is_multiple_of(4096) && stop() {
                return Walk::Stopped;
            }
        }
        Walk::Complete
    }
}

/// One node of the flattened tree: what patterns test, read once.
#[derive(Clone, Copy)]
struct FlatNode<'t> {
    node: Node<'t>,
    /// Canonical kind id (see [`Kinds`]).
    kind: u16,
    /// The field this node fills in its parent.
    field: Option<NonZeroU16>,
    named: bool,
    error: bool,
    /// Its children: `FlatTree::kids[kids_start..kids_start + kids_len]`.
    kids_start: u32,
    kids_len: u32,
}

/// A syntax tree in preorder, with each node's children listed contiguously.
struct FlatTree<'t> {
    nodes: Vec<FlatNode<'t>>,
    kids: Vec<u32>,
}

impl<'t> FlatTree<'t> {
    /// Reads `tree` with one cursor walk, refusing shapes outside `limits`.
    fn read(
        kinds: &Kinds,
        tree: &'t Tree,
        limits: WalkLimits,
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<Self, Walk> {
        let root = tree.root_node();
        let mut nodes: Vec<FlatNode<'t>> = Vec::with_capacity(root.descendant_count() + 1);
        let mut parent: Vec<u32> = Vec::with_capacity(nodes.capacity());
        let mut cursor = tree.walk();
        // Ancestors of the cursor's node, by index; the length of the current run of
        // anonymous siblings, and the runs of the levels above.
        let mut path: Vec<u32> = Vec::new();
        let mut run = 0usize;
        let mut runs: Vec<usize> = Vec::new();
        loop {
            let node = cursor.node();
            let named = node.is_named();
            run = if named { 0 } else { run + 1 };
            if run > limits.max_anonymous_run {
                return Err(Walk::Refused(format!(
                    "has a run of more than {} bare tokens side by side",
                    limits.max_anonymous_run
                )));
            }
            parent.push(path.last().copied().unwrap_or(u32::MAX));
            // tree-sitter's ERROR symbol is the largest id (what `Node::is_error` tests).
            let raw = node.kind_id();
            nodes.push(FlatNode {
                node,
                kind: kinds.canonical(raw),
                field: cursor.field_id(),
                named,
                error: raw == u16::MAX,
                kids_start: 0,
                kids_len: 0,
            });
            if nodes.len().is_multiple_of(4096) && stop() {
                return Err(Walk::Stopped);
            }
            if cursor.goto_first_child() {
                path.push((nodes.len() - 1) as u32);
                if path.len() > limits.max_depth {
                    return Err(Walk::Refused(format!(
                        "nests deeper than {} levels",
                        limits.max_depth
                    )));
                }
                runs.push(run);
                run = 0;
                continue;
            }
            loop {
                if cursor.goto_next_sibling() {
                    break;
                }
                if !cursor.goto_parent() {
                    return Ok(Self::link(nodes, &parent));
                }
                path.pop();
                run = runs.pop().unwrap_or(0);
            }
        }
    }

    /// Lists each node's children contiguously (a counting sort of the nodes by parent; the
    /// preorder keeps siblings in order).
    fn link(mut nodes: Vec<FlatNode<'t>>, parent: &[u32]) -> Self {
        for &p in parent.iter().filter(|&&p| p != u32::MAX) {
            nodes[p as usize].kids_len += 1;
        }
        let mut next = 0u32;
        for n in nodes.iter_mut() {
            n.kids_start = next;
            next += n.kids_len;
        }
        let mut kids = vec![0u32; next as usize];
        let mut filled = vec![0u32; nodes.len()];
        for (i, &p) in parent.iter().enumerate() {
            if p != u32::MAX {
                let p = p as usize;
                kids[(nodes[p].kids_start + filled[p]) as usize] = i as u32;
                filled[p] += 1;
            }
        }
        FlatTree { nodes, kids }
    }

    fn kids(&self, i: u32) -> &[u32] {
        let n = &self.nodes[i as usize];
        let s = n.kids_start as usize;
        &self.kids[s..s + n.kids_len as usize]
    }
}

/// The captures of one match: `(capture id, node)` in pattern order.
pub type Captures<'t> = [(u32, Node<'t>)];

/// What [`NativeQuery::for_each_match`] calls with each match: its owner and captures.
pub type OnMatch<'f, 't> = &'f mut dyn FnMut(usize, &Captures<'t>);

/// Limits of [`NativeQuery::for_each_match`]. Trees deeper than `max_depth` or with a longer
/// run of anonymous siblings are refused: tree-sitter's own query cursor does work
/// proportional to both at every node, so such trees would make a later tree-sitter query
/// quadratic. `step_limit` caps the partial matches one pattern explores at one node (a guard
/// against patterns whose alignments multiply).
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub max_depth: usize,
    pub max_anonymous_run: usize,
    pub step_limit: usize,
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk {
    /// Every node was visited.
    Complete,
    /// `stop` said to stop.
    Stopped,
    /// The tree has a shape outside the limits: why.
    Refused(String),
}

fn unsupported(what: &str) -> CompileError {
    CompileError::Unsupported(what.to_string())
}

struct Ctx<'a, 't> {
    tree: &'a FlatTree<'t>,
    code: &'a [u8],
    caps: Vec<(u32, Node<'t>)>,
    steps: usize,
    limit: usize,
}

type Cont<'k, 'a, 't> = &'k mut dyn FnMut(&mut Ctx<'a, 't>);

impl<'a, 't> Ctx<'a, 't> {
    fn text(&self, n: Node<'_>) -> &'a [u8] {
        self.code.get(n.start_byte()..n.end_byte()).unwrap_or(&[])
    }

    /// The single-capture predicates about `cap` hold for one more node of it (each node of a
    /// capture must satisfy them, so they are checked as nodes are bound).
    fn preds_hold_for(&self, pat: &Pattern, cap: u32, node: &FlatNode<'_>) -> bool {
        pat.preds.iter().all(|p| match p {
            Pred::Text {
                cap: c,
                test,
                positive,
            } => *c != cap || test.holds(self.text(node.node)) == *positive,
            Pred::SameText { .. } => true,
        })
    }

    /// Capture-to-capture comparisons, once the match is complete: node by node, and both
    /// captures must have as many nodes.
    fn cross_preds_hold(&self, pat: &Pattern) -> bool {
        let nodes = |c: u32| self.caps.iter().filter(move |(i, _)| *i == c).map(|x| x.1);
        pat.preds.iter().all(|p| match p {
            Pred::Text { .. } => true,
            Pred::SameText { a, b, positive } => {
                let (mut xs, mut ys) = (nodes(*a), nodes(*b));
                loop {
                    match (xs.next(), ys.next()) {
                        (Some(x), Some(y)) => {
                            if (self.text(x) == self.text(y)) != *positive {
                                return false;
                            }
                        }
                        (None, None) => return true,
                        _ => return false,
                    }
                }
            }
        })
    }

    fn node_passes(np: &NodePat, node: &FlatNode<'_>) -> bool {
        // Wildcards do not match ERROR nodes (tree-sitter matches them only where a pattern
        // names ERROR, which this matcher leaves to tree-sitter).
        match np.test {
            Test::Kind(k) => node.kind == k,
            Test::Named => node.named && !node.error,
            Test::Any => !node.error,
        }
    }

    fn match_node(&mut self, pat: &Pattern, np: &NodePat, idx: u32, k: Cont<'_, 'a, 't>) {
        self.steps += 1;
        let tree = self.tree;
        let node = &tree.nodes[idx as usize];
        if self.steps > self.limit || !Self::node_passes(np, node) {
            return;
        }
        let mark = self.caps.len();
        for &c in &np.caps {
            if !self.preds_hold_for(pat, c, node) {
                self.caps.truncate(mark);
                return;
            }
            self.caps.push((c, node.node));
        }
        if np.children.is_empty() {
            k(self);
        } else {
            self.match_seq(pat, np, tree.kids(idx), 0, 0, false, k);
        }
        self.caps.truncate(mark);
    }

    /// Matches children `ci..` of `np` against `kids[pos..]`; `rep`: child `ci` (a repetition)
    /// has matched at least once already.
    #[allow(clippy::too_many_arguments)]
    fn match_seq(
        &mut self,
        pat: &Pattern,
        np: &NodePat,
        kids: &'a [u32],
        ci: usize,
        pos: usize,
        rep: bool,
        k: Cont<'_, 'a, 't>,
    ) {
        if self.steps > self.limit {
            return;
        }
        let nodes = &self.tree.nodes;
        let Some(ch) = np.children.get(ci) else {
            let rest = kids.get(pos..).unwrap_or(&[]);
            if !(np.anchor_last && rest.iter().any(|&i| nodes[i as usize].named)) {
                k(self);
            }
            return;
        };
        let may_skip = match ch.quant {
            Quant::One => false,
            Quant::Opt | Quant::Star => true,
            Quant::Plus => rep,
        };
        if may_skip {
            self.match_seq(pat, np, kids, ci + 1, pos, false, k);
        }
        // An anchored child starts at or before the next named sibling.
        let end = if ch.anchored && !rep {
            kids.iter()
                .skip(pos)
                .position(|&i| nodes[i as usize].named)
                .map_or(kids.len(), |i| pos + i + 1)
        } else {
            kids.len()
        };
        let repeats = matches!(ch.quant, Quant::Star | Quant::Plus);
        for j in pos..end {
            let idx = kids[j];
            let node = &nodes[idx as usize];
            let fits = |a: &NodePat| a.field.or(ch.field).is_none_or(|f| Some(f) == node.field);
            if !ch.splits && ch.quant == Quant::One {
                let Some(alt) = ch
                    .alts
                    .iter()
                    .find(|a| fits(a) && Self::node_passes(a, node))
                else {
                    continue;
                };
                self.match_node(pat, alt, idx, &mut |ctx: &mut Ctx<'a, 't>| {
                    ctx.match_seq(pat, np, kids, ci + 1, j + 1, false, k);
                });
                return;
            }
            for alt in ch.alts.iter().filter(|a| fits(a)) {
                self.match_node(pat, alt, idx, &mut |ctx: &mut Ctx<'a, 't>| {
                    if repeats {
                        ctx.match_seq(pat, np, kids, ci, j + 1, true, k);
                    } else {
                        ctx.match_seq(pat, np, kids, ci + 1, j + 1, false, k);
                    }
                });
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    OpenBr,
    CloseBr,
    Dot,
    Colon,
    Bang,
    Quant(Quant),
    Capture(String),
    Pred(String),
    Str(Vec<u8>),
    Ident(String),
}

fn lex(src: &str) -> Result<Vec<Tok>, CompileError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |i: &mut usize, extra: &[u8]| {
        let s = *i;
        while *i < b.len() && (b[*i].is_ascii_alphanumeric() || extra.contains(&b[*i])) {
            *i += 1;
        }
        String::from_utf8_lossy(&b[s..*i]).into_owned()
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b';' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b')' | b'[' | b']' | b'.' | b':' | b'!' | b'?' | b'*' | b'+' => {
                out.push(match c {
                    b'(' => Tok::Open,
                    b')' => Tok::Close,
                    b'[' => Tok::OpenBr,
                    b']' => Tok::CloseBr,
                    b'.' => Tok::Dot,
                    b':' => Tok::Colon,
                    b'!' => Tok::Bang,
                    b'?' => Tok::Quant(Quant::Opt),
                    b'*' => Tok::Quant(Quant::Star),
                    _ => Tok::Quant(Quant::Plus),
                });
                i += 1;
            }
            b'@' => {
                i += 1;
                let w = word(&mut i, b"_-.");
                if w.is_empty() {
                    return Err(unsupported("an empty capture name"));
                }
                out.push(Tok::Capture(w));
            }
            b'#' => {
                i += 1;
                let w = word(&mut i, b"_-");
                if i < b.len() && (b[i] == b'?' || b[i] == b'!') {
                    i += 1;
                }
                out.push(Tok::Pred(w));
            }
            b'"' => {
                i += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(i) {
                        None => return Err(unsupported("an unterminated string")),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let e = b.get(i + 1).copied().unwrap_or(b'\\');
                            s.push(match e {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'r' => b'\r',
                                b'0' => 0,
                                other => other,
                            });
                            i += 2;
                        }
                        Some(&x) => {
                            s.push(x);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let w = word(&mut i, b"_-");
                out.push(Tok::Ident(w));
            }
            _ => return Err(unsupported("an unexpected character")),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: &'a [Tok],
    at: usize,
    kinds: &'a Kinds,
    names: &'a mut Vec<String>,
    preds: Vec<Pred>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn peek2(&self) -> Option<&Tok> {
        self.toks.get(self.at + 1)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn capture_id(&mut self, name: &str) -> u32 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_string());
                (self.names.len() - 1) as u32
            }
        }
    }

    fn kind(&self, name: &str, named: bool) -> Result<u16, CompileError> {
        if named && name.starts_with('_') {
            return Err(unsupported("a supertype or hidden node kind"));
        }
        self.kinds
            .by_name
            .get(&(name.to_string(), named))
            .copied()
            .ok_or_else(|| unsupported("an unknown node kind"))
    }

    /// One pattern with its quantifier and captures: the alternatives it stands for.
    fn pattern(&mut self) -> Result<(Vec<NodePat>, Quant), CompileError> {
        let mut alts = match self.next() {
            Some(Tok::Open) => match self.peek() {
                Some(Tok::Ident(_)) => vec![self.node_body()?],
                Some(Tok::Pred(_)) => return Err(unsupported("a predicate outside a pattern")),
                _ => self.group()?,
            },
            Some(Tok::OpenBr) => {
                let mut alts = Vec::new();
                while self.peek() != Some(&Tok::CloseBr) {
                    if self.peek().is_none() {
                        return Err(unsupported("an unclosed alternation"));
                    }
                    let field = self.field_prefix()?;
                    let (mut a, q) = self.pattern()?;
                    if q != Quant::One {
                        return Err(unsupported("a quantifier inside an alternation"));
                    }
                    if field.is_some() {
                        a.iter_mut().for_each(|x| x.field = field);
                    }
                    alts.extend(a);
                }
                self.at += 1;
                if alts.is_empty() {
                    return Err(unsupported("an empty alternation"));
                }
                alts
            }
            Some(Tok::Ident(w)) if w == "_" => vec![leaf(Test::Any)],
            Some(Tok::Str(s)) => {
                let name = String::from_utf8(s).map_err(|_| unsupported("a non-UTF-8 string"))?;
                vec![leaf(Test::Kind(self.kind(&name, false)?))]
            }
            _ => return Err(unsupported("an unexpected token")),
        };
        let mut quant = Quant::One;
        if let Some(Tok::Quant(q)) = self.peek() {
            quant = *q;
            self.at += 1;
        }
        while let Some(Tok::Capture(name)) = self.peek() {
            let name = name.clone();
            self.at += 1;
            let id = self.capture_id(&name);
            for a in &mut alts {
                a.caps.push(id);
            }
        }
        Ok((alts, quant))
    }

    /// `( pattern predicates* )`: a grouping around exactly one pattern.
    fn group(&mut self) -> Result<Vec<NodePat>, CompileError> {
        let mut one: Option<Vec<NodePat>> = None;
        loop {
            match self.peek() {
                Some(Tok::Close) => {
                    self.at += 1;
                    break;
                }
                Some(Tok::Open) if matches!(self.peek2(), Some(Tok::Pred(_))) => {
                    self.at += 1;
                    self.predicate()?;
                }
                None => return Err(unsupported("an unclosed group")),
                _ => {
                    if one.is_some() {
                        return Err(unsupported("a group of sibling patterns"));
                    }
                    let (a, q) = self.pattern()?;
                    if q != Quant::One {
                        return Err(unsupported("a quantifier in a group"));
                    }
                    one = Some(a);
                }
            }
        }
        one.ok_or_else(|| unsupported("an empty group"))
    }

    /// After `(`: `kind children... )`.
    fn node_body(&mut self) -> Result<NodePat, CompileError> {
        let Some(Tok::Ident(kind)) = self.next() else {
            return Err(unsupported("a node pattern without a kind"));
        };
        let test = match kind.as_str() {
            "_" => Test::Named,
            "ERROR" | "MISSING" => return Err(unsupported("ERROR/MISSING patterns")),
            k => Test::Kind(self.kind(k, true)?),
        };
        let mut np = leaf(test);
        let mut anchored = false;
        loop {
            match self.peek() {
                None => return Err(unsupported("an unclosed node pattern")),
                Some(Tok::Close) => {
                    self.at += 1;
                    np.anchor_last = anchored && !np.children.is_empty();
                    if anchored && np.children.is_empty() {
                        return Err(unsupported("an anchor without children"));
                    }
                    return Ok(np);
                }
                Some(Tok::Dot) => {
                    self.at += 1;
                    anchored = true;
                }
                Some(Tok::Bang) => return Err(unsupported("a negated field")),
                Some(Tok::Open) if matches!(self.peek2(), Some(Tok::Pred(_))) => {
                    self.at += 1;
                    self.predicate()?;
                }
                _ => {
                    let field = self.field_prefix()?;
                    let (alts, quant) = self.pattern()?;
                    np.children.push(Child::new(field, alts, quant, anchored));
                    anchored = false;
                }
            }
        }
    }

    /// `name:` before a pattern, if there is one.
    fn field_prefix(&mut self) -> Result<Option<NonZeroU16>, CompileError> {
        match (self.peek(), self.peek2()) {
            (Some(Tok::Ident(f)), Some(Tok::Colon)) => {
                let f = f.clone();
                self.at += 2;
                let fid = self
                    .kinds
                    .language
                    .field_id_for_name(&f)
                    .ok_or_else(|| unsupported("an unknown field"))?;
                Ok(Some(fid))
            }
            _ => Ok(None),
        }
    }

    /// After `(`: `#name? args... )`.
    fn predicate(&mut self) -> Result<(), CompileError> {
        let Some(Tok::Pred(name)) = self.next() else {
            return Err(unsupported("a malformed predicate"));
        };
        let mut caps = Vec::new();
        let mut strs = Vec::new();
        loop {
            match self.next() {
                Some(Tok::Close) => break,
                Some(Tok::Capture(c)) => {
                    if !strs.is_empty() {
                        return Err(unsupported("a capture after a string in a predicate"));
                    }
                    caps.push(self.capture_id(&c));
                }
                Some(Tok::Str(s)) => strs.push(s),
                _ => return Err(unsupported("a malformed predicate")),
            }
        }
        let (positive, base) = match name.as_str() {
            "eq" | "match" | "any-of" => (true, name.as_str()),
            "not-eq" | "not-match" | "not-any-of" => (false, &name[4..]),
            _ => return Err(unsupported("a predicate other than eq/match/any-of")),
        };
        let Some(&cap) = caps.first() else {
            return Err(unsupported("a predicate without a capture"));
        };
        let pred = match (base, caps.len(), strs.len()) {
            ("eq", 2, 0) => Pred::SameText {
                a: cap,
                b: caps[1],
                positive,
            },
            ("eq", 1, 1) | ("any-of", 1, _) if !strs.is_empty() => Pred::Text {
                cap,
                test: TextTest::OneOf(strs),
                positive,
            },
            ("match", 1, 1) => {
                let src = String::from_utf8(strs.remove(0))
                    .map_err(|_| unsupported("a non-UTF-8 regex"))?;
                let re = regex::bytes::Regex::new(&src)
                    .map_err(|_| unsupported("a regex the regex crate rejects"))?;
                Pred::Text {
                    cap,
                    test: TextTest::Regex(re),
                    positive,
                }
            }
            _ => return Err(unsupported("a predicate with unexpected arguments")),
        };
        self.preds.push(pred);
        Ok(())
    }
}

fn leaf(test: Test) -> NodePat {
    NodePat {
        test,
        field: None,
        caps: Vec::new(),
        children: Vec::new(),
        anchor_last: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streaming_iterator::StreamingIterator;

    /// Every match as (owner, sorted (capture name, text)) — from this matcher and from
    /// tree-sitter's, for comparison.
    fn native(lang: &Language, query: &str, code: &str) -> Vec<Vec<(String, String)>> {
        let kinds = Kinds::new(lang);
        let mut q = NativeQuery::new();
        q.add(&kinds, query, 0).expect("compiles");
        let mut p = tree_sitter::Parser::new();
        p.set_language(lang).unwrap();
        let tree = p.parse(code, None).unwrap();
        let mut out = Vec::new();
        let limits = WalkLimits {
            max_depth: 1000,
            max_anonymous_run: 1000,
            step_limit: 10_000,
        };
        let walk = q.for_each_match(
            &kinds,
            &tree,
            code.as_bytes(),
            limits,
            &mut || false,
            &mut |_, caps| {
                let mut v: Vec<(String, String)> = caps
                    .iter()
                    .map(|(c, n)| {
                        (
                            q.capture_names[*c as usize].clone(),
                            code[n.start_byte()..n.end_byte()].to_string(),
                        )
                    })
                    .collect();
                v.sort();
                out.push(v);
            },
        );
        assert_eq!(walk, Walk::Complete);
        out.sort();
        out.dedup();
        out
    }

    fn reference(lang: &Language, query: &str, code: &str) -> Vec<Vec<(String, String)>> {
        let q = tree_sitter::Query::new(lang, query).unwrap();
        let mut p = tree_sitter::Parser::new();
        p.set_language(lang).unwrap();
        let tree = p.parse(code, None).unwrap();
        let mut cur = tree_sitter::QueryCursor::new();
        let mut it = cur.matches(&q, tree.root_node(), code.as_bytes());
        let mut out = Vec::new();
        while let Some(m) = it.next() {
            let mut v: Vec<(String, String)> = m
                .captures
                .iter()
                .map(|c| {
                    (
                        q.capture_names()[c.index as usize].to_string(),
                        code[c.node.start_byte()..c.node.end_byte()].to_string(),
                    )
                })
                .collect();
            v.sort();
            out.push(v);
        }
        out.sort();
        out.dedup();
        out
    }

    fn same(lang: Language, query: &str, code: &str) {
        let a = native(&lang, query, code);
        let b = reference(&lang, query, code);
        assert_eq!(a, b, "query {query:?} on {code:?}");
        assert!(!a.is_empty(), "nothing matched: {query:?}");
    }

    #[test]
    fn agrees_with_tree_sitter_on_the_query_features_rules_use() {
        let c: Language = tree_sitter_c::LANGUAGE.into();
        let code = "void f(char *s, int n){ char b[8]; strcpy(b, s); g(1, 2, 3); if (n > 2) h(\"x\", n); /* c */ }";
        // kinds, fields, predicates
        same(
            c.clone(),
            r#"(call_expression function: (identifier) @f (#eq? @f "strcpy")) @x"#,
            code,
        );
        same(
            c.clone(),
            r#"(call_expression function: (identifier) @f (#any-of? @f "g" "h")) @x"#,
            code,
        );
        same(
            c.clone(),
            r#"(call_expression function: (identifier) @f (#match? @f "^[gh]$")) @x"#,
            code,
        );
        same(
            c.clone(),
            r#"(call_expression function: (identifier) @f (#not-eq? @f "g")) @x"#,
            code,
        );
        // unanchored children: every alignment
        same(c.clone(), "(argument_list (_) (_) @second)", code);
        // anchors
        same(c.clone(), "(argument_list . (_) @first)", code);
        same(c.clone(), "(argument_list (_) @last .)", code);
        same(c.clone(), "(argument_list (_) @a . (_) @b)", code);
        // alternation, wildcard, anonymous nodes, grouping with a predicate
        same(
            c.clone(),
            "(binary_expression [(identifier) (number_literal)] @side)",
            code,
        );
        same(
            c.clone(),
            "(binary_expression left: _ @l \">\" right: (_) @r)",
            code,
        );
        same(c.clone(), r#"((identifier) @i (#eq? @i "n"))"#, code);
        same(
            c.clone(),
            "(argument_list (string_literal)? @s (identifier) @i)",
            code,
        );
        same(
            c.clone(),
            "(compound_statement (expression_statement)+ @e)",
            code,
        );
        // Found by fuzzing: an ERROR node among the arguments is no wildcard's match.
        let broken = "void g(){ strcpy(s, ` \"x\"); }";
        same(c.clone(), "(argument_list (_) (_) @src)", broken);
        same(c.clone(), "(argument_list _ @a)", broken);
        let py: Language = tree_sitter_python::LANGUAGE.into();
        let code =
            "import os\ndef f(x):\n    os.system('ls ' + x)\n    cur.execute(f\"SELECT {x}\")\n";
        same(
            py.clone(),
            r#"(call function: (attribute object: (identifier) @o attribute: (identifier) @m (#eq? @o "os") (#eq? @m "system")) arguments: (argument_list . (binary_operator) @arg)) @call"#,
            code,
        );
        same(
            py.clone(),
            r#"(call function: (attribute attribute: (identifier) @m) arguments: (argument_list (string (interpolation)) @s)) @c"#,
            code,
        );
        same(
            py,
            r#"(call arguments: (argument_list (_) @a (#not-any-of? @a "x" "y")))"#,
            code,
        );
    }

    /// tree-sitter tries later siblings for a step only if the step captures or has children:
    /// a bare `(_)` binds the first sibling it fits, even if the rest of the pattern then fails.
    #[test]
    fn uncaptured_steps_bind_the_first_sibling_they_fit_as_in_tree_sitter() {
        let c: Language = tree_sitter_c::LANGUAGE.into();
        for (q, code, want) in [
            ("(argument_list (_) . (_) @x)", "f(a, b, c);", vec!["b"]),
            (
                "(argument_list (_) . (string_literal) @x)",
                "f(a, b, \"s\");",
                vec![],
            ),
            (
                "(argument_list (_) . (string_literal) @x)",
                "f(a, \"t\", b, \"s\");",
                vec!["\"t\""],
            ),
            (
                "(argument_list (identifier) (_) @x)",
                "f(a, b, c);",
                vec!["b", "c"],
            ),
            (
                "(argument_list (_) (_) (_) @x)",
                "f(a, b, c, d);",
                vec!["c", "d"],
            ),
            (
                "(argument_list (_) . (_) . (_) @x)",
                "f(a, b, c, d);",
                vec!["c"],
            ),
            (
                "(argument_list (_) . (identifier) @x)",
                "f(1, 2, a, 3, b);",
                vec![],
            ),
            (
                "(argument_list (number_literal) (identifier) @x)",
                "f(1, a, 2, b);",
                vec!["a", "b"],
            ),
        ] {
            let got = native(&c, q, code);
            assert_eq!(got, reference(&c, q, code), "{q} on {code}");
            let xs: Vec<&str> = got.iter().map(|m| m[0].1.as_str()).collect();
            assert_eq!(xs, want, "{q} on {code}");
        }
    }

    #[test]
    fn the_rest_of_the_query_language_is_left_to_tree_sitter() {
        let c: Language = tree_sitter_c::LANGUAGE.into();
        let kinds = Kinds::new(&c);
        let mut q = NativeQuery::new();
        for src in [
            "(call_expression !arguments)",
            r#"((identifier) @i (#any-eq? @i "x"))"#,
            "(_expression) @e",
            "((identifier) (identifier))",
            r#"((identifier) @i (#set! x "y"))"#,
            "(no_such_node)",
            "(call_expression nofield: (identifier))",
            "(call_expression",
            "(ERROR) @e",
        ] {
            assert!(
                matches!(q.add(&kinds, src, 0), Err(CompileError::Unsupported(_))),
                "{src}"
            );
        }
        assert!(q.is_empty());
    }
}
