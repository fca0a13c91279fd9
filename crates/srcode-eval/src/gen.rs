//! Sample generation: `n` samples per task from the in-process model (rows of many tasks
//! batched together, each row with its own seed so a sample does not depend on its batch) or
//! from an OpenAI-compatible endpoint (the data pipeline's client: retries, back-off, response
//! cache; bounded concurrency).

use crate::bench::{Mode, Task};
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use srcode_core::Language;
use srcode_data::cache::ResponseCache;
use srcode_data::teacher::{CachedTeacher, ChatRequest, HttpTeacher, Teacher};
use srcode_lm::chat::ChatMessage;
use srcode_lm::generate::{generate_seeded, SamplingParams};
use srcode_lm::loader::LoadedModel;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Sampling settings of an evaluation (part of its identity: changing them starts afresh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenSettings {
    /// Samples per task.
    pub n: usize,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for GenSettings {
    fn default() -> Self {
        GenSettings {
            n: 4,
            temperature: 0.4,
            top_p: Some(0.95),
            max_new_tokens: 256,
            seed: 0,
        }
    }
}

impl GenSettings {
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(EvalError::Config("n (samples per task) must be ≥ 1".into()));
        }
        if self.max_new_tokens == 0 {
            return Err(EvalError::Config("max_new_tokens must be ≥ 1".into()));
        }
        if self.n > 1 && self.temperature <= 0.0 {
            return Err(EvalError::Config(format!(
                "n = {} samples with temperature {} would all be the same greedy answer; \
                 use a temperature > 0 or n = 1",
                self.n, self.temperature
            )));
        }
        Ok(())
    }
}

/// One sample's raw text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    /// Generated tokens (0 when the endpoint does not say).
    pub tokens: usize,
    /// `stop` or `length`.
    pub finish: String,
}

/// A source of samples.
pub trait Generator: Send + Sync {
    /// Identity of the model (recorded with the evaluation).
    fn id(&self) -> &str;
    /// Whether completion-mode tasks can be continued as raw text (chat endpoints cannot: their
    /// tasks are asked as instructions).
    fn completes_raw(&self) -> bool;
    /// `s.n` samples for each task; one result per task, in order.
    fn generate(&self, tasks: &[&Task], s: &GenSettings) -> Vec<Result<Vec<Completion>>>;
}

