//! The OpenAI-compatible endpoints: chat completions, completions (both with SSE streaming)
//! and the model list.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use srcode_lm::chat::ChatMessage;
use srcode_lm::generate::{FinishReason, Generation, SamplingParams};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::worker::{GenEvent, GenJob, Generator, SubmitError};
use crate::{parse_body, ApiError, AppState};

static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    let n = REQUESTS.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:06x}", now())
}

pub(crate) async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.cfg.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "srcode",
        }]
    }))
    .into_response()
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or a list of `{type: "text", text}` parts.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a string or a list of {type: \"text\", text} parts"
)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields both endpoints share.
#[derive(Deserialize)]
struct Sampling {
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    logprobs: bool,
    #[serde(default)]
    top_logprobs: Option<usize>,
}

/// `prompt`: a string, a list of strings, or token ids.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a string, a list of strings, or a list of token ids"
)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    prompt: Prompt,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    logprobs: Option<usize>,
}

fn generator(st: &AppState) -> Result<&Generator, ApiError> {
    st.generator.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server was started without a model for generation (--rewards-only)",
        )
    })
}

/// Checks the sampling fields and turns them into the decoder's settings for one prompt.
fn sampling_params(
    st: &AppState,
    g: &Generator,
    s: &Sampling,
    prompt_len: usize,
    default_max: usize,
) -> Result<SamplingParams, ApiError> {
    let room = g.context.saturating_sub(prompt_len);
    if room == 0 {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the prompt has {prompt_len} tokens, the model's context is {}",
                g.context
            ),
        ));
    }
    let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
        Some(0) => return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1")),
        Some(m) if m > st.cfg.max_tokens => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens {m} is above this server's limit of {}",
                    st.cfg.max_tokens
                ),
            ))
        }
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "the prompt ({prompt_len} tokens) plus max_tokens {m} exceeds the model's context of {}",
                    g.context
                ),
            ))
        }
        Some(m) => m,
        None => default_max.min(st.cfg.max_tokens).min(room),
    };
    let temperature = s.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
    }
    let top_k = match s.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => return Err(ApiError::invalid("top_k", format!("top_k {k} is negative"))),
    };
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(x)) => vec![x.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 16 || stop.iter().any(|x| x.is_empty() || x.len() > 256) {
        return Err(ApiError::invalid(
            "stop",
            "stop takes at most 16 non-empty strings of up to 256 bytes",
        ));
    }
    Ok(SamplingParams {
        max_new_tokens: max_tokens,
        temperature,
        top_k,
        top_p: s.top_p.filter(|&p| p < 1.0),
        seed: 0,
        stop,
        stop_token_ids: g.tokenizer.eos_token_ids(),
    })
}

fn choices(st: &AppState, s: &Sampling) -> Result<usize, ApiError> {
    match s.n.unwrap_or(1) {
        0 => Err(ApiError::invalid("n", "n must be at least 1")),
        n if n > st.cfg.max_n => Err(ApiError::invalid(
            "n",
            format!("n {n} is above this server's limit of {}", st.cfg.max_n),
        )),
        n => Ok(n),
    }
}

/// A seed for requests that do not bring one.
fn fresh_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ REQUESTS
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Queues `prompts[i]` × `n` rows (choice index `i * n + j`) and returns their event stream.
fn submit(
    g: &Generator,
    prompts: &[(Vec<u32>, SamplingParams)],
    n: usize,
    seed: Option<u64>,
) -> Result<mpsc::UnboundedReceiver<(usize, GenEvent)>, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let base = seed.unwrap_or_else(fresh_seed);
    let mut jobs = Vec::with_capacity(prompts.len() * n);
    for (pi, (ids, params)) in prompts.iter().enumerate() {
        for j in 0..n {
            let index = pi * n + j;
            jobs.push(GenJob {
                index,
                prompt: ids.clone(),
                params: params.clone(),
                seed: base.wrapping_add(index as u64),
                events: tx.clone(),
            });
        }
    }
    g.submit(jobs).map_err(|e| match e {
        SubmitError::Busy => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "the generation queue is full; retry shortly",
        ),
        SubmitError::Gone => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the generation worker has stopped",
        ),
    })?;
    Ok(rx)
}

