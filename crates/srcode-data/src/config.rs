//! Thresholds and budgets of Vul2Safe, from the `[data]` section of a run's TOML (every key has
//! a default).

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};

/// Everything Vul2Safe lets a user tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub repair: RepairConfig,
    pub prompts: PromptConfig,
}

/// The repair loop and its acceptance checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairConfig {
    /// Revisions after the first repair when the reflection or a check is not satisfied.
    pub max_rounds: usize,
    /// τ: the reflection's confidence must reach this.
    pub min_confidence: f32,
    /// Largest accepted share of changed lexemes: (deleted + inserted) / (vulnerable + repair).
    pub max_change_ratio: f32,
    /// Where the record has the real fix, the repair must reproduce one of its secure n-grams,
    /// or the teacher must justify the difference in at least this many characters.
    pub min_justification_chars: usize,
    /// Functions longer than this (bytes) are not sent to the teacher.
    pub max_function_bytes: usize,
    pub analysis_max_tokens: usize,
    /// New tokens for a repair: the vulnerable function's byte length / 3 plus this, rounded
    /// up to a multiple of 128, at most `repair_max_tokens`.
    pub repair_extra_tokens: usize,
    pub repair_max_tokens: usize,
    pub reflect_max_tokens: usize,
    pub temperature: f32,
    pub seed: u64,
    /// When the teacher's repair of a record is rejected and the record has the project's own
    /// fix, use that fix as the secure version if it passes the same independent checks (the
    /// card counts these pairs apart). Off by default: PrimeVul+ proper holds teacher-verified
    /// pairs only.
    pub fallback_to_real_fix: bool,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            max_rounds: 2,
            min_confidence: 0.8,
            max_change_ratio: 0.4,
            min_justification_chars: 40,
            max_function_bytes: 6000,
            analysis_max_tokens: 200,
            repair_extra_tokens: 160,
            repair_max_tokens: 1536,
            reflect_max_tokens: 200,
            temperature: 0.0,
            seed: 0,
            fallback_to_real_fix: false,
        }
    }
}

/// Implicit prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// Prompts asked for per accepted pair (one per style, styles taken in turn).
    pub per_pair: usize,
    /// Styles: `ticket`, `docstring`, `story`, `stub`.
    pub styles: Vec<String>,
    pub max_tokens: usize,
    /// Prompts shorter than this many words are rejected.
    pub min_words: usize,
    /// Prompts whose word-trigram Jaccard similarity to a kept prompt exceeds this are dropped.
    pub max_similarity: f32,
    /// Words that must not appear (case-insensitive substrings), added to the built-in list.
    pub extra_leak_words: Vec<String>,
    pub temperature: f32,
    pub seed: u64,
    /// When every prompt the teacher wrote for a pair is rejected, use the record's own
    /// `description` (if it passes the same filter) as the prompt, marked style `description`
    /// and counted apart in the card. For small local teachers.
    pub fallback_to_description: bool,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig {
            per_pair: 3,
            styles: ["ticket", "docstring", "story", "stub"]
                .map(String::from)
                .to_vec(),
            max_tokens: 160,
            min_words: 6,
            max_similarity: 0.6,
            extra_leak_words: Vec::new(),
            temperature: 0.0,
            seed: 0,
            fallback_to_description: false,
        }
    }
}

pub const STYLES: [&str; 4] = ["ticket", "docstring", "story", "stub"];

impl DataConfig {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let c: DataConfig =
            toml::from_str(text).map_err(|e| DataError::Config(format!("{origin}: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let r = &self.repair;
        let bad = |m: String| Err(DataError::Config(m));
        if !(0.0..=1.0).contains(&r.min_confidence) {
            return bad(format!(
                "repair.min_confidence must be in [0, 1], got {}",
                r.min_confidence
            ));
        }
        if !(r.max_change_ratio > 0.0 && r.max_change_ratio <= 1.0) {
            return bad(format!(
                "repair.max_change_ratio must be in (0, 1], got {}",
                r.max_change_ratio
            ));
        }
        if r.repair_max_tokens == 0 || r.analysis_max_tokens == 0 || r.reflect_max_tokens == 0 {
            return bad("repair token budgets must be ≥ 1".into());
        }
        if !r.temperature.is_finite() || r.temperature < 0.0 {
            return bad(format!(
                "repair.temperature must be ≥ 0, got {}",
                r.temperature
            ));
        }
        let p = &self.prompts;
        if p.styles.is_empty() && p.per_pair > 0 {
            return bad("prompts.styles is empty".into());
        }
        if let Some(s) = p.styles.iter().find(|s| !STYLES.contains(&s.as_str())) {
            return bad(format!(
                "prompts.styles: unknown style `{s}` (expected ticket, docstring, story or stub)"
            ));
        }
        if !(0.0..=1.0).contains(&p.max_similarity) {
            return bad(format!(
                "prompts.max_similarity must be in [0, 1], got {}",
                p.max_similarity
            ));
        }
        if !p.temperature.is_finite() || p.temperature < 0.0 {
            return bad(format!(
                "prompts.temperature must be ≥ 0, got {}",
                p.temperature
            ));
        }
        Ok(())
    }
}
