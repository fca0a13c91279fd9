use std::path::{Path, PathBuf};

/// Errors of the data pipeline.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Input that cannot be used (a file with no records, a record that is not what it claims).
    #[error("{0}")]
    Input(String),
    /// A configuration value that is out of range or unknown.
    #[error("configuration: {0}")]
    Config(String),
    /// The response cache could not be opened, read or written.
    #[error("response cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    /// The teacher could not answer (after retries for transient failures).
    #[error("teacher {teacher}: {message}")]
    Teacher { teacher: String, message: String },
    #[error(transparent)]
    Scan(#[from] srcode_scan::ScanError),
    #[error(transparent)]
    Lm(#[from] srcode_lm::LmError),
    #[error(transparent)]
    Jsonl(#[from] srcode_core::jsonl::JsonlError),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether this is a teacher failure (the build stops, keeps what is finished, and can be
    /// resumed), as opposed to a problem with one record.
    pub fn is_teacher_failure(&self) -> bool {
        matches!(self, DataError::Teacher { .. })
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
