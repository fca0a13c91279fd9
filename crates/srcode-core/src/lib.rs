//! The shared vocabulary of srcode: languages, CWE identifiers, severities, byte spans, analyser
//! findings, and JSON Lines reading/writing with line-numbered errors. Every other crate speaks
//! these types, so none has to reach into another's internals.

pub mod jsonl;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Programming languages srcode understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    C,
    Cpp,
    Python,
    Java,
    JavaScript,
}

impl Language {
    /// All languages, in a stable order.
    pub const ALL: [Language; 5] = [
        Language::C,
        Language::Cpp,
        Language::Python,
        Language::Java,
        Language::JavaScript,
    ];

    /// Canonical lower-case name (`c`, `cpp`, `python`, `java`, `javascript`).
    pub fn name(self) -> &'static str {
        match self {
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Python => "python",
            Language::Java => "java",
            Language::JavaScript => "javascript",
        }
    }

    /// Guesses the language from a file extension (without the dot).
    pub fn from_extension(ext: &str) -> Option<Language> {
        match ext.to_ascii_lowercase().as_str() {
            "c" | "h" => Some(Language::C),
            "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" | "c++" => Some(Language::Cpp),
            "py" | "pyw" => Some(Language::Python),
            "java" => Some(Language::Java),
            "js" | "mjs" | "cjs" | "jsx" => Some(Language::JavaScript),
            _ => None,
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a string that names no known language.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown language `{0}` (expected one of: c, cpp, python, java, javascript)")]
pub struct UnknownLanguage(pub String);

impl FromStr for Language {
    type Err = UnknownLanguage;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "c" => Ok(Language::C),
            "cpp" | "c++" | "cxx" => Ok(Language::Cpp),
            "python" | "py" | "python3" => Ok(Language::Python),
            "java" => Ok(Language::Java),
            "javascript" | "js" | "node" => Ok(Language::JavaScript),
            _ => Err(UnknownLanguage(s.to_string())),
        }
    }
}

/// A CWE identifier, e.g. `CWE-787`, stored as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cwe(pub u32);

impl fmt::Display for Cwe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CWE-{:03}", self.0)
    }
}

/// Error for a string that is not a CWE identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a CWE identifier (expected e.g. CWE-787, cwe-078 or 787)")]
pub struct BadCwe(pub String);

impl FromStr for Cwe {
    type Err = BadCwe;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t
            .strip_prefix("CWE-")
            .or_else(|| t.strip_prefix("cwe-"))
            .or_else(|| t.strip_prefix("CWE"))
            .or_else(|| t.strip_prefix("cwe"))
            .unwrap_or(t);
        digits
            .parse::<u32>()
            .map(Cwe)
            .map_err(|_| BadCwe(s.to_string()))
    }
}

impl Serialize for Cwe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Cwe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Severity of a finding, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// A weight in `[0, 1]` used to scale penalties.
    pub fn weight(self) -> f32 {
        match self {
            Severity::Low => 0.25,
            Severity::Medium => 0.5,
            Severity::High => 0.75,
            Severity::Critical => 1.0,
        }
    }
}

/// A half-open byte range `[start, end)` into a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    /// A span; `start` and `end` are swapped when given in the wrong order.
    pub fn new(start: usize, end: usize) -> Self {
        if start <= end {
            Span { start, end }
        } else {
            Span {
                start: end,
                end: start,
            }
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    /// Whether the span covers no byte.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    /// Whether two spans share at least one byte.
    pub fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
    /// The covered text, when the span lies on character boundaries inside `text`.
    pub fn slice<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.get(self.start..self.end)
    }
}

/// One analyser finding: which rule fired, where, and why. Serialises to the exact JSON record
/// `srcode scan --format json` prints: `{rule_id, cwe, severity, message, file, byte_start,
/// byte_end, line, column, end_line, end_column, tool}`. Byte offsets index the scanned text (the
/// whole LLM answer when code was extracted from a Markdown fence); lines and columns are 1-based,
/// columns counted in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule_id: String,
    pub cwe: Option<Cwe>,
    pub severity: Severity,
    pub message: String,
    /// The file scanned (`-` for standard input, empty for in-memory text).
    pub file: String,
    pub byte_start: usize,
    pub byte_end: usize,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    /// `srcode` for the built-in rules, else the external analyser's name.
    pub tool: String,
}

