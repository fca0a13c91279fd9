//! `srcode serve`: an OpenAI-compatible API over a local model and srcode's token-level reward
//! as a service, for trainers that live elsewhere (verl, OpenRLHF, TRL).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both with SSE streaming),
//! `GET /v1/models`, `POST /v1/rewards/token` (one item or a list), `POST /get_reward`
//! (OpenRLHF's remote reward schema), `POST /v1/scan`, `POST /tokenize`, `POST /detokenize`,
//! `GET /health`, `GET /metrics`
//! (Prometheus). Every error is JSON in the OpenAI shape with its HTTP status.

pub mod error;
pub mod metrics;
mod openai;
pub mod reward;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

pub use error::{ApiError, ServeError};
pub use metrics::Metrics;
pub use reward::RewardService;
pub use worker::Generator;

/// Limits and options of a server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The name `GET /v1/models` lists and responses carry.
    pub model_name: String,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a generation request may ask for, and the most tokens a reward
    /// item may have.
    pub max_tokens: usize,
    /// Most choices (`n`) per generation request.
    pub max_n: usize,
    /// Most items in one batched reward or scan request.
    pub max_items: usize,
    /// Time limit of a request (streams: until their first byte).
    pub request_timeout: Duration,
    /// Generation requests that may wait for the model; more get 429.
    pub queue: usize,
    /// Rows decoded together.
    pub max_batch: usize,
    /// Reward and scan requests computed at once; more get 429.
    pub reward_concurrency: usize,
    /// When set, every route but `/health` wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model_name: "srcode".into(),
            max_body_bytes: 4 << 20,
            max_tokens: 4096,
            max_n: 16,
            max_items: 1024,
            request_timeout: Duration::from_secs(300),
            queue: 64,
            max_batch: 16,
            reward_concurrency: 256,
            api_key: None,
        }
    }
}

/// What handlers share.
pub struct AppState {
    pub cfg: ServeConfig,
    /// Absent when the server was started for rewards and scanning only.
    pub generator: Option<Generator>,
    pub rewards: Arc<RewardService>,
    pub metrics: Arc<Metrics>,
    pub reward_slots: Arc<Semaphore>,
    pub started: Instant,
}

impl AppState {
    pub fn new(
        cfg: ServeConfig,
        generator: Option<Generator>,
        rewards: RewardService,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let slots = cfg.reward_concurrency.max(1);
        Arc::new(AppState {
            cfg,
            generator,
            rewards: Arc::new(rewards),
            metrics,
            reward_slots: Arc::new(Semaphore::new(slots)),
            started: Instant::now(),
        })
    }
}

/// The application with all routes and middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/rewards/token", post(reward::token_rewards))
        .route("/get_reward", post(reward::openrlhf_reward))
        .route("/v1/scan", post(reward::scan))
        .route("/tokenize", post(reward::tokenize))
        .route("/detokenize", post(reward::detokenize))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

/// Authentication, the request time limit, metrics, and JSON for the framework's own errors.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let resp = if let Some(key) = st.cfg.api_key.as_deref().filter(|_| route != "/health") {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| same_secret(g.trim().as_bytes(), key.as_bytes())) {
            None
        } else {
            Some(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API key: send `Authorization: Bearer <key>`",
                )
                .into_response(),
            )
        }
    } else {
        None
    };
    let resp = match resp {
        Some(r) => r,
        None => match tokio::time::timeout(st.cfg.request_timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request took longer than {:.0} s",
                    st.cfg.request_timeout.as_secs_f64()
                ),
            )
            .into_response(),
        },
    };
    let resp = if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{route} does not take this method"),
        )
        .into_response()
    } else {
        resp
    };
    st.metrics
        .observe(&route, resp.status().as_u16(), t0.elapsed());
    resp
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; see GET /health for what this server offers",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "model": st.cfg.model_name,
        "generation": st.generator.is_some(),
        "uptime_seconds": st.started.elapsed().as_secs_f64(),
        "routes": [
            "POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models",
            "POST /v1/rewards/token", "POST /get_reward", "POST /v1/scan",
            "POST /tokenize", "POST /detokenize",
            "GET /health", "GET /metrics"
        ],
    }))
    .into_response()
}

async fn prometheus(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

/// Parses a request body as `T`, or says what is wrong with it.
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than this server accepts (--max-body-bytes)".to_string()
        } else {
            format!("reading the request body: {e}")
        };
        ApiError::new(status, msg)
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send JSON",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not a valid request: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(super::same_secret(b"abc", b"abc"));
        assert!(!super::same_secret(b"abc", b"abd"));
        assert!(!super::same_secret(b"abc", b"abcd"));
    }
}