/// Waits for all `total` rows.
async fn collect(
    mut rx: mpsc::UnboundedReceiver<(usize, GenEvent)>,
    total: usize,
) -> Result<Vec<Generation>, ApiError> {
    let mut out: Vec<Option<Generation>> = (0..total).map(|_| None).collect();
    let mut left = total;
    while left > 0 {
        match rx.recv().await {
            Some((i, GenEvent::Done(g))) => {
                if out[i].replace(g).is_none() {
                    left -= 1;
                }
            }
            Some((_, GenEvent::Failed(e))) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("generation failed: {e}"),
                ))
            }
            Some((_, GenEvent::Token { .. })) => {}
            None => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the generation worker stopped before answering",
                ))
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

fn finish(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn token_text(g: &Generator, id: u32) -> String {
    String::from_utf8_lossy(g.tokenizer.token_bytes(id)).into_owned()
}

pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse_body(body)?;
    let g = generator(&st)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages is empty"));
    }
    if req.top_logprobs.unwrap_or(0) > 0 {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs is not supported; `logprobs: true` gives each sampled token's log-probability",
        ));
    }
    let mut msgs = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(x)) => t.push_str(x),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!("messages[{i}]: content part of type {kind:?} is not supported (text only)"),
                            ))
                        }
                    }
                }
                t
            }
        };
        msgs.push(ChatMessage::new(m.role.clone(), text));
    }
    let text = g
        .chat
        .render(&msgs, true)
        .map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?;
    let ids = g
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", format!("tokenizing: {e}")))?;
    let params = sampling_params(&st, g, &req.sampling, ids.len(), 1024)?;
    let n = choices(&st, &req.sampling)?;
    let prompt_len = ids.len();
    let rx = submit(g, &[(ids, params)], n, req.sampling.seed)?;
    let id = request_id("chatcmpl");
    let created = now();
    let model = st.cfg.model_name.clone();
    if req.sampling.stream {
        let include_usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let g = g.clone();
        return Ok(stream(rx, n, move |ev| match ev {
            Chunk::Start(i) => Some(json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                             "logprobs": null, "finish_reason": null}]
            })),
            Chunk::Text(i, text, token, lp) => Some(json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": i, "delta": {"content": text},
                             "logprobs": req.logprobs.then(|| json!({"content": [
                                 {"token": token_text(&g, token), "logprob": lp, "bytes": g.tokenizer.token_bytes(token), "top_logprobs": []}
                             ]})),
                             "finish_reason": null}]
            })),
            Chunk::End(i, f) => Some(json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish(f)}]
            })),
            Chunk::Usage(c) => include_usage.then(|| {
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage(prompt_len * n, c)
                })
            }),
        }));
    }
    let gens = collect(rx, n).await?;
    let completion: usize = gens.iter().map(|x| x.token_ids.len()).sum();
    let choices: Vec<Value> = gens
        .iter()
        .enumerate()
        .map(|(i, x)| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": x.text},
                "logprobs": req.logprobs.then(|| json!({"content": x.token_ids.iter().zip(&x.logprobs).map(|(&t, &lp)| json!({
                    "token": token_text(g, t), "logprob": lp, "bytes": g.tokenizer.token_bytes(t), "top_logprobs": []
                })).collect::<Vec<_>>()})),
                "finish_reason": finish(x.finish_reason),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_len * n, completion),
    }))
    .into_response())
}

