//! The reward service: `POST /v1/rewards/token` (srcode's own schema, one item or a list),
//! `POST /get_reward` (OpenRLHF's remote reward schema) and `POST /v1/scan`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use srcode_lm::tokenizer::Tokenizer;
use srcode_reward::align::align_token_bytes;
use srcode_reward::reference::RepairPattern;
use srcode_reward::{RewardEngine, RewardInput, TokenRewards};
use srcode_scan::{extract, Language};

use crate::{parse_body, ApiError, AppState};

/// Patterns learnt from repair pairs are kept for this many distinct pairs.
const PATTERN_CACHE: usize = 4096;

/// The analyser, the reward engine and the tokenizer that defines tokens.
pub struct RewardService {
    engine: RewardEngine,
    tokenizer: Tokenizer,
    /// Whether items may carry `tests` (run in the engine's sandbox).
    tests: bool,
    patterns: Mutex<HashMap<u64, Option<Arc<RepairPattern>>>>,
}

impl RewardService {
    /// `tests`: the engine has a sandbox and items may ask for their tests to be run.
    pub fn new(engine: RewardEngine, tokenizer: Tokenizer, tests: bool) -> Self {
        RewardService {
            engine,
            tokenizer,
            tests,
            patterns: Mutex::new(HashMap::new()),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn pattern(&self, v: &str, f: &str, lang: Language) -> Option<Arc<RepairPattern>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (v, f, lang.name()).hash(&mut h);
        let key = h.finish();
        if let Some(p) = self
            .patterns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return p.clone();
        }
        let p = RepairPattern::new(v, f, lang, self.engine.config().reference.ngram)
            .ok()
            .map(Arc::new);
        let mut cache = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PATTERN_CACHE {
            cache.clear();
        }
        cache.insert(key, p.clone());
        p
    }

    /// Scores one item. `max_tokens` bounds its token count.
    pub fn score(&self, item: &RewardItem, max_tokens: usize) -> Result<Value, ApiError> {
        let lang = item_language(item.language.as_deref(), &item.response)?;
        let (ids, spans, tokenized) = match &item.response_token_ids {
            Some(ids) => {
                let vocab = self.tokenizer.vocab_size() as u32;
                if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                    return Err(ApiError::invalid(
                        "response_token_ids",
                        format!("token id {bad} is outside the vocabulary of {vocab}"),
                    ));
                }
                let bytes: Vec<&[u8]> =
                    ids.iter().map(|&i| self.tokenizer.token_bytes(i)).collect();
                let spans = align_token_bytes(item.response.as_bytes(), &bytes);
                (ids.clone(), spans, false)
            }
            None => {
                let (ids, spans) = self
                    .tokenizer
                    .encode_with_offsets(&item.response)
                    .map_err(|e| ApiError::invalid("response", format!("tokenizing: {e}")))?;
                (ids, spans, true)
            }
        };
        if ids.len() > max_tokens {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the response has {} tokens; this server scores at most {max_tokens}",
                    ids.len()
                ),
            ));
        }
        if item.tests.is_some() && !self.tests {
            return Err(ApiError::invalid(
                "tests",
                "this server does not run tests; start it with `srcode serve --tests`",
            ));
        }
        let pattern = item
            .pair
            .as_ref()
            .and_then(|p| self.pattern(&p.vulnerable, &p.fixed, lang));
        let reference_len = item
            .pair
            .as_ref()
            .map(|p| p.fixed.bytes().filter(|b| !b.is_ascii_whitespace()).count());
        let r = self
            .engine
            .reward(&RewardInput {
                completion: &item.response,
                tokens: &spans,
                lang,
                pair: pattern.as_deref(),
                reference_len,
                function_name: item.function_name.as_deref(),
                tests: item.tests.as_deref(),
            })
            .map_err(|e| ApiError::bad_request(format!("scoring the response: {e}")))?;
        Ok(reward_json(
            &r,
            lang,
            &ids,
            &spans,
            tokenized,
            pattern.is_some(),
        ))
    }
}

fn reward_json(
    r: &TokenRewards,
    lang: Language,
    ids: &[u32],
    spans: &[(usize, usize)],
    tokenized: bool,
    pattern: bool,
) -> Value {
    let mut v = json!({
        "token_rewards": r.per_token,
        "reward": r.total,
        "instance_reward": r.instance,
        "token_reward": r.total - r.instance,
        "language": lang.name(),
        "findings": r.findings,
        "breakdown": r.breakdown,
        "pair_pattern": pattern,
        "token_offsets": spans,
    });
    if tokenized {
        v["token_ids"] = json!(ids);
    }
    v
}

fn item_language(given: Option<&str>, response: &str) -> Result<Language, ApiError> {
    match given {
        Some(l) => l
            .parse::<Language>()
            .map_err(|e| ApiError::invalid("language", format!("language {l:?}: {e}"))),
        None => extract::answer_language(response.as_bytes()).ok_or_else(|| {
            ApiError::invalid(
                "language",
                "no `language` given and none can be guessed from the response",
            )
        }),
    }
}

