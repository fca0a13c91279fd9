//! Reward configuration (TOML). Every source has its own weight; zero turns it off.

use serde::{Deserialize, Serialize};

/// How far an analyser penalty spreads from the finding's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Only the tokens overlapping the span.
    #[default]
    Span,
    /// Every token on the span's lines.
    Line,
    /// The statement around the span: back to the previous `;`, `{` or `}` and on to the next
    /// `;` in C-family code; the logical line in Python.
    Statement,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyserConfig {
    /// Penalty per token of a finding, scaled by the finding's severity weight (0.25 low …
    /// 1.0 critical). Overlapping findings add up.
    pub weight: f32,
    pub spread: Spread,
}

impl Default for AnalyserConfig {
    fn default() -> Self {
        AnalyserConfig {
            weight: 1.0,
            spread: Spread::Span,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferenceConfig {
    /// Reward per token that reproduces a secure n-gram of the repair pair.
    pub secure_weight: f32,
    /// Penalty per token that reproduces a vulnerable n-gram of the repair pair.
    pub vulnerable_weight: f32,
    /// Lexemes per n-gram.
    pub ngram: usize,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        ReferenceConfig {
            secure_weight: 0.5,
            vulnerable_weight: 0.5,
            ngram: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// Plus this when the code parses without error nodes, minus when it does not.
    pub parse: f32,
    /// Plus this when the analyser finds nothing, minus (scaled by the worst severity) when
    /// it does.
    pub clean: f32,
    /// Plus or minus this for `gcc -fsyntax-only` on C/C++ (off by default: snippets without
    /// their headers rarely compile, and a compiler call costs tens of milliseconds).
    pub compile: f32,
    /// Plus this when the sample's functional tests pass in the sandbox, minus when they fail
    /// (Python; samples without tests, or without a sandbox configured, get nothing).
    pub tests: f32,
    /// Reward given instead of everything else to a degenerate answer (see `guard`).
    pub hack_penalty: f32,
    pub guard: GuardConfig,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            parse: 0.2,
            clean: 0.5,
            compile: 0.0,
            tests: 1.0,
            hack_penalty: -1.0,
            guard: GuardConfig::default(),
        }
    }
}

/// Guards against reward hacking: an answer that avoids vulnerabilities by not writing code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Code shorter than this fraction of the reference solution (when one is known) is
    /// degenerate.
    pub min_length_ratio: f32,
    /// Code with fewer non-blank bytes than this is degenerate.
    pub min_code_bytes: usize,
    /// Case-insensitive phrases that mark a refusal when the answer has no code.
    pub refusal_phrases: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            min_length_ratio: 0.3,
            min_code_bytes: 16,
            refusal_phrases: [
                "i cannot",
                "i can't",
                "i can not",
                "i'm sorry",
                "i am sorry",
                "as an ai",
                "i won't",
                "i will not",
                "unable to help",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// The whole reward configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub analyser: AnalyserConfig,
    pub reference: ReferenceConfig,
    pub instance: InstanceConfig,
    /// Per-token rewards are clipped to [-clip, clip] (0 = no clipping).
    pub token_clip: f32,
}

impl RewardConfig {
    /// Parses a TOML configuration; missing fields keep their defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}
