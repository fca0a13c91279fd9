use std::path::PathBuf;

/// Errors of the analyser.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A rule file that is not valid TOML or misses required fields.
    #[error("rule file {path}: {message}")]
    RuleFile { path: String, message: String },
    /// A rule whose definition is inconsistent (unknown capture, bad regex, bad query...).
    #[error("rule {id} ({path}): {message}")]
    Rule {
        id: String,
        path: String,
        message: String,
    },
    /// A rule's own examples do not behave as the rule says they must.
    #[error("rule {id}: {message}")]
    Example { id: String, message: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An external analyser is not installed.
    #[error("{tool} is not installed: {how}")]
    NotInstalled { tool: String, how: String },
    /// An external analyser failed or produced output that could not be read.
    #[error("{tool}: {message}")]
    External { tool: String, message: String },
    #[error("{tool} did not finish within {secs} s")]
    Timeout { tool: String, secs: u64 },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = ScanError> = std::result::Result<T, E>;
