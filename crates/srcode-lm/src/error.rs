//! Typed errors of the model runtime. Every variant names the input that was wrong and what was
//! wrong with it, so the binary can show it to the user as is.

use std::path::PathBuf;

/// Errors of `srcode-lm`.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable model file: {reason}")]
    BadModelFile { path: PathBuf, reason: String },
    #[error("model metadata key `{key}` is missing or has the wrong type ({reason})")]
    Metadata { key: String, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("json error in {context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Result type of `srcode-lm`.
pub type Result<T> = std::result::Result<T, LmError>;

impl LmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LmError::Io {
            path: path.into(),
            source,
        }
    }
}
