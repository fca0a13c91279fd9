use std::path::PathBuf;

/// Errors of the trainers.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value that is out of range or unknown.
    #[error("configuration: {0}")]
    Config(String),
    /// Input that cannot be used (an empty dataset, a checkpoint of another run).
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The loss became NaN or infinite.
    #[error("training diverged at step {step} (loss {loss}); lower the learning rate")]
    Diverged { step: usize, loss: f32 },
    #[error(transparent)]
    Shape(#[from] crate::algo::ShapeError),
    #[error(transparent)]
    Lm(#[from] srcode_lm::LmError),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Jsonl(#[from] srcode_core::jsonl::JsonlError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
