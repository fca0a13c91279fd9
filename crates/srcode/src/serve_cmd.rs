//! `srcode serve`: the OpenAI-compatible API over a local model and the token-level reward
//! service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use srcode_reward::config::RewardConfig;
use srcode_reward::RewardEngine;
use srcode_sandbox::{Limits, Sandbox};
use srcode_scan::Scanner;
use srcode_serve::{AppState, Generator, Metrics, RewardService, ServeConfig};

use crate::generate::{candle_core_device, load_model};
use crate::home;

#[derive(Args)]
pub struct ServeArgs {
    /// GGUF file or Hugging Face directory (default: the fetched default model). Its tokenizer
    /// defines the tokens of the reward endpoints.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to bind. Loopback unless you say otherwise; anything else should have an API key.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients see (default: the model file's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Extra analyser rule directory (repeatable).
    #[arg(long = "rules", value_name = "DIR")]
    rules: Vec<PathBuf>,
    /// Reward configuration (TOML; see `srcode_reward::config`).
    #[arg(long)]
    reward_config: Option<PathBuf>,
    /// Serve rewards and scanning only: load the tokenizer, not the weights.
    #[arg(long)]
    rewards_only: bool,
    /// Let reward items carry `tests` (Python run against the response's code in the sandbox:
    /// no network, CPU/memory/file/process limits).
    #[arg(long)]
    tests: bool,
    /// How to hold the weights (q4_1, q8_0, q4_0, f32, bf16, f16).
    #[arg(long)]
    weights: Option<String>,
    /// A LoRA adapter directory (`final/` of `srcode train sft|rl`) merged into the weights.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Environment variable holding an API key; when set, every route but /health wants
    /// `Authorization: Bearer <key>`.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Largest `max_tokens` per request, and most tokens per reward item.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Time limit of a request in seconds (streams: until the first byte).
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Generation requests that may wait; more get 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Reward and scan requests computed at once; more get 429.
    #[arg(long, default_value_t = 256)]
    reward_concurrency: usize,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!(
            "--timeout must be a positive number of seconds, got {}",
            a.timeout
        );
    }
    let path = home::resolve_model(a.model.as_deref())?;
    let api_key = match &a.api_key_env {
        Some(var) => Some(
            std::env::var(var)
                .with_context(|| format!("--api-key-env {var}: the variable is not set"))?,
        ),
        None => None,
    };
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (a.host.as_str(), a.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .ok_or(())
        })
        .map_err(|()| anyhow::anyhow!("--host {}: not an address this machine can bind", a.host))?;
    if !addr.ip().is_loopback() && api_key.is_none() {
        eprintln!(
            "warning: serving on {addr}, reachable from other machines, without an API key (--api-key-env)"
        );
    }
    let metrics = Arc::new(Metrics::default());
    let cfg = match &a.reward_config {
        Some(p) => RewardConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("reward config {}", p.display()))?,
        None => RewardConfig::default(),
    };
    let scanner = Scanner::with_rule_dirs(&a.rules).context("loading rules")?;
    let mut engine = RewardEngine::new(scanner, cfg);
    if a.tests {
        engine = engine.with_sandbox(Sandbox::new(Limits::default()));
    }
    let (tokenizer, generator) = if a.rewards_only {
        let meta = srcode_lm::loader::inspect(&path)
            .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
        (meta.tokenizer, None)
    } else {
        let device = candle_core_device()?;
        let lm = load_model(&path, &device, a.weights.as_deref(), a.adapter.as_deref())?;
        let tok = lm.tokenizer.clone();
        let g = Generator::start(lm, a.queue, a.max_batch, metrics.clone())
            .context("starting the generation worker")?;
        (tok, Some(g))
    };
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        path.file_stem()
            .or(path.file_name())
            .map_or("srcode".into(), |s| s.to_string_lossy().into_owned())
    });
    let serve_cfg = ServeConfig {
        model_name,
        max_body_bytes: a.max_body_bytes,
        max_tokens: a.max_tokens,
        request_timeout: Duration::from_secs_f64(a.timeout),
        queue: a.queue,
        max_batch: a.max_batch,
        reward_concurrency: a.reward_concurrency,
        api_key,
        ..ServeConfig::default()
    };
    let state = AppState::new(
        serve_cfg,
        generator,
        RewardService::new(engine, tokenizer, a.tests),
        metrics,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "srcode serve: listening on http://{local} ({}; OpenAI API at http://{local}/v1)",
            if state.generator.is_some() {
                "generation and rewards"
            } else {
                "rewards and scanning only"
            }
        );
        srcode_serve::serve(listener, state, async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("srcode serve: shutting down");
        })
        .await
        .context("serving")
    })
}