pub(crate) async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn complete(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(body)?;
    let g = generator(&st)?;
    let texts: Vec<(Vec<u32>, String)> = match &req.prompt {
        Prompt::Text(t) => vec![(encode(g, t)?, t.clone())],
        Prompt::Texts(v) => v
            .iter()
            .map(|t| Ok((encode(g, t)?, t.clone())))
            .collect::<Result<_, ApiError>>()?,
        Prompt::Ids(ids) => {
            let vocab = g.tokenizer.vocab_size() as u32;
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary of {vocab}"),
                ));
            }
            vec![(
                ids.clone(),
                g.tokenizer.decode(ids, false).unwrap_or_default(),
            )]
        }
    };
    if texts.is_empty() || texts.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let n = choices(&st, &req.sampling)?;
    if texts.len() * n > st.cfg.max_n {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "{} prompts × n {n} is above this server's limit of {} sequences per request",
                texts.len(),
                st.cfg.max_n
            ),
        ));
    }
    let mut prompts = Vec::with_capacity(texts.len());
    for (ids, _) in &texts {
        let p = sampling_params(&st, g, &req.sampling, ids.len(), 16)?;
        prompts.push((ids.clone(), p));
    }
    let prompt_tokens: usize = texts.iter().map(|(ids, _)| ids.len()).sum::<usize>() * n;
    let total = texts.len() * n;
    let rx = submit(g, &prompts, n, req.sampling.seed)?;
    let id = request_id("cmpl");
    let created = now();
    let model = st.cfg.model_name.clone();
    let echo: Vec<String> = texts
        .iter()
        .map(|(_, t)| if req.echo { t.clone() } else { String::new() })
        .collect();
    if req.sampling.stream {
        let include_usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let want_lp = req.logprobs.is_some();
        let g = g.clone();
        return Ok(stream(rx, total, move |ev| {
            let choice = |i: usize, text: String, lp: Value, fin: Value| {
                json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": fin}]
                })
            };
            match ev {
                Chunk::Start(i) if !echo[i / n].is_empty() => {
                    Some(choice(i, echo[i / n].clone(), Value::Null, Value::Null))
                }
                Chunk::Start(_) => None,
                Chunk::Text(i, text, token, lp) => {
                    let lp = if want_lp {
                        json!({"tokens": [token_text(&g, token)], "token_logprobs": [lp], "top_logprobs": null, "text_offset": []})
                    } else {
                        Value::Null
                    };
                    Some(choice(i, text, lp, Value::Null))
                }
                Chunk::End(i, f) => Some(choice(i, String::new(), Value::Null, json!(finish(f)))),
                Chunk::Usage(c) => include_usage.then(|| {
                    json!({
                        "id": id, "object": "text_completion", "created": created, "model": model,
                        "choices": [], "usage": usage(prompt_tokens, c)
                    })
                }),
            }
        }));
    }
    let gens = collect(rx, total).await?;
    let completion: usize = gens.iter().map(|x| x.token_ids.len()).sum();
    let choices: Vec<Value> = gens
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let lp = if req.logprobs.is_some() {
                let mut off = echo[i / n].len();
                let mut offsets = Vec::with_capacity(x.token_ids.len());
                for &t in &x.token_ids {
                    offsets.push(off);
                    off += g.tokenizer.token_bytes(t).len();
                }
                json!({
                    "tokens": x.token_ids.iter().map(|&t| token_text(g, t)).collect::<Vec<_>>(),
                    "token_logprobs": x.logprobs,
                    "top_logprobs": null,
                    "text_offset": offsets,
                })
            } else {
                Value::Null
            };
            json!({
                "index": i,
                "text": format!("{}{}", echo[i / n], x.text),
                "logprobs": lp,
                "finish_reason": finish(x.finish_reason),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion),
    }))
    .into_response())
}

fn encode(g: &Generator, t: &str) -> Result<Vec<u32>, ApiError> {
    g.tokenizer
        .encode(t, false)
        .map_err(|e| ApiError::invalid("prompt", format!("tokenizing: {e}")))
}

/// What a stream formatter is asked to turn into a chunk.
enum Chunk {
    Start(usize),
    /// Choice, text delta, token id, log-prob.
    Text(usize, String, u32, f32),
    End(usize, FinishReason),
    /// All rows are done; completion tokens in total.
    Usage(usize),
}

/// An SSE response: the chunks `fmt` makes of the rows' events, then `data: [DONE]`. When the
/// client goes away the stream is dropped, the rows' channel closes and the worker cancels them.
fn stream(
    mut rx: mpsc::UnboundedReceiver<(usize, GenEvent)>,
    total: usize,
    fmt: impl Fn(Chunk) -> Option<Value> + Send + 'static,
) -> Response {
    let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Option<Value>| {
            let tx = tx.clone();
            async move {
                match v {
                    Some(v) => tx
                        .send(Ok(Event::default().data(v.to_string())))
                        .await
                        .is_ok(),
                    None => true,
                }
            }
        };
        for i in 0..total {
            if !send(fmt(Chunk::Start(i))).await {
                return;
            }
        }
        let mut left = total;
        let mut tokens = 0usize;
        while left > 0 {
            let chunk = match rx.recv().await {
                Some((
                    i,
                    GenEvent::Token {
                        token,
                        logprob,
                        text,
                    },
                )) => {
                    tokens += 1;
                    Chunk::Text(i, text, token, logprob)
                }
                Some((i, GenEvent::Done(g))) => {
                    left -= 1;
                    Chunk::End(i, g.finish_reason)
                }
                Some((_, GenEvent::Failed(e))) => {
                    let v = json!({"error": {"message": format!("generation failed: {e}"), "type": "server_error", "code": 500}});
                    let _ = tx.send(Ok(Event::default().data(v.to_string()))).await;
                    return;
                }
                None => return,
            };
            if !send(fmt(chunk)).await {
                return;
            }
        }
        if send(fmt(Chunk::Usage(tokens))).await {
            let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
        }
    });
    Sse::new(ReceiverStream::new(out))
        .keep_alive(KeepAlive::default())
        .into_response()
}