/// A repair pair: its patterns reward reproducing the fix and penalise the vulnerable lines.
#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    #[serde(alias = "func_src_before")]
    pub vulnerable: String,
    #[serde(alias = "func_src_after")]
    pub fixed: String,
}

/// One item of `POST /v1/rewards/token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardItem {
    #[serde(default)]
    pub prompt: Option<String>,
    pub response: String,
    /// The generated ids; rewards come back one per id. Without them the response is
    /// tokenised with the server's tokenizer and the ids are returned.
    #[serde(default)]
    pub response_token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub pair: Option<Pair>,
    #[serde(default)]
    pub function_name: Option<String>,
    /// Python tests run against the response's code in the sandbox (`--tests`).
    #[serde(default)]
    pub tests: Option<String>,
}

enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

/// One JSON object, or a list of them (errors name the item).
fn parse_items<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<OneOrMany<T>, ApiError> {
    let v: Value = parse_body(body)?;
    let item = |i: Option<usize>, v: Value| {
        serde_json::from_value::<T>(v).map_err(|e| {
            ApiError::bad_request(match i {
                Some(i) => format!("item {i}: {e}"),
                None => format!("the request body is not a valid request: {e}"),
            })
        })
    };
    match v {
        Value::Array(items) => Ok(OneOrMany::Many(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| item(Some(i), v))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(_) => Ok(OneOrMany::One(item(None, v)?)),
        other => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object or a list of objects, not {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "a string",
            }
        ))),
    }
}

/// Runs CPU work off the async threads, within the server's reward concurrency.
async fn blocking<T: Send + 'static>(
    st: &Arc<AppState>,
    f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = st.reward_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many reward requests in flight; retry shortly",
        )
    })?;
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&st2)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reward task: {e}"),
        )
    })?
}

fn check_items(n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::bad_request("the list of items is empty"));
    }
    if n > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{n} items in one request; this server takes at most {max}"),
        ));
    }
    Ok(())
}

