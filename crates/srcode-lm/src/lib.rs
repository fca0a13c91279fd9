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
//TMP pub mod generate;
pub mod model;
//TMP pub mod loader;
pub mod ops;
pub mod train;
pub mod weights;

pub use config::LlamaConfig;
pub use model::{ForwardOpts, KvCache, Llama, LoraConfig, WeightMode};
pub use candle_core::{DType, Device, Tensor};