/// The seed of sample `j` of task `id`.
pub fn sample_seed(base: u64, id: &str, j: usize) -> u64 {
    let mut h = Sha256::new();
    h.update(base.to_le_bytes());
    h.update(id.as_bytes());
    h.update((j as u64).to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Where a completion of a code prefix should stop: the next top-level definition (Python).
/// C completions are cut at the end of the function by the scorer instead.
pub fn stop_strings(lang: Language, mode: Mode) -> Vec<String> {
    match (mode, lang) {
        (Mode::Complete, Language::Python) => [
            "\ndef ",
            "\nclass ",
            "\nif __name__",
            "\n@app.",
            "\nprint(",
            "\nassert ",
            "\n#",
            "\n```",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        (Mode::Complete, _) => vec!["\n```".into()],
        (Mode::Instruct, _) => Vec::new(),
    }
}

/// One row of a local batch: (task, sample, prompt ids).
struct Row(usize, usize, Vec<u32>);

/// The in-process model.
pub struct LocalGenerator {
    lm: Mutex<LoadedModel>,
    id: String,
    /// Rows decoded together.
    pub batch_rows: usize,
    /// Completion tasks go through the chat template: the user asks for the code to be
    /// completed and the assistant's answer is pre-filled with an opened code fence and the
    /// code prefix, so a chat-tuned model continues the code instead of closing it.
    pub chat_prefill: bool,
}

impl LocalGenerator {
    pub fn new(lm: LoadedModel, id: String, batch_rows: usize) -> Self {
        LocalGenerator {
            lm: Mutex::new(lm),
            id,
            batch_rows: batch_rows.max(1),
            chat_prefill: false,
        }
    }
}

impl Generator for LocalGenerator {
    fn id(&self) -> &str {
        &self.id
    }

    fn completes_raw(&self) -> bool {
        true
    }

    fn generate(&self, tasks: &[&Task], s: &GenSettings) -> Vec<Result<Vec<Completion>>> {
        let Ok(lm) = self.lm.lock() else {
            return tasks
                .iter()
                .map(|_| Err(EvalError::Config("the model lock is poisoned".into())))
                .collect();
        };
        let ctx = lm.model.config().max_position_embeddings;
        // Token ids of each task's prompt.
        let mut results: Vec<Result<Vec<Completion>>> = Vec::with_capacity(tasks.len());
        let mut rows: Vec<Row> = Vec::new();
        for (ti, t) in tasks.iter().enumerate() {
            let ids = match t.mode {
                Mode::Complete if self.chat_prefill => {
                    let lang = t.language.name();
                    let ask = format!(
                        "Complete the following {lang} code.\n```{lang}\n{}\n```",
                        t.prompt.trim_end()
                    );
                    lm.chat
                        .render(&[ChatMessage::new("user", &ask)], true)
                        .map_err(EvalError::from)
                        .and_then(|head| {
                            let text = format!("{head}```{lang}\n{}", t.prompt);
                            lm.tokenizer.encode(&text, false).map_err(EvalError::from)
                        })
                }
                Mode::Complete => lm
                    .tokenizer
                    .encode(&t.prompt, false)
                    .map_err(EvalError::from),
                Mode::Instruct => lm
                    .chat
                    .render(&[ChatMessage::new("user", &t.prompt)], true)
                    .map_err(EvalError::from)
                    .and_then(|p| lm.tokenizer.encode(&p, false).map_err(EvalError::from)),
            };
            match ids {
                Ok(ids) if ids.is_empty() => {
                    results.push(Err(EvalError::input(&t.id, "the prompt has no tokens")))
                }
                Ok(ids) if ids.len() + 16 > ctx => results.push(Err(EvalError::input(
                    &t.id,
                    format!(
                        "prompt of {} tokens leaves no room in the model's context of {ctx}",
                        ids.len()
                    ),
                ))),
                Ok(ids) => {
                    for j in 0..s.n {
                        rows.push(Row(ti, j, ids.clone()));
                    }
                    results.push(Ok(vec![
                        Completion {
                            text: String::new(),
                            tokens: 0,
                            finish: String::new(),
                        };
                        s.n
                    ]));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        // Similar lengths share a batch (left padding wastes the difference).
        rows.sort_by_key(|r| r.2.len());
        let eos = lm.tokenizer.eos_token_ids();
        for chunk in rows.chunks(self.batch_rows) {
            // Rows of one batch share stop strings only when their tasks agree; split otherwise.
            let mut groups: Vec<(Vec<String>, Vec<&Row>)> = Vec::new();
            for r in chunk {
                let t = tasks[r.0];
                let stops = stop_strings(t.language, t.mode);
                match groups.iter_mut().find(|g| g.0 == stops) {
                    Some(g) => g.1.push(r),
                    None => groups.push((stops, vec![r])),
                }
            }
            for (stops, group) in groups {
                let longest = group.iter().map(|r| r.2.len()).max().unwrap_or(0);
                let params = SamplingParams {
                    max_new_tokens: s.max_new_tokens.min(ctx.saturating_sub(longest)),
                    temperature: s.temperature,
                    top_k: None,
                    top_p: s.top_p,
                    seed: s.seed,
                    stop: stops,
                    stop_token_ids: eos.clone(),
                };
                let prompts: Vec<Vec<u32>> = group.iter().map(|r| r.2.clone()).collect();
                let seeds: Vec<u64> = group
                    .iter()
                    .map(|r| sample_seed(s.seed, &tasks[r.0].id, r.1))
                    .collect();
                match generate_seeded(&lm.model, &lm.tokenizer, &prompts, &params, Some(&seeds)) {
                    Ok((gens, _)) => {
                        for (r, g) in group.iter().zip(gens) {
                            if let Some(Ok(v)) = results.get_mut(r.0) {
                                v[r.1] = Completion {
                                    text: g.text,
                                    tokens: g.token_ids.len(),
                                    finish: match g.finish_reason {
                                        srcode_lm::generate::FinishReason::Stop => "stop",
                                        srcode_lm::generate::FinishReason::Length => "length",
                                    }
                                    .into(),
                                };
                            }
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for r in &group {
                            results[r.0] = Err(EvalError::input(&tasks[r.0].id, msg.clone()));
                        }
                    }
                }
            }
        }
        results
    }
}

/// An OpenAI-compatible chat endpoint, every call through the response cache.
pub struct HttpGenerator {
    teacher: HttpTeacher,
    cache: ResponseCache,
    id: String,
    pub concurrency: usize,
}

impl HttpGenerator {
    pub fn new(teacher: HttpTeacher, cache: ResponseCache, concurrency: usize) -> Self {
        let id = teacher.id().to_string();
        HttpGenerator {
            teacher,
            cache,
            id,
            concurrency: concurrency.max(1),
        }
    }
}

impl Generator for HttpGenerator {
    fn id(&self) -> &str {
        &self.id
    }

    fn completes_raw(&self) -> bool {
        false
    }

    fn generate(&self, tasks: &[&Task], s: &GenSettings) -> Vec<Result<Vec<Completion>>> {
        let cached = CachedTeacher::new(&self.teacher, &self.cache);
        let jobs: Vec<(usize, usize)> = (0..tasks.len())
            .flat_map(|t| (0..s.n).map(move |j| (t, j)))
            .collect();
        let next = AtomicUsize::new(0);
        let answers: Mutex<Vec<Option<Result<String>>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..self.concurrency.min(jobs.len()) {
                scope.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(t, j)) = jobs.get(k) else { break };
                    let task = tasks[t];
                    let req = ChatRequest {
                        messages: vec![ChatMessage::new("user", &task.prompt)],
                        temperature: s.temperature,
                        top_p: s.top_p,
                        max_tokens: s.max_new_tokens,
                        seed: sample_seed(s.seed, &task.id, j),
                    };
                    let r = cached.complete(&req).map_err(EvalError::from);
                    if let Ok(mut a) = answers.lock() {
                        a[k] = Some(r);
                    }
                });
            }
        });
        let answers = answers.into_inner().unwrap_or_default();
        let mut out: Vec<Result<Vec<Completion>>> =
            tasks.iter().map(|_| Ok(Vec::with_capacity(s.n))).collect();
        for ((t, _), a) in jobs.into_iter().zip(answers) {
            let r = a.unwrap_or_else(|| Err(EvalError::Config("request not run".into())));
            match (&mut out[t], r) {
                (Ok(v), Ok(text)) => v.push(Completion {
                    text,
                    tokens: 0,
                    finish: "stop".into(),
                }),
                (slot @ Ok(_), Err(e)) => *slot = Err(e),
                (Err(_), _) => {}
            }
        }
        out
    }
}
