//! Teacher LLM clients: any OpenAI-compatible chat endpoint ([`HttpTeacher`]) or the in-process
//! local model ([`LocalTeacher`]). [`CachedTeacher`] puts the persistent response cache in front
//! of either, so every call of a build goes through it.

use crate::cache::ResponseCache;
use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use srcode_lm::chat::ChatMessage;
use srcode_lm::generate::{generate, SamplingParams};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// One chat request. Its JSON form (with the model identity) is the cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub max_tokens: usize,
    pub seed: u64,
}

impl ChatRequest {
    pub fn new(messages: Vec<ChatMessage>, max_tokens: usize) -> Self {
        ChatRequest {
            messages,
            temperature: 0.0,
            top_p: None,
            max_tokens,
            seed: 0,
        }
    }
}

/// A teacher model.
pub trait Teacher: Send + Sync {
    /// Identity of the model, part of the cache key (changing the model invalidates answers).
    fn id(&self) -> &str;
    /// The assistant's answer to `req`.
    fn complete(&self, req: &ChatRequest) -> Result<String>;
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible HTTP

/// Settings of an OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTeacherConfig {
    /// Base URL up to and including `/v1` (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// The `model` field sent with each request.
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    /// Time limit of one request, in seconds.
    pub timeout_secs: f64,
    /// Retries after a transient failure (connection refused or reset, timeout, HTTP 429 or 5xx).
    pub max_retries: u32,
    /// First back-off delay in seconds; doubled after each retry, at most `max_backoff_secs`.
    /// A `Retry-After` header is honoured up to the same bound.
    pub backoff_secs: f64,
    pub max_backoff_secs: f64,
}

impl Default for HttpTeacherConfig {
    fn default() -> Self {
        HttpTeacherConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "default".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_secs: 300.0,
            max_retries: 4,
            backoff_secs: 1.0,
            max_backoff_secs: 30.0,
        }
    }
}

/// A teacher behind an OpenAI-compatible `/chat/completions` endpoint (vLLM, SGLang,
/// llama.cpp's server, `srcode serve`, hosted APIs).
pub struct HttpTeacher {
    cfg: HttpTeacherConfig,
    id: String,
    agent: ureq::Agent,
    key: Option<String>,
}

enum Attempt {
    Done(String),
    Transient(String, Option<Duration>),
    /// The endpoint cannot take this request (too long for its context): a problem of the
    /// record, not of the teacher.
    Refused(String),
    Fatal(String),
}

/// Whether an HTTP 4xx body says the prompt plus `max_tokens` does not fit the model's
/// context (vLLM, llama.cpp, OpenAI and SGLang word it differently).
fn exceeds_context(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "maximum context",
        "exceed",
        "too long",
    ]
    .iter()
    .any(|k| b.contains(k))
}

impl HttpTeacher {
    pub fn new(cfg: HttpTeacherConfig) -> Result<Self> {
        if !(cfg.base_url.starts_with("http://") || cfg.base_url.starts_with("https://")) {
            return Err(DataError::Config(format!(
                "teacher base_url `{}` must start with http:// or https://",
                cfg.base_url
            )));
        }
        if !(cfg.timeout_secs > 0.0 && cfg.backoff_secs >= 0.0 && cfg.max_backoff_secs >= 0.0) {
            return Err(DataError::Config(
                "teacher timeout_secs must be > 0 and back-off delays ≥ 0".into(),
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_secs)))
            .http_status_as_error(false)
            .build()
            .into();
        let key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let id = format!(
            "openai:{}@{}",
            cfg.model,
            cfg.base_url.trim_end_matches('/')
        );
        Ok(HttpTeacher {
            cfg,
            id,
            agent,
            key,
        })
    }

    fn attempt(&self, body: &Value) -> Attempt {
        let url = format!(
            "{}/chat/completions",
            self.cfg.base_url.trim_end_matches('/')
        );
        let mut rq = self.agent.post(&url);
        if let Some(k) = &self.key {
            rq = rq.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = match rq.send_json(body) {
            Ok(r) => r,
            // Connection refused/reset, DNS, timeouts: the server may come back.
            Err(e) => return Attempt::Transient(e.to_string(), None),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, self.cfg.max_backoff_secs)));
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return Attempt::Transient(format!("reading the response: {e}"), None),
        };
        if status == 429 || (500..600).contains(&status) {
            return Attempt::Transient(format!("HTTP {status}: {}", excerpt(&text)), retry_after);
        }
        if (400..500).contains(&status) && exceeds_context(&text) {
            return Attempt::Refused(format!("HTTP {status}: {}", excerpt(&text)));
        }
        if !(200..300).contains(&status) {
            return Attempt::Fatal(format!("HTTP {status}: {}", excerpt(&text)));
        }
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                return Attempt::Fatal(format!("response is not JSON ({e}): {}", excerpt(&text)))
            }
        };
        match v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
        {
            Some(s) => Attempt::Done(s.to_string()),
            None => Attempt::Fatal(format!(
                "response has no choices[0].message.content: {}",
                excerpt(&text)
            )),
        }
    }
}