impl Finding {
    /// The byte span of the finding.
    pub fn span(&self) -> Span {
        Span::new(self.byte_start, self.byte_end)
    }
}

/// Converts byte offsets into 1-based (line, byte column) positions and back, for one text.
#[derive(Debug, Clone)]
pub struct LineIndex {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
    len: usize,
}

impl LineIndex {
    pub fn new(text: &[u8]) -> Self {
        let mut starts = vec![0];
        starts.extend(memchr_newlines(text).map(|i| i + 1));
        LineIndex {
            starts,
            len: text.len(),
        }
    }
    /// 1-based line and byte column of `offset` (clamped to the text).
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.len);
        let line = self.starts.partition_point(|&s| s <= offset);
        (line, offset - self.starts[line - 1] + 1)
    }
    /// Byte offset of a 1-based line and byte column, if inside the text (a column past the end
    /// of its line is clamped to the line's end).
    pub fn offset(&self, line: usize, column: usize) -> Option<usize> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let end = self.starts.get(line).copied().unwrap_or(self.len);
        Some((start + column.saturating_sub(1)).min(end))
    }
    /// Number of lines.
    pub fn lines(&self) -> usize {
        self.starts.len()
    }
}

fn memchr_newlines(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    text.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// `../shared/data/<sub>` beside the repository (or `$SRCODE_SHARED_DATA/<sub>`), for tests and
/// benchmarks. Returns `None`, after printing `SKIP <what>: ...`, when it is absent.
#[doc(hidden)]
pub fn shared_data(sub: &str, what: &str) -> Option<std::path::PathBuf> {
    let base = std::env::var_os("SRCODE_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
        });
    let dir = base.join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP {what}: {} not found (set SRCODE_SHARED_DATA)",
            dir.display()
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwe_parses_common_spellings_and_rejects_others() {
        assert_eq!("CWE-787".parse::<Cwe>(), Ok(Cwe(787)));
        assert_eq!("cwe-078".parse::<Cwe>(), Ok(Cwe(78)));
        assert_eq!("89".parse::<Cwe>(), Ok(Cwe(89)));
        assert_eq!(Cwe(78).to_string(), "CWE-078");
        assert!("CWE-abc".parse::<Cwe>().is_err());
        let j = serde_json::to_string(&Cwe(22)).unwrap();
        assert_eq!(j, "\"CWE-022\"");
        assert_eq!(serde_json::from_str::<Cwe>(&j).unwrap(), Cwe(22));
    }

    #[test]
    fn language_names_round_trip() {
        for l in Language::ALL {
            assert_eq!(l.name().parse::<Language>(), Ok(l));
        }
        assert_eq!(Language::from_extension("PY"), Some(Language::Python));
        assert_eq!(Language::from_extension("rs"), None);
        assert!("cobol".parse::<Language>().is_err());
    }

    #[test]
    fn line_index_maps_offsets_both_ways() {
        let text = "ab\ncdé\n\nx";
        let ix = LineIndex::new(text.as_bytes());
        assert_eq!(ix.lines(), 4);
        assert_eq!(ix.position(0), (1, 1));
        assert_eq!(ix.position(3), (2, 1));
        assert_eq!(ix.position(7), (2, 5)); // after the two-byte é
        assert_eq!(ix.position(8), (3, 1));
        assert_eq!(ix.position(9), (4, 1));
        assert_eq!(ix.position(10), (4, 2));
        assert_eq!(ix.position(99), (4, 2));
        assert_eq!(ix.offset(2, 3), Some(5));
        assert_eq!(ix.offset(1, 50), Some(3));
        assert_eq!(ix.offset(5, 1), None);
        assert_eq!(ix.offset(0, 1), None);
    }

    #[test]
    fn spans_overlap_and_slice() {
        let a = Span::new(5, 2);
        assert_eq!(a, Span { start: 2, end: 5 });
        assert!(a.overlaps(&Span::new(4, 9)));
        assert!(!a.overlaps(&Span::new(5, 9)));
        assert_eq!(Span::new(1, 3).slice("héllo"), Some("é"));
        assert_eq!(Span::new(1, 2).slice("héllo"), None);
    }
}
