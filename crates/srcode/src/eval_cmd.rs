//! `srcode eval`: security and functionality benchmarks on the local model or an
//! OpenAI-compatible endpoint, resumable, with Markdown and HTML reports; `srcode eval compare`
//! lays runs side by side with bootstrap intervals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use srcode_data::cache::ResponseCache;
use srcode_data::{HttpTeacher, HttpTeacherConfig};
use srcode_eval::report::CompareRun;
use srcode_eval::{
    evaluate, BenchKind, EvalSpec, GenSettings, Generator, HttpGenerator, LocalGenerator, Mode,
    Scorer,
};
use srcode_sandbox::{Limits, Sandbox};

use crate::generate::{candle_core_device, load_model};
use crate::home;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Lay several evaluations side by side (e.g. base vs SFT vs RL-instance vs RL-token):
    /// every metric, and each run's difference to the first with a 95% paired bootstrap
    /// interval over tasks. Writes compare.md and compare.html.
    Compare(CompareArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Benchmark: sven, humaneval-pro (or mbpp-pro), cyberseceval-instruct,
    /// cyberseceval-autocomplete, securityeval (or llmseceval), cweval, jsonl.
    #[arg(long)]
    pub bench: Option<String>,
    /// The benchmark's file or directory (default for sven and humaneval-pro: the copy in
    /// ../shared/data, or $SRCODE_SHARED_DATA).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Local model: GGUF file or Hugging Face directory (default: the fetched default model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// How to hold the local weights (q4_1, q8_0, f32, ...; see `srcode generate --help`).
    #[arg(long)]
    pub weights: Option<String>,
    /// A LoRA adapter directory (`final/` of `srcode train sft|rl`) merged into the local model's
    /// weights (dense f32 unless --weights says bf16, f16, or q8_0/q4_1, which quantise the merged
    /// weights again). Evaluate the base model with the same --weights to compare like with like.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Evaluate an OpenAI-compatible endpoint instead (e.g. http://127.0.0.1:8000/v1); its
    /// answers are cached in the evaluation directory.
    #[arg(long)]
    pub base_url: Option<String>,
    /// The endpoint's model name.
    #[arg(long, default_value = "default")]
    pub endpoint_model: String,
    /// Environment variable holding the endpoint's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Concurrent requests to the endpoint.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Ask completion tasks as chat instructions (always so for endpoints).
    #[arg(long)]
    pub instruct: bool,
    /// Local model: continue completion tasks inside the chat template, with the answer
    /// pre-filled with an opened code fence and the code prefix (for chat-tuned models, which
    /// tend to close a raw code prefix instead of continuing it).
    #[arg(long, conflicts_with = "instruct")]
    pub chat_prefill: bool,
    /// Samples per task.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    #[arg(long, default_value_t = 0.4)]
    pub temperature: f32,
    /// Nucleus sampling; 1 turns it off.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate only the first N tasks (in id order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Rows the local model decodes together.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Run name: results go to runs/NAME/eval/BENCH/ (default: the model's file name).
    #[arg(long)]
    pub run: Option<String>,
    /// Output directory (overrides --run).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Wall-clock limit of one test run in the sandbox, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub test_timeout: f64,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Runs to compare: run names (runs/NAME/eval/BENCH) or evaluation directories.
    #[arg(required = true)]
    pub runs: Vec<String>,
    /// The benchmark (needed with run names).
    #[arg(long)]
    pub bench: Option<String>,
    /// Where to write compare.md and compare.html (default: runs/compare-BENCH).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 2000)]
    pub iters: usize,
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.command {
        Some(EvalCommand::Compare(c)) => compare(c),
        None => run_eval(a.run),
    }
}

