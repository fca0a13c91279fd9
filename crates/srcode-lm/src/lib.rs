//! The model runtime of srcode: everything needed to sample rollouts from a code model, score
//! their log-probabilities and backpropagate through them, on CPU (candle) or on an NVIDIA GPU
//! (candle's `cuda` feature).
//!
//! - [`tokenizer`]: byte-level BPE from `tokenizer.json` or from GGUF metadata, with byte offsets.
//! - [`chat`]: the model's own Jinja chat template, rendered with minijinja.

pub mod chat;
pub mod error;
pub mod tokenizer;

pub use error::{LmError, Result};
pub mod config;
pub mod generate;
pub mod loader;
pub mod model;
pub mod ops;
pub mod train;
pub mod weights;

pub use candle_core::{DType, Device, Tensor};
pub use config::LlamaConfig;
pub use model::{ForwardOpts, KvCache, Llama, LoraConfig, WeightMode};

/// Tunes candle's CPU thread pool for this process. Call once at start-up, before any tensor work.
///
/// candle's element-wise kernels run on a barrier pool whose idle workers spin for a long time,
/// while matrix products run on rayon's threads; on a small machine the spinning workers steal
/// the cores the matrix products need (a profile of a training step showed 39% of the time in
/// the pool's barrier). A short spin limit halves the step time on 2 cores. An explicit
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` in the environment wins.
pub fn init_cpu_runtime() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64");
    }
}
