//! srcode's vulnerability analyser.
//!
//! - [`rules`]: rules are data (TOML), embedded in the binary and extendable from a directory;
//!   each carries examples that must and must not match.
//! - [`engine`]: the [`Scanner`] parses with tree-sitter (parsers and compiled rules are built
//!   once and reused) and reports [`Finding`]s with exact byte spans.
//! - [`matcher`]: srcode's own matcher for the tree-sitter query subset the rules use.
//! - [`extract`]: code extraction from LLM answers (Markdown fences), keeping offsets into the
//!   original text.
//! - [`sarif`]: SARIF 2.1.0 output; [`external`]: semgrep, cppcheck, flawfinder and bandit as
//!   optional separate processes, normalised to the same [`Finding`].

pub mod engine;
pub mod error;
pub mod external;
pub mod extract;
pub mod lang;
pub mod matcher;
pub mod pairs;
pub mod rules;
pub mod sarif;

pub use engine::{QueryEngine, ScanLimits, ScanReport, Scanner};

pub use error::{Result, ScanError};
pub use srcode_core::{Cwe, Finding, Language, LineIndex, Severity, Span};

/// What a report needs to know about a rule (SARIF `tool.driver.rules`, text output).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleInfo {
    pub id: String,
    pub cwe: Option<Cwe>,
    pub severity: Severity,
    pub languages: Vec<Language>,
    pub message: String,
    /// Where the rule came from: `builtin:c.toml` or a file path.
    pub source: String,
}