fn excerpt(s: &str) -> String {
    let t: String = s.chars().take(300).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

impl Teacher for HttpTeacher {
    fn id(&self) -> &str {
        &self.id
    }

    fn complete(&self, req: &ChatRequest) -> Result<String> {
        let mut body = serde_json::json!({
            "model": self.cfg.model,
            "messages": req.messages,
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
            "seed": req.seed,
        });
        if let Some(p) = req.top_p {
            body["top_p"] = p.into();
        }
        let mut delay = self.cfg.backoff_secs;
        let mut last = String::new();
        for attempt in 0..=self.cfg.max_retries {
            match self.attempt(&body) {
                Attempt::Done(s) => return Ok(s),
                Attempt::Refused(m) => return Err(DataError::Input(m)),
                Attempt::Fatal(m) => {
                    return Err(DataError::Teacher {
                        teacher: self.id.clone(),
                        message: m,
                    })
                }
                Attempt::Transient(m, retry_after) => {
                    last = m;
                    if attempt == self.cfg.max_retries {
                        break;
                    }
                    let wait = retry_after.unwrap_or_else(|| Duration::from_secs_f64(delay));
                    tracing::warn!(teacher = %self.id, error = %last, retry_in = ?wait, "teacher call failed; retrying");
                    std::thread::sleep(wait);
                    delay = (delay * 2.0).min(self.cfg.max_backoff_secs);
                }
            }
        }
        Err(DataError::Teacher {
            teacher: self.id.clone(),
            message: format!("{last} (gave up after {} retries)", self.cfg.max_retries),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// In-process local model

struct Job {
    req: ChatRequest,
    reply: mpsc::Sender<Result<String>>,
}

/// The in-process model of `srcode-lm` as a teacher. One thread owns the model; requests from
/// any number of worker threads are gathered into batches (up to `max_batch` with equal
/// sampling settings) and decoded together.
pub struct LocalTeacher {
    id: String,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LocalTeacher {
    /// Loads the model at `path` (GGUF file or Hugging Face directory) on its own thread.
    pub fn load(path: &Path, max_batch: usize) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let id = format!("local:{name}:{}", meta.len());
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let p: PathBuf = path.to_path_buf();
        let max_batch = max_batch.max(1);
        let worker = std::thread::Builder::new()
            .name("srcode-teacher".into())
            .spawn(move || {
                let lm = match srcode_lm::loader::load(&p, &srcode_lm::Device::Cpu, None) {
                    Ok(lm) => {
                        let _ = ready_tx.send(Ok(()));
                        lm
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                serve_local(&lm, &rx, max_batch);
            })
            .map_err(|e| DataError::Teacher {
                teacher: id.clone(),
                message: format!("cannot start the model thread: {e}"),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(DataError::Teacher {
                    teacher: id,
                    message: "the model thread stopped while loading".into(),
                })
            }
        }
        Ok(LocalTeacher {
            id,
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        })
    }
}

impl Drop for LocalTeacher {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.worker.lock() {
            if let Some(h) = w.take() {
                let _ = h.join();
            }
        }
    }
}

fn same_settings(a: &ChatRequest, b: &ChatRequest) -> bool {
    a.temperature == b.temperature
        && a.top_p == b.top_p
        && a.max_tokens == b.max_tokens
        && a.seed == b.seed
}

/// Prompt tokens (padded: rows × longest) one decode batch may hold. Rows are left-padded to
/// the longest prompt, and attention over the prompt costs its length squared, so one long
/// prompt in a batch of short ones makes every row pay for it.
const BATCH_PROMPT_TOKENS: usize = 8192;

/// Whether prompts of `a` and `b` tokens are close enough in length to share a batch (the
/// shorter padded to the longer wastes at most a third).
fn similar_length(a: usize, b: usize) -> bool {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    hi <= lo + lo / 2 + 64
}

/// A request rendered and tokenised, waiting for a batch.
struct Ready {
    job: Job,
    ids: Vec<u32>,
}

fn serve_local(lm: &srcode_lm::loader::LoadedModel, rx: &mpsc::Receiver<Job>, max_batch: usize) {
    let ctx = lm.model.config().max_position_embeddings;
    let mut pending: Vec<Ready> = Vec::new();
    // Renders and tokenises a request; answers it at once when it cannot be run.
    let admit = |job: Job, pending: &mut Vec<Ready>| {
        let ids = lm
            .chat
            .render(&job.req.messages, true)
            .map_err(DataError::from)
            .and_then(|t| lm.tokenizer.encode(&t, false).map_err(DataError::from));
        match ids {
            Ok(ids) if ids.len() + job.req.max_tokens > ctx => {
                let _ = job.reply.send(Err(DataError::Input(format!(
                    "prompt of {} tokens plus {} new tokens exceeds the teacher's context of {ctx}",
                    ids.len(),
                    job.req.max_tokens
                ))));
            }
            Ok(ids) => pending.push(Ready { job, ids }),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    };
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(j) => admit(j, &mut pending),
                Err(_) => return,
            }
            if pending.is_empty() {
                continue;
            }
        }
        // Let the other workers' requests arrive, then take what is there.
        while let Ok(j) = rx.recv_timeout(Duration::from_millis(20)) {
            admit(j, &mut pending);
            if pending.len() >= 4 * max_batch {
                break;
            }
        }
        // The oldest request, and the others that share its settings and its length.
        let first = pending.remove(0);
        let mut longest = first.ids.len();
        let mut batch = vec![first];
        let mut i = 0;
        while i < pending.len() && batch.len() < max_batch {
            let (req, len) = (&pending[i].job.req, pending[i].ids.len());
            let fits = (batch.len() + 1) * longest.max(len) <= BATCH_PROMPT_TOKENS;
            if same_settings(req, &batch[0].job.req)
                && similar_length(len, batch[0].ids.len())
                && fits
            {
                longest = longest.max(len);
                batch.push(pending.remove(i));
            } else {
                i += 1;
            }
        }
        run_batch(lm, batch);
    }
}

fn run_batch(lm: &srcode_lm::loader::LoadedModel, batch: Vec<Ready>) {
    let Some(first) = batch.first() else { return };
    let params = SamplingParams {
        max_new_tokens: first.job.req.max_tokens,
        temperature: first.job.req.temperature,
        top_k: None,
        top_p: first.job.req.top_p,
        seed: first.job.req.seed,
        stop: Vec::new(),
        stop_token_ids: lm.tokenizer.eos_token_ids(),
    };
    let prompts: Vec<Vec<u32>> = batch.iter().map(|r| r.ids.clone()).collect();
    match generate(&lm.model, &lm.tokenizer, &prompts, &params) {
        Ok((gens, _)) => {
            for (r, g) in batch.into_iter().zip(gens) {
                let _ = r.job.reply.send(Ok(g.text));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for r in batch {
                let _ = r.job.reply.send(Err(DataError::Teacher {
                    teacher: "local".into(),
                    message: msg.clone(),
                }));
            }
        }
    }
}

impl Teacher for LocalTeacher {
    fn id(&self) -> &str {
        &self.id
    }

    fn complete(&self, req: &ChatRequest) -> Result<String> {
        let gone = || DataError::Teacher {
            teacher: self.id.clone(),
            message: "the model thread has stopped".into(),
        };
        let (reply, answer) = mpsc::channel();
        {
            let tx = self.tx.lock().map_err(|_| gone())?;
            let tx = tx.as_ref().ok_or_else(gone)?;
            tx.send(Job {
                req: req.clone(),
                reply,
            })
            .map_err(|_| gone())?;
        }
        answer.recv().map_err(|_| gone())?
    }
}

// ---------------------------------------------------------------------------------------------
// Cache in front

/// A teacher whose every call goes through the response cache. Counts what it asked the
/// teacher and what it answered from the cache.
pub struct CachedTeacher<'a> {
    inner: &'a dyn Teacher,
    cache: &'a ResponseCache,
    calls: AtomicUsize,
    hits: AtomicUsize,
}

impl<'a> CachedTeacher<'a> {
    pub fn new(inner: &'a dyn Teacher, cache: &'a ResponseCache) -> Self {
        CachedTeacher {
            inner,
            cache,
            calls: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
        }
    }

    /// Requests that went to the teacher.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Requests answered from the cache.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Teacher for CachedTeacher<'_> {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn complete(&self, req: &ChatRequest) -> Result<String> {
        if let Some(s) = self.cache.get(self.inner.id(), req)? {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(s);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let s = self.inner.complete(req)?;
        self.cache.put(self.inner.id(), req, &s)?;
        Ok(s)
    }
}