pub(crate) async fn token_rewards(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: OneOrMany<RewardItem> = match parse_items(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let res = match req {
        OneOrMany::One(item) => {
            blocking(&st, move |st| {
                let v = st.rewards.score(&item, st.cfg.max_tokens)?;
                st.metrics.rewarded.fetch_add(1, Ordering::Relaxed);
                Ok(v)
            })
            .await
        }
        OneOrMany::Many(items) => {
            if let Err(e) = check_items(items.len(), st.cfg.max_items) {
                return e.into_response();
            }
            blocking(&st, move |st| {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let v = st.rewards.score(item, st.cfg.max_tokens).map_err(|mut e| {
                        e.message = format!("item {i}: {}", e.message);
                        e
                    })?;
                    out.push(v);
                }
                st.metrics
                    .rewarded
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                Ok(Value::Array(out))
            })
            .await
        }
    };
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// OpenRLHF's remote reward request: full texts, their prompts, optional labels.
#[derive(Deserialize)]
struct OpenRlhfRequest {
    query: Vec<String>,
    #[serde(default)]
    prompts: Vec<String>,
    /// Per item: a language name, or a JSON object `{language, pair, function_name}`.
    #[serde(default)]
    labels: Vec<Value>,
}

/// What an OpenRLHF label may say about its sample: language, repair pair, function name.
type LabelFields = (Option<String>, Option<Pair>, Option<String>);

fn label_fields(label: Option<&Value>) -> Result<LabelFields, String> {
    match label {
        None | Some(Value::Null) => Ok((None, None, None)),
        Some(Value::String(s)) if s.trim_start().starts_with('{') => {
            let v: Value =
                serde_json::from_str(s).map_err(|e| format!("label is not JSON: {e}"))?;
            label_fields(Some(&v))
        }
        Some(Value::String(s)) if s.is_empty() => Ok((None, None, None)),
        Some(Value::String(s)) => Ok((Some(s.clone()), None, None)),
        Some(Value::Object(o)) => {
            let lang = o
                .get("language")
                .and_then(Value::as_str)
                .map(str::to_string);
            let pair = match o.get("pair") {
                Some(p) => Some(
                    serde_json::from_value::<Pair>(p.clone())
                        .map_err(|e| format!("label pair: {e}"))?,
                ),
                None => None,
            };
            let func = o
                .get("function_name")
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok((lang, pair, func))
        }
        Some(other) => Err(format!("label must be a string or an object, got {other}")),
    }
}

pub(crate) async fn openrlhf_reward(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: OpenRlhfRequest = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_items(req.query.len(), st.cfg.max_items) {
        return e.into_response();
    }
    if !req.prompts.is_empty() && req.prompts.len() != req.query.len() {
        return ApiError::invalid(
            "prompts",
            format!(
                "{} prompts for {} queries",
                req.prompts.len(),
                req.query.len()
            ),
        )
        .into_response();
    }
    let res = blocking(&st, move |st| {
        let mut rewards = Vec::with_capacity(req.query.len());
        let (mut tok, mut inst, mut nfind) = (Vec::new(), Vec::new(), Vec::new());
        for (i, q) in req.query.iter().enumerate() {
            let err = |m: String| ApiError::bad_request(format!("item {i}: {m}"));
            // The query is prompt + response; score the response.
            let response = match req.prompts.get(i) {
                Some(p) => q.strip_prefix(p.as_str()).unwrap_or(q),
                None => q,
            };
            let (language, pair, function_name) = label_fields(req.labels.get(i)).map_err(err)?;
            let item = RewardItem {
                prompt: req.prompts.get(i).cloned(),
                response: response.to_string(),
                response_token_ids: None,
                language,
                pair,
                function_name,
                tests: None,
            };
            let v = st
                .rewards
                .score(&item, st.cfg.max_tokens)
                .map_err(|mut e| {
                    e.message = format!("item {i}: {}", e.message);
                    e
                })?;
            rewards.push(v["reward"].as_f64().unwrap_or(0.0));
            tok.push(v["token_reward"].clone());
            inst.push(v["instance_reward"].clone());
            nfind.push(v["findings"].as_array().map_or(0, Vec::len));
        }
        st.metrics
            .rewarded
            .fetch_add(rewards.len() as u64, Ordering::Relaxed);
        Ok(json!({
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {
                "token_reward": tok,
                "instance_reward": inst,
                "findings": nfind,
            },
        }))
    })
    .await;
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One item of `POST /v1/scan`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanItem {
    code: String,
    #[serde(default)]
    language: Option<String>,
    /// Treat `code` as an LLM answer and scan the code of its Markdown fences (default true).
    #[serde(default = "yes")]
    answer: bool,
    #[serde(default)]
    file: Option<String>,
}

fn yes() -> bool {
    true
}

fn scan_one(st: &AppState, item: &ScanItem) -> Result<Value, ApiError> {
    let lang = item_language(item.language.as_deref(), &item.code)?;
    let scanner = st.rewards.engine.scanner();
    let file = item.file.as_deref().unwrap_or("");
    let findings = if item.answer {
        scanner.scan_answer(item.code.as_bytes(), lang, file)
    } else {
        scanner.scan_code(item.code.as_bytes(), lang, file)
    }
    .map_err(|e| ApiError::invalid("code", e.to_string()))?;
    Ok(json!({ "language": lang.name(), "findings": findings }))
}

pub(crate) async fn scan(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: OneOrMany<ScanItem> = match parse_items(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let res = match req {
        OneOrMany::One(item) => blocking(&st, move |st| scan_one(st, &item)).await,
        OneOrMany::Many(items) => {
            if let Err(e) = check_items(items.len(), st.cfg.max_items) {
                return e.into_response();
            }
            blocking(&st, move |st| {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| {
                        scan_one(st, it).map_err(|mut e| {
                            e.message = format!("item {i}: {}", e.message);
                            e
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            })
            .await
        }
    };
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openrlhf_labels_carry_a_language_or_a_json_object() {
        assert_eq!(label_fields(None).unwrap().0, None);
        assert_eq!(
            label_fields(Some(&json!("c"))).unwrap().0.as_deref(),
            Some("c")
        );
        let (l, p, f) = label_fields(Some(&json!(
            "{\"language\": \"python\", \"pair\": {\"vulnerable\": \"a\", \"fixed\": \"b\"}, \"function_name\": \"f\"}"
        )))
        .unwrap();
        assert_eq!(l.as_deref(), Some("python"));
        assert_eq!(p.map(|p| p.fixed).as_deref(), Some("b"));
        assert_eq!(f.as_deref(), Some("f"));
        assert!(label_fields(Some(&json!(3))).is_err());
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    #[serde(alias = "prompt")]
    content: String,
    /// Also return each token's byte range in `content`.
    #[serde(default)]
    with_offsets: bool,
}

/// `POST /tokenize` (llama.cpp's and vLLM's shape): the server tokenizer's ids for a text.
pub(crate) async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: TokenizeRequest = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let tok = st.rewards.tokenizer();
    match tok.encode_with_offsets(&req.content) {
        Ok((ids, spans)) if req.with_offsets => {
            Json(json!({"tokens": ids, "offsets": spans})).into_response()
        }
        Ok((ids, _)) => Json(json!({"tokens": ids})).into_response(),
        Err(e) => ApiError::invalid("content", format!("tokenizing: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
    #[serde(default)]
    skip_special_tokens: bool,
}

/// `POST /detokenize`: the text of token ids.
pub(crate) async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: DetokenizeRequest = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let tok = st.rewards.tokenizer();
    let vocab = tok.vocab_size() as u32;
    if let Some(bad) = req.tokens.iter().find(|&&t| t >= vocab) {
        return ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        )
        .into_response();
    }
    match tok.decode(&req.tokens, req.skip_special_tokens) {
        Ok(text) => Json(json!({"content": text})).into_response(),
        Err(e) => ApiError::invalid("tokens", format!("decoding: {e}")).into_response(),
    }
}
