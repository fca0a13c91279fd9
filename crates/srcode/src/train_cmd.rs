//! `srcode train ...`: supervised fine-tuning on PrimeVul+ (RL lands next to it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use srcode_data::PrimeVulPlus;
use srcode_lm::{DType, Device, LoraConfig, WeightMode};
use srcode_train::sft::{self, SftConfig};

use crate::home;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning: implicit prompt → secure code from a PrimeVul+ file, loss on the
    /// response tokens (fix tokens up-weighted). Resumes from the run's checkpoint.
    Sft(SftArgs),
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

fn load_config(path: Option<&Path>) -> Result<(SftConfig, LoraSection)> {
    let Some(p) = path else {
        return Ok((SftConfig::default(), LoraSection::default()));
    };
    let text =
        std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
    let v: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config {} is not valid TOML", p.display()))?;
    let mut sft = v
        .get("sft")
        .cloned()
        .unwrap_or(toml::Value::Table(toml::Table::new()));
    // `lora` is read apart so that SftConfig can refuse unknown keys.
    let lora: LoraSection = match sft.as_table_mut().and_then(|t| t.remove("lora")) {
        Some(l) => l
            .try_into()
            .with_context(|| format!("config {}: [sft.lora]", p.display()))?,
        None => LoraSection::default(),
    };
    let cfg: SftConfig = sft
        .try_into()
        .with_context(|| format!("config {}: [sft]", p.display()))?;
    Ok((cfg, lora))
}

pub fn run(c: TrainCommand) -> Result<()> {
    match c {
        TrainCommand::Sft(a) => run_sft(a),
    }
}

fn run_sft(a: SftArgs) -> Result<()> {
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
        &Device::Cpu,
        Some(WeightMode::Dense {
            dtype: DType::F32,
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
