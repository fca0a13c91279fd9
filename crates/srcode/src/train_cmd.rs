//! `srcode train ...`: supervised fine-tuning on PrimeVul+ (RL lands next to it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use srcode_data::PrimeVulPlus;
use srcode_lm::{LoraConfig, WeightMode};
use srcode_train::sft::{self, SftConfig};

use crate::generate::{parse_float_dtype, pick_device};
use crate::home;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning: implicit prompt → secure code from a PrimeVul+ file, loss on the
    /// response tokens (fix tokens up-weighted). Resumes from the run's checkpoint.
    Sft(SftArgs),
    /// RL with token-level rewards (PPO or GRPO): rollouts from PrimeVul+ prompts, scored by
    /// the analyser and the prompt's repair pair, KL to the frozen starting model. Resumes from
    /// the run's checkpoint.
    Rl(RlArgs),
    /// Draw RL runs' metrics over their steps in one HTML page (flagged share of rollouts,
    /// reward, KL, entropy, length, s/step): e.g. the token- and instance-level runs of the
    /// granularity ablation side by side.
    Plot(PlotArgs),
}

#[derive(Args)]
pub struct PlotArgs {
    /// RL run directories (each with metrics.jsonl).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Reads an RL run's metrics.jsonl.
fn read_rl_metrics(dir: &Path) -> Result<Vec<srcode_train::rl::RlMetrics>> {
    let p = dir.join("metrics.jsonl");
    srcode_core::jsonl::read_strict(&p).with_context(|| format!("reading {}", p.display()))
}

fn run_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn plot(a: PlotArgs) -> Result<()> {
    let mut runs = Vec::new();
    for d in &a.runs {
        runs.push((run_name(d), read_rl_metrics(d)?));
    }
    let names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    let html = srcode_train::report::rl_html(&format!("RL runs: {}", names.join(" vs ")), &runs);
    std::fs::write(&a.out, html).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct RlArgs {
    /// PrimeVul+ samples: their prompts are the RL prompts, their pairs the reference.
    #[arg(long)]
    pub data: PathBuf,
    /// Base model: GGUF file or Hugging Face directory (default: the fetched default).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Start from this LoRA adapter (e.g. runs/sft/final from `train sft`); it is also the
    /// frozen reference of the KL term.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Run directory: checkpoint/, metrics.jsonl and final/.
    #[arg(long, default_value = "runs/rl")]
    pub out: PathBuf,
    /// Run configuration (TOML) with [rl], [rl.lora] and [reward] sections.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// ppo or grpo (overrides rl.algorithm).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// token, instance or both (overrides rl.granularity): where the security reward lands.
    #[arg(long)]
    pub reward_granularity: Option<String>,
    /// Steps (overrides rl.steps).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// What decodes the rollouts (overrides rl.rollout_weights): auto (a Q8_0 snapshot of the
    /// policy on the CPU, the policy itself on a GPU), q8_0, or policy.
    #[arg(long)]
    pub rollout_weights: Option<String>,
    /// Stop after this many steps with a checkpoint; the same command resumes.
    #[arg(long)]
    pub pause_after: Option<usize>,
    /// Print the resolved configuration and a memory estimate, then exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Compute device: `auto` (CUDA when built with `--features cuda` and a GPU is present),
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Float type of weights, activations and adapters: `f32`, or `bf16` (GPU memory and speed;
    /// small updates round away in bf16, so keep learning rates up or stay with f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Args)]
pub struct SftArgs {
    /// PrimeVul+ samples (`srcode data build` writes runs/NAME/data/primevul_plus.jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// Base model: GGUF file or Hugging Face directory (default: the fetched default).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Run directory: checkpoint/, metrics.jsonl and final/ (the trained model) go here.
    #[arg(long, default_value = "runs/sft")]
    pub out: PathBuf,
    /// Run configuration (TOML) with an [sft] section (and [sft.lora]); see configs/srcode.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// LoRA rank (0: full fine-tuning). Overrides [sft.lora] rank.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// Optimiser steps (overrides sft.max_steps).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Stop after this many steps of the schedule with a checkpoint; the same command resumes.
    #[arg(long)]
    pub pause_after: Option<usize>,
    /// Print the resolved configuration and the dataset split, then exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Compute device: `auto` (CUDA when built with `--features cuda` and a GPU is present),
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Float type of weights, activations and adapters: `f32`, or `bf16` (GPU memory and speed;
    /// small updates round away in bf16, so keep learning rates up or stay with f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

/// `[sft.lora]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
struct LoraSection {
    /// 0: full fine-tuning.
    rank: usize,
    alpha: f64,
    targets: Vec<String>,
}

impl Default for LoraSection {
    fn default() -> Self {
        let d = LoraConfig::default();
        LoraSection {
            rank: d.rank,
            alpha: d.alpha,
            targets: d.targets,
        }
    }
}

/// The `[section]` of a run file (empty when absent) and its `[section.lora]`, read apart so
/// that the section's own struct can refuse unknown keys.
fn section<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
    name: &str,
) -> Result<(T, LoraSection)> {
    let Some(p) = path else {
        return Ok((T::default(), LoraSection::default()));
    };
    let text =
        std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
    let v: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config {} is not valid TOML", p.display()))?;
    let mut sec = v
        .get(name)
        .cloned()
        .unwrap_or(toml::Value::Table(toml::Table::new()));
    let lora: LoraSection = match sec.as_table_mut().and_then(|t| t.remove("lora")) {
        Some(l) => l
            .try_into()
            .with_context(|| format!("config {}: [{name}.lora]", p.display()))?,
        None => LoraSection::default(),
    };
    let cfg: T = sec
        .try_into()
        .with_context(|| format!("config {}: [{name}]", p.display()))?;
    Ok((cfg, lora))
}

fn load_config(path: Option<&Path>) -> Result<(SftConfig, LoraSection)> {
    section(path, "sft")
}

pub fn run(c: TrainCommand) -> Result<()> {
    match c {
        TrainCommand::Sft(a) => run_sft(a),
        TrainCommand::Rl(a) => run_rl(a),
        TrainCommand::Plot(a) => plot(a),
    }
}

fn run_sft(a: SftArgs) -> Result<()> {
    // Checked first: a bad flag should not wait for the data and the model to load.
    let device = pick_device(&a.device)?;
    let dtype = parse_float_dtype(&a.dtype)?;
    let (mut cfg, mut lora) = load_config(a.config.as_deref())?;
    if let Some(r) = a.lora_rank {
        lora.rank = r;
    }
    if let Some(m) = a.max_steps {
        cfg.max_steps = Some(m);
    }
    cfg.validate().with_context(|| {
        a.config
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string())
    })?;
    let samples: Vec<PrimeVulPlus> = srcode_core::jsonl::read_strict(&a.data)
        .with_context(|| format!("reading PrimeVul+ samples {}", a.data.display()))?;
    if samples.is_empty() {
        bail!("{} holds no samples", a.data.display());
    }
    let path = home::resolve_model(a.model.as_deref())?;
    let meta = srcode_lm::loader::inspect(&path)
        .with_context(|| format!("reading model {}", path.display()))?;
    let (mut train, mut eval, mut long) = (Vec::new(), Vec::new(), 0usize);
    for s in &samples {
        match sft::encode_sample(s, &meta.tokenizer, &meta.chat, &cfg)
            .with_context(|| format!("sample {}", s.id))?
        {
            Some(e) if sft::is_eval_pair(&e.pair_id, cfg.eval_fraction) => eval.push(e),
            Some(e) => train.push(e),
            None => long += 1,
        }
    }
    if train.is_empty() {
        bail!(
            "no training samples left ({} in eval, {long} longer than sft.max_seq_len = {})",
            eval.len(),
            cfg.max_seq_len
        );
    }
    let per_epoch = train
        .len()
        .div_ceil(cfg.batch_size)
        .div_ceil(cfg.grad_accum);
    let total = cfg.max_steps.map_or(per_epoch * cfg.epochs, |m| {
        m.min(per_epoch * cfg.epochs.max(1))
    });
    eprintln!(
        "{} samples: {} train, {} eval (by repair pair), {long} over {} tokens; {total} steps \
         of {}×{} sequences; {}",
        samples.len(),
        train.len(),
        eval.len(),
        cfg.max_seq_len,
        cfg.batch_size,
        cfg.grad_accum,
        if lora.rank == 0 {
            "full fine-tuning".to_string()
        } else {
            format!("LoRA rank {} on {}", lora.rank, lora.targets.join(","))
        }
    );
    if a.dry_run {
        println!(
            "[sft]\n{}\n[sft.lora]\n{}",
            toml::to_string(&cfg).context("printing the configuration")?,
            toml::to_string(&lora).context("printing the configuration")?
        );
        return Ok(());
    }
    let mut lm = srcode_lm::loader::load(
        &path,
        &device,
        Some(WeightMode::Dense {
            dtype,
            trainable: lora.rank == 0,
        }),
    )
    .with_context(|| format!("loading {} for training", path.display()))?;
    if lora.rank > 0 {
        lm.model
            .attach_lora(
                &LoraConfig {
                    rank: lora.rank,
                    alpha: lora.alpha,
                    targets: lora.targets.clone(),
                },
                cfg.seed,
            )
            .context("attaching LoRA adapters")?;
    }
    let pad = lm
        .tokenizer
        .pad_token_id()
        .or_else(|| lm.tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0);
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("sft {bar:30} {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let on_step = |m: &sft::SftMetrics, _total: usize| {
        bar.set_position(m.step as u64);
        let eval = m
            .eval_loss
            .map(|e| format!(" eval {e:.3}"))
            .unwrap_or_default();
        bar.set_message(format!(
            "loss {:.3}{eval} lr {:.1e} {:.0} tok/s",
            m.loss, m.lr, m.tokens_per_second
        ));
    };
    let report = sft::train(
        &lm.model,
        &train,
        &eval,
        &cfg,
        pad,
        &a.out,
        a.pause_after,
        &on_step,
    )
    .with_context(|| format!("training in {}", a.out.display()))?;
    bar.finish_and_clear();
    if let Some(from) = report.resumed_from {
        eprintln!("resumed from step {from}");
    }
    let fmt = |x: Option<f32>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    eprintln!(
        "step {}/{}: train loss {} → {}; eval loss {} → {}",
        report.steps,
        report.total_steps,
        fmt(report.first_loss),
        fmt(report.last_loss),
        fmt(report.eval_loss_before),
        fmt(report.eval_loss_after)
    );
    if report.steps < report.total_steps {
        eprintln!(
            "paused with a checkpoint in {}; run the same command to continue",
            report.checkpoint.display()
        );
        return Ok(());
    }
    let fin = a.out.join("final");
    srcode_lm::loader::save_pretrained(&lm, &fin)
        .with_context(|| format!("writing the trained model to {}", fin.display()))?;
    eprintln!(
        "wrote {} ({})",
        fin.display(),
        if lora.rank > 0 {
            "PEFT adapter"
        } else {
            "Hugging Face model"
        }
    );
    Ok(())
}

fn run_rl(a: RlArgs) -> Result<()> {
    // Checked first: a bad flag should not wait for the data and the model to load.
    let device = pick_device(&a.device)?;
    let dtype = parse_float_dtype(&a.dtype)?;
    use srcode_train::rl::{Algorithm, Granularity, RlConfig, RlPrompt, RolloutWeights, Trainer};
    use srcode_train::score::{PromptInfo, SecurityScorer};
    let (mut cfg, lora): (RlConfig, LoraSection) = section(a.config.as_deref(), "rl")?;
    let (reward_cfg, _): (srcode_reward::config::RewardConfig, LoraSection) =
        section(a.config.as_deref(), "reward")?;
    if let Some(x) = &a.algorithm {
        cfg.algorithm = match x.as_str() {
            "ppo" => Algorithm::Ppo,
            "grpo" => Algorithm::Grpo,
            o => bail!("--algorithm `{o}`: expected ppo or grpo"),
        };
    }
    if let Some(x) = &a.reward_granularity {
        cfg.granularity = match x.as_str() {
            "token" => Granularity::Token,
            "instance" => Granularity::Instance,
            "both" => Granularity::Both,
            o => bail!("--reward-granularity `{o}`: expected token, instance or both"),
        };
    }
    if let Some(n) = a.steps {
        cfg.steps = n;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(x) = &a.rollout_weights {
        cfg.rollout_weights = match x.as_str() {
            "auto" => RolloutWeights::Auto,
            "q8_0" => RolloutWeights::Q8_0,
            "policy" => RolloutWeights::Policy,
            o => bail!("--rollout-weights `{o}`: expected auto, q8_0 or policy"),
        };
    }
    if cfg.rollout_weights == RolloutWeights::Q8_0 && !device.is_cpu() {
        bail!("rl.rollout_weights = \"q8_0\" runs on the CPU kernels; use auto or policy on a GPU");
    }
    cfg.validate()?;
    if lora.rank == 0 {
        bail!(
            "[rl.lora] rank must be ≥ 1: RL trains LoRA adapters (the reference shares the base)"
        );
    }
    let samples: Vec<PrimeVulPlus> = srcode_core::jsonl::read_strict(&a.data)
        .with_context(|| format!("reading PrimeVul+ samples {}", a.data.display()))?;
    if samples.is_empty() {
        bail!("{} holds no samples", a.data.display());
    }
    let path = home::resolve_model(a.model.as_deref())?;
    let meta = srcode_lm::loader::inspect(&path)
        .with_context(|| format!("reading model {}", path.display()))?;
    // One RL prompt per distinct prompt text.
    let mut seen = std::collections::HashSet::new();
    let mut prompts = Vec::new();
    let mut infos = Vec::new();
    for s in &samples {
        if !seen.insert(s.prompt.clone()) {
            continue;
        }
        let text = meta
            .chat
            .render(&[srcode_lm::chat::ChatMessage::user(&s.prompt)], true)
            .with_context(|| format!("sample {}", s.id))?;
        prompts.push(RlPrompt {
            ids: meta.tokenizer.encode(&text, false)?,
        });
        infos.push(PromptInfo::from_pair(
            s.language,
            &s.secure,
            &s.vulnerable,
            reward_cfg.reference.ngram,
        ));
    }
    let params = meta.config.parameter_count();
    let c = &meta.config;
    let longest = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0) + cfg.max_new_tokens;
    let seq = longest.min(cfg.micro_tokens) as f64;
    // Calibrated on SmolLM2-135M on the CPU (GRPO, LoRA r=8, 4 × 4 rollouts of ~380 tokens,
    // 2026-12-07, after frozen weights stopped taking gradients): peak RSS 4.54 GB with
    // 256-token micro-batches and 14.1 GB with 1,024, i.e. about 1.35 GB (2.5 × the f32
    // weights) plus 12.5 MB per micro-batch token, 2.45 times what the activations alone
    // (40·hidden + 6·intermediate + 3·heads·sequence floats per token and layer) would give.
    // Scaled to other models by that activation count.
    let per_token = 2.45
        * c.num_hidden_layers as f64
        * (40.0 * c.hidden_size as f64
            + 6.0 * c.intermediate_size as f64
            + 3.0 * c.num_attention_heads as f64 * seq)
        * 4.0;
    let base = 2.5 * params as f64 * 4.0;
    let est_gib = (base + cfg.micro_tokens as f64 * per_token) / f64::from(1u32 << 30);
    eprintln!(
        "{} prompts from {} samples; {:?} with {:?} rewards, {} steps of {} prompts × {} \
         rollouts, LoRA rank {}; peak memory ≈ {est_gib:.0} GiB (calibrated on the CPU for a {}-token \
         micro-batch; lower rl.micro_tokens to fit)",
        prompts.len(),
        samples.len(),
        cfg.algorithm,
        cfg.granularity,
        cfg.steps,
        cfg.prompts_per_step,
        cfg.group_size,
        lora.rank,
        cfg.micro_tokens
    );
    if a.dry_run {
        println!(
            "[rl]\n{}\n[rl.lora]\n{}",
            toml::to_string(&cfg).context("printing the configuration")?,
            toml::to_string(&lora).context("printing the configuration")?
        );
        return Ok(());
    }
    let lcfg = LoraConfig {
        rank: lora.rank,
        alpha: lora.alpha,
        targets: lora.targets.clone(),
    };
    let load = || -> Result<srcode_lm::loader::LoadedModel> {
        let mut lm = srcode_lm::loader::load(
            &path,
            &device,
            Some(WeightMode::Dense {
                dtype,
                trainable: false,
            }),
        )
        .with_context(|| format!("loading {}", path.display()))?;
        lm.model
            .attach_lora(&lcfg, cfg.seed)
            .context("attaching LoRA adapters")?;
        if let Some(init) = &a.init {
            srcode_lm::train::load_adapter(&lm.model, init)
                .with_context(|| format!("loading the adapter {}", init.display()))?;
        }
        Ok(lm)
    };
    // The policy's adapter Vars are what the optimiser trains; the reference's are never
    // handed to an optimiser, so it stays where it started.
    let policy = load()?;
    let reference = load()?;
    let scanner = srcode_scan::Scanner::builtin().context("loading the analyser's rules")?;
    let engine = srcode_reward::RewardEngine::new(scanner, reward_cfg);
    let scorer = SecurityScorer {
        engine: &engine,
        tokenizer: &policy.tokenizer,
        prompts: infos,
    };
    let pad = policy
        .tokenizer
        .pad_token_id()
        .or_else(|| policy.tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0);
    let trainer = Trainer {
        policy: &policy.model,
        reference: &reference.model,
        tokenizer: &policy.tokenizer,
        scorer: &scorer,
        prompts: &prompts,
        cfg: cfg.clone(),
        pad,
        stop_ids: policy.tokenizer.eos_token_ids(),
    };
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("rl {bar:30} {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let on_step = |m: &srcode_train::rl::RlMetrics| {
        bar.set_position(m.step as u64);
        bar.set_message(format!(
            "reward {:+.3} flagged {:.0}% kl {:.3} entropy {:.2} {:.0} s/step",
            m.reward_mean,
            100.0 * m.flagged_rate,
            m.kl,
            m.entropy,
            m.seconds
        ));
    };
    let report = trainer
        .run(&a.out, a.pause_after, &on_step)
        .with_context(|| format!("training in {}", a.out.display()))?;
    bar.finish_and_clear();
    if let Some(from) = report.resumed_from {
        eprintln!("resumed from step {from}");
    }
    let report_path = a.out.join("report.html");
    let all = read_rl_metrics(&a.out)?;
    std::fs::write(
        &report_path,
        srcode_train::report::rl_html(
            &format!("RL run {}", run_name(&a.out)),
            &[(run_name(&a.out), all)],
        ),
    )
    .with_context(|| format!("writing {}", report_path.display()))?;
    eprintln!("report: {}", report_path.display());
    if let (Some(f), Some(l)) = (report.metrics.first(), report.metrics.last()) {
        eprintln!(
            "steps {}..{}: reward {:+.3} → {:+.3}, flagged rollouts {:.0}% → {:.0}%, {:.0} s/step",
            f.step,
            l.step,
            f.reward_mean,
            l.reward_mean,
            100.0 * f.flagged_rate,
            100.0 * l.flagged_rate,
            report.metrics.iter().map(|m| m.seconds).sum::<f64>() / report.metrics.len() as f64
        );
    }
    if report.steps < cfg.steps {
        eprintln!(
            "paused with a checkpoint in {}; run the same command to continue",
            a.out.join("checkpoint").display()
        );
        return Ok(());
    }
    let fin = a.out.join("final");
    srcode_lm::loader::save_pretrained(&policy, &fin)
        .with_context(|| format!("writing the trained adapter to {}", fin.display()))?;
    eprintln!("wrote {} (PEFT adapter)", fin.display());
    Ok(())
}
