//! Evaluation on both sides of secure code generation: how often a model's code is vulnerable
//! (scored by the analyser of `srcode-scan`) and whether it still works (functional tests run in
//! the sandbox of `srcode-sandbox`, pass@k with the unbiased estimator).
//!
//! - [`bench`]: loaders for SVEN scenarios, CyberSecEval (instruct, autocomplete),
//!   SecurityEval/LLMSecEval prompt lists, HumanEval-Pro/MBPP-Pro, CWEval-style tasks with
//!   functional and security tests, and a generic JSONL;
//! - [`gen`]: n samples per prompt from the local model (batched) or any OpenAI-compatible
//!   endpoint (the data pipeline's client, with its retries and response cache);
//! - [`score`]: code extraction, findings, test outcomes per sample;
//! - [`metrics`]: vulnerable rate per CWE and language, pass@k, func-sec@k, parse rate,
//!   refusals; paired bootstrap intervals for comparisons;
//! - [`run`]: the resumable evaluation loop writing `samples.jsonl`, `metrics.json`;
//! - [`report`]: `report.md`, a self-contained `report.html`, and side-by-side comparisons.

pub mod bench;
pub mod gen;
pub mod metrics;
pub mod report;
pub mod run;
pub mod score;

pub use bench::{load, BenchKind, Loaded, Mode, Task};
pub use gen::{Completion, GenSettings, Generator, HttpGenerator, LocalGenerator};
pub use metrics::{pass_at_k, Metrics};
pub use run::{evaluate, EvalOutcome, EvalSpec};
pub use score::{Sample, Scorer, TestOutcome};

/// Errors of the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A benchmark file or record that cannot be used, with where it is.
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lm(#[from] srcode_lm::LmError),
    #[error(transparent)]
    Scan(#[from] srcode_scan::ScanError),
    #[error(transparent)]
    Sandbox(#[from] srcode_sandbox::SandboxError),
    #[error(transparent)]
    Data(#[from] srcode_data::DataError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Jsonl(#[from] srcode_core::jsonl::JsonlError),
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn input(path: impl std::fmt::Display, message: impl Into<String>) -> Self {
        EvalError::Input {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