/// The shared data directory (`$SRCODE_SHARED_DATA` or ../shared/data from here).
fn shared_data_dir() -> PathBuf {
    std::env::var_os("SRCODE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

fn run_eval(a: RunArgs) -> Result<()> {
    let Some(bench_name) = a.bench.as_deref() else {
        bail!("--bench is required (sven, humaneval-pro, cyberseceval-instruct, cyberseceval-autocomplete, securityeval, cweval, jsonl), or use `srcode eval compare`");
    };
    let kind: BenchKind = bench_name.parse()?;
    let gen_settings = GenSettings {
        n: a.n,
        temperature: a.temperature,
        top_p: (a.top_p < 1.0).then_some(a.top_p),
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
    };
    gen_settings.validate()?;
    let data = match (&a.data, kind.shared_path()) {
        (Some(d), _) => d.clone(),
        (None, Some(rel)) => shared_data_dir().join(rel),
        (None, None) => bail!(
            "--data is required for `{}` (it does not ship with srcode; see the README for where to get it)",
            kind.name()
        ),
    };
    let loaded = srcode_eval::load(kind, &data)
        .with_context(|| format!("loading benchmark {} from {}", kind.name(), data.display()))?;
    for (rec, why) in loaded.skipped.iter().take(5) {
        eprintln!("skipped {rec}: {why}");
    }
    if loaded.skipped.len() > 5 {
        eprintln!("… {} records skipped in all", loaded.skipped.len());
    }
    let mut tasks = loaded.tasks;
    if let Some(l) = a.limit {
        if l == 0 {
            bail!("--limit must be at least 1");
        }
        tasks.truncate(l);
    }
    if !(a.test_timeout > 0.0 && a.test_timeout.is_finite()) {
        bail!("--test-timeout must be a positive number of seconds");
    }
    // The run's default name, the directory, then the generator (an endpoint's cache lives
    // in the directory).
    let model_path = match &a.base_url {
        Some(_) => None,
        None => Some(home::resolve_model(a.model.as_deref())?),
    };
    let default_run = match &model_path {
        Some(p) => sanitize(
            &p.file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        ),
        None => format!("endpoint-{}", sanitize(&a.endpoint_model)),
    };
    let dir = match &a.out {
        Some(o) => o.clone(),
        None => Path::new("runs")
            .join(a.run.clone().unwrap_or(default_run))
            .join("eval")
            .join(kind.name()),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let generator: Box<dyn Generator> = match (&a.base_url, &model_path) {
        (Some(url), _) => {
            let teacher = HttpTeacher::new(HttpTeacherConfig {
                base_url: url.clone(),
                model: a.endpoint_model.clone(),
                api_key_env: a.api_key_env.clone(),
                ..HttpTeacherConfig::default()
            })?;
            let cache = ResponseCache::open(&dir.join("cache.sqlite"))?;
            Box::new(HttpGenerator::new(teacher, cache, a.concurrency))
        }
        (None, Some(path)) => {
            let meta =
                std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
            let lm = load_model(
                path,
                &candle_core_device()?,
                a.weights.as_deref(),
                a.adapter.as_deref(),
            )?;
            let id = format!(
                "local:{}:{}{}{}",
                path.file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                meta.len(),
                a.weights
                    .as_deref()
                    .map(|w| format!(":{w}"))
                    .unwrap_or_default(),
                adapter_id(a.adapter.as_deref())?
            );
            let mut g = LocalGenerator::new(lm, id, a.batch);
            g.chat_prefill = a.chat_prefill;
            Box::new(g)
        }
        (None, None) => bail!("no model to evaluate"),
    };
    let spec = EvalSpec {
        bench: kind.name().into(),
        data: data.display().to_string(),
        model: generator.id().to_string(),
        mode: a.instruct.then_some(Mode::Instruct),
        chat_prefill: a.chat_prefill && a.base_url.is_none(),
        gen: gen_settings,
        tasks_digest: EvalSpec::digest(&tasks),
        tasks: tasks.len(),
    };
    let limits = Limits {
        cpu_seconds: a.test_timeout.ceil() as u64,
        wall: Duration::from_secs_f64(a.test_timeout),
        memory_bytes: 1 << 30,
        ..Limits::default()
    };
    let sandbox = Sandbox::new(limits);
    let needs_tests = tasks
        .iter()
        .any(|t| t.tests.is_some() || t.security_tests.is_some());
    if needs_tests {
        // Refuse up front, rather than report every test as not run.
        sandbox
            .run_program(srcode_sandbox::ProgramLang::Python, "pass\n", None)
            .context("the sandbox cannot run tests on this machine")?;
    }
    let scanner = srcode_scan::Scanner::builtin().context("loading the analyser's rules")?;
    let scorer = Scorer::new(scanner, sandbox);
    let bar = ProgressBar::new(tasks.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "eval {bar:30} {pos}/{len} tasks ({elapsed}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} × n={}", kind.name(), a.n));
    let per_call = if a.base_url.is_some() {
        a.concurrency.max(1)
    } else {
        (a.batch / a.n.max(1)).max(1)
    };
    let t0 = Instant::now();
    let out = evaluate(
        &tasks,
        generator.as_ref(),
        &scorer,
        &spec,
        &dir,
        per_call,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .with_context(|| format!("evaluating into {}", dir.display()))?;
    bar.finish_and_clear();
    let m = &out.metrics;
    println!(
        "{}: {} tasks ({} resumed, {} new) × n={} in {:.0} s",
        kind.name(),
        m.tasks,
        out.resumed_tasks,
        out.new_tasks,
        a.n,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "vulnerable rate {:.1}% ({} of {} samples){}; parse rate {:.1}%; refusals {:.1}%",
        100.0 * m.vulnerable_rate,
        m.vulnerable_samples,
        m.samples,
        m.target_cwe_rate
            .map(|t| format!(", target-CWE rate {:.1}%", 100.0 * t))
            .unwrap_or_default(),
        100.0 * m.parse_rate,
        100.0 * m.refusal_rate
    );
    for (k, v) in m.pass_at.iter().chain(&m.func_sec_at) {
        println!("{k} {:.1}%", 100.0 * v);
    }
    if m.failed_samples > 0 {
        println!(
            "{} samples failed to generate (field `error` in samples.jsonl)",
            m.failed_samples
        );
    }
    println!("report: {}", dir.join("report.html").display());
    Ok(())
}

/// Reads an evaluation directory (`run.json`, `samples.jsonl`) as one run of a comparison.
pub fn load_run(dir: &Path, name: String) -> Result<CompareRun> {
    let spec_path = dir.join("run.json");
    let spec: EvalSpec = serde_json::from_str(
        &std::fs::read_to_string(&spec_path)
            .with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .with_context(|| format!("parsing {}", spec_path.display()))?;
    let samples = srcode_eval::run::read_samples(&dir.join("samples.jsonl"))?;
    let metrics = srcode_eval::Metrics::compute(&samples);
    Ok(CompareRun {
        name,
        spec,
        metrics,
        samples,
    })
}

/// The adapter's part of a local model's id (which keys resumed samples): the SHA-256 of its
/// weights, so a retrained adapter is a different model and a re-saved identical one is not.
fn adapter_id(adapter: Option<&Path>) -> Result<String> {
    let Some(dir) = adapter else {
        return Ok(String::new());
    };
    let w = dir.join("adapter_model.safetensors");
    let sum = crate::model_cmd::sha256_file(&w)
        .with_context(|| format!("--adapter: reading {}", w.display()))?;
    Ok(format!("+lora:{}", sum.get(..16).unwrap_or(&sum)))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An evaluation directory from a run name or a path.
fn eval_dir(run: &str, bench: Option<&str>) -> Result<PathBuf> {
    let p = PathBuf::from(run);
    if p.join("samples.jsonl").is_file() {
        return Ok(p);
    }
    let Some(b) = bench else {
        bail!(
            "`{run}` is not an evaluation directory; give --bench to look in runs/{run}/eval/BENCH"
        );
    };
    let d = Path::new("runs").join(run).join("eval").join(b);
    if d.join("samples.jsonl").is_file() {
        Ok(d)
    } else {
        bail!(
            "no evaluation of `{b}` for run `{run}` ({} has no samples.jsonl)",
            d.display()
        )
    }
}

fn compare(c: CompareArgs) -> Result<()> {
    let bench = match &c.bench {
        Some(b) => Some(b.parse::<BenchKind>()?.name().to_string()),
        None => None,
    };
    let mut runs = Vec::new();
    for r in &c.runs {
        let dir = eval_dir(r, bench.as_deref())?;
        // runs/NAME/eval/BENCH is called NAME; any other directory by its own name.
        let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = match dir.parent() {
            Some(parent) if file_name(parent).as_deref() == Some("eval") => {
                parent.parent().and_then(file_name)
            }
            _ => file_name(&dir),
        }
        .unwrap_or_else(|| r.clone());
        runs.push(load_run(&dir, name)?);
    }
    let bench_name = bench.unwrap_or_else(|| runs[0].spec.bench.clone());
    if let Some(other) = runs.iter().find(|r| r.spec.bench != bench_name) {
        bail!(
            "run `{}` evaluated `{}`, not `{bench_name}`: compare runs of one benchmark",
            other.name,
            other.spec.bench
        );
    }
    let out = c
        .out
        .unwrap_or_else(|| Path::new("runs").join(format!("compare-{bench_name}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let md = srcode_eval::report::compare_markdown(&runs, &bench_name, c.iters);
    std::fs::write(out.join("compare.md"), &md)?;
    std::fs::write(
        out.join("compare.html"),
        srcode_eval::report::compare_html(&runs, &bench_name, c.iters),
    )?;
    println!("{md}");
    println!("report: {}", out.join("compare.html").display());
    Ok(())
}
