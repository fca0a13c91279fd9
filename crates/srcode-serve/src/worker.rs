//! The generation worker: one thread owns the model and decodes the requests of many clients
//! together. Requests wait in a bounded queue (full → 429); whatever is queued when a batch
//! starts joins it, up to `max_batch` rows, each row with its own sampling settings and seed.
//! Tokens go back to each request's channel as they are sampled; a request whose client went
//! away is cancelled at its next token.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use srcode_lm::chat::ChatTemplate;
use srcode_lm::generate::{generate_rows, Generation, RowSpec, SamplingParams, SinkControl};
use srcode_lm::loader::LoadedModel;
use srcode_lm::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// One row to decode.
pub struct GenJob {
    /// The choice index this row answers within its request.
    pub index: usize,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub seed: u64,
    pub events: UnboundedSender<(usize, GenEvent)>,
}

/// What a request hears back about one of its rows.
#[derive(Debug)]
pub enum GenEvent {
    Token {
        token: u32,
        logprob: f32,
        text: String,
    },
    Done(Generation),
    Failed(String),
}

/// Why a request could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full (429).
    Busy,
    /// The worker has stopped (503).
    Gone,
}

/// The handle handlers use: the model's tokenizer and chat template, and the queue.
#[derive(Clone)]
pub struct Generator {
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    /// Context length of the model in tokens.
    pub context: usize,
    tx: SyncSender<Vec<GenJob>>,
    metrics: Arc<Metrics>,
}

impl Generator {
    /// Starts the worker thread on `lm`.
    pub fn start(
        lm: LoadedModel,
        queue: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<GenJob>>(queue.max(1));
        let g = Generator {
            tokenizer: lm.tokenizer.clone(),
            chat: lm.chat.clone(),
            context: lm.model.config().max_position_embeddings,
            tx,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("srcode-generate".into())
            .spawn(move || worker(lm, rx, max_batch.max(1), metrics))?;
        Ok(g)
    }

    /// Queues the rows of one request (they are decoded in the same batch).
    pub fn submit(&self, jobs: Vec<GenJob>) -> Result<(), SubmitError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(jobs) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Busy,
                    TrySendError::Disconnected(_) => SubmitError::Gone,
                })
            }
        }
    }
}

fn worker(lm: LoadedModel, rx: Receiver<Vec<GenJob>>, max_batch: usize, metrics: Arc<Metrics>) {
    let mut carry: Option<Vec<GenJob>> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut requests = 1i64;
        let mut jobs = first;
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(more) if jobs.len() + more.len() <= max_batch => {
                    requests += 1;
                    jobs.extend(more);
                }
                Ok(more) => {
                    carry = Some(more);
                    break;
                }
                Err(_) => break,
            }
        }
        // Clients that left while queued cost nothing.
        jobs.retain(|j| !j.events.is_closed());
        if !jobs.is_empty() {
            run_batch(&lm, &jobs, &metrics);
        }
        metrics.queue_depth.fetch_sub(requests, Ordering::Relaxed);
    }
}

fn run_batch(lm: &LoadedModel, jobs: &[GenJob], metrics: &Metrics) {
    let specs: Vec<RowSpec<'_>> = jobs
        .iter()
        .map(|j| RowSpec {
            prompt: &j.prompt,
            params: &j.params,
            seed: j.seed,
        })
        .collect();
    let t0 = Instant::now();
    let result = generate_rows(&lm.model, &lm.tokenizer, &specs, &mut |ev| {
        let j = &jobs[ev.row];
        let sent = j.events.send((
            j.index,
            GenEvent::Token {
                token: ev.token,
                logprob: ev.logprob,
                text: ev.text_delta.to_string(),
            },
        ));
        if sent.is_err() {
            SinkControl::Cancel
        } else {
            SinkControl::Continue
        }
    });
    match result {
        Ok((gens, stats)) => {
            metrics
                .generated_tokens
                .fetch_add(stats.decode_tokens as u64, Ordering::Relaxed);
            metrics
                .prompt_tokens
                .fetch_add(stats.prefill_tokens as u64, Ordering::Relaxed);
            metrics
                .decode_micros
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            for (j, g) in jobs.iter().zip(gens) {
                let _ = j.events.send((j.index, GenEvent::Done(g)));
            }
        }
        Err(e) => {
            tracing::error!("generation failed: {e}");
            for j in jobs {
                let _ = j.events.send((j.index, GenEvent::Failed(e.to_string())));
            }
        }
    }
}
