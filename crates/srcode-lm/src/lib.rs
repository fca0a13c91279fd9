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
pub mod qmatmul;
pub mod train;
pub mod weights;

pub use candle_core::quantized;
pub use candle_core::{DType, Device, Tensor};
pub use config::LlamaConfig;
pub use model::{ForwardOpts, KvCache, Llama, LoraConfig, WeightMode};

/// What a process mostly does, which decides how candle's CPU threads should behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuWorkload {
    /// Decoding: quantised matrix-vector products run on candle's barrier pool, whose workers
    /// should spin between the many small operations of a token.
    Inference,
    /// Training: matrix products run on rayon's threads (gemm), and candle's barrier-pool workers
    /// spinning beside them steal the cores (a profile of a training step showed 39% of the time
    /// in the pool's barrier). Element-wise work stays on the calling thread.
    Training,
}

/// Tunes candle's CPU thread pool for this process. Call once at start-up, before any tensor
/// work. Variables already set in the environment (`RAYON_NUM_THREADS`, `CANDLE_NUM_THREADS`,
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`) win.
///
/// `RAYON_NUM_THREADS` is pinned to the usable CPU count: without it candle works the count out
/// again for every operation, reading `/proc/cpuinfo` each time (1.5% of a decode profile).
pub fn init_cpu_runtime(workload: CpuWorkload) {
    let set = |k: &str, v: &str| {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    set("RAYON_NUM_THREADS", &cpus.to_string());
    match workload {
        CpuWorkload::Inference => {}
        CpuWorkload::Training => {
            set("CANDLE_NUM_THREADS", "1");
            set("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64");
        }
    }
}
