//! Vul2Safe: the data side of srcode. Real vulnerability fixes (PrimeVul, SVEN, SafeCoder, a
//! generic JSONL) are ingested into [`ingest::VulnRecord`]s; a teacher LLM (any
//! OpenAI-compatible endpoint, or the in-process model) analyses, repairs and reflects on each
//! until the repair passes its own review and independent checks ([`vul2safe`]); implicit
//! prompts that never mention security are written for every accepted pair ([`prompts`]); the
//! result is the PrimeVul+ dataset and its card ([`build`]). Every teacher call goes through a
//! persistent SQLite cache ([`cache`]), so builds resume and re-runs are reproducible.

pub mod build;
pub mod cache;
pub mod config;
pub mod error;
pub mod ingest;
pub mod prompts;
pub mod teacher;
pub mod vul2safe;

pub use build::{build, BuildPaths, BuildReport, PrimeVulPlus, Progress};
pub use config::DataConfig;
pub use error::{DataError, Result};
pub use ingest::{ingest, Format, Ingested, VulnRecord};
pub use teacher::{
    CachedTeacher, ChatRequest, HttpTeacher, HttpTeacherConfig, LocalTeacher, Teacher,
};
