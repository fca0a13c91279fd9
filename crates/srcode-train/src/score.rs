//! The security scorer of RL: each rollout is decoded, aligned to its tokens and rewarded by
//! `srcode-reward` (analyser findings on their tokens, the prompt's repair pair, instance terms
//! with the hacking guard).

use crate::error::{Result, TrainError};
use crate::rl::{Scored, Scorer};
use srcode_core::Language;
use srcode_lm::tokenizer::Tokenizer;
use srcode_reward::reference::RepairPattern;
use srcode_reward::{RewardEngine, RewardInput};

/// What the reward needs to know about one prompt.
pub struct PromptInfo {
    pub language: Language,
    /// The repair pair's patterns (secure vs vulnerable n-grams), when it has usable ones.
    pub pattern: Option<RepairPattern>,
    /// Length of the secure reference without whitespace (the length guard).
    pub reference_len: Option<usize>,
    pub function_name: Option<String>,
}

impl PromptInfo {
    /// From a repair pair: the secure and the vulnerable function.
    pub fn from_pair(language: Language, secure: &str, vulnerable: &str, ngram: usize) -> Self {
        PromptInfo {
            language,
            pattern: RepairPattern::new(vulnerable, secure, language, ngram).ok(),
            reference_len: Some(secure.bytes().filter(|b| !b.is_ascii_whitespace()).count()),
            function_name: srcode_data::ingest::function_name(secure, language),
        }
    }
}

/// Scores rollouts with the reward engine.
pub struct SecurityScorer<'a> {
    pub engine: &'a RewardEngine,
    pub tokenizer: &'a Tokenizer,
    pub prompts: Vec<PromptInfo>,
}

impl Scorer for SecurityScorer<'_> {
    fn score(&self, prompt: usize, response: &[u32]) -> Result<Scored> {
        let info = self
            .prompts
            .get(prompt)
            .ok_or_else(|| TrainError::Input(format!("no prompt {prompt}")))?;
        let bytes: Vec<&[u8]> = response
            .iter()
            .map(|&id| {
                if self.tokenizer.is_special(id) {
                    &[][..]
                } else {
                    self.tokenizer.token_bytes(id)
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes.concat()).into_owned();
        let spans = srcode_reward::align::align_token_bytes(text.as_bytes(), &bytes);
        let r = self
            .engine
            .reward(&RewardInput {
                completion: &text,
                tokens: &spans,
                lang: info.language,
                pair: info.pattern.as_ref(),
                reference_len: info.reference_len,
                function_name: info.function_name.as_deref(),
                tests: None,
            })
            .map_err(|e| TrainError::Input(format!("reward: {e}")))?;
        Ok(Scored {
            flagged: !r.findings.is_empty(),
            token: r.per_token,
            instance: r.instance,
        })
    }
}
