//! SRCode training. [`algo`] holds the maths every trainer shares, written on plain slices so it
//! is exact and testable against hand-computed values: the per-token reward stream, GAE, the
//! clipped surrogate, value clipping, group normalisation for GRPO (with the token-level terms
//! kept per token), KL estimators, whitening and the adaptive KL controller. [`sft`] is the
//! supervised stage on PrimeVul+.

pub mod algo;
pub mod checkpoint;
pub mod error;
pub mod grad;
pub mod report;
pub mod rl;
pub mod score;
pub mod sft;

pub use error::{Result, TrainError};
