//! `srcode data ...`: Vul2Safe — ingest vulnerability fixes, repair them with a self-reflecting
//! teacher, write implicit prompts, and build PrimeVul+.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use srcode_data::build::Stages;
use srcode_data::{
    build, BuildPaths, DataConfig, Format, HttpTeacher, HttpTeacherConfig, LocalTeacher, Teacher,
    VulnRecord,
};

use crate::home;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Normalise PrimeVul, SVEN, SafeCoder or generic JSONL into vulnerability records
    /// (bad lines are reported with file:line and skipped).
    Ingest(IngestArgs),
    /// Ingest, repair with self-reflection, write implicit prompts: PrimeVul+ and its card in
    /// runs/NAME/data/. Resumes where a previous run stopped.
    Build(BuildArgs),
    /// Only the repair stage of `build` (records → repairs.jsonl), resumable.
    Repair(BuildArgs),
    /// Only the prompt stage: implicit prompts for the accepted pairs of a previous `repair`,
    /// then PrimeVul+ and the card.
    Prompts(PromptsArgs),
    /// Evaluation tasks (`srcode eval --bench jsonl`) from pairs held out of training: each
    /// record's own description with the function's signature and context, the implicit prompt
    /// Vul2Safe falls back to, with no teacher. `--exclude` drops the pairs a PrimeVul+ file
    /// trains on.
    Tasks(TasksArgs),
}

#[derive(Args)]
pub struct TasksArgs {
    /// Files or directories of vulnerability records (as `ingest` reads them).
    #[arg(required = true)]
    pub input: Vec<PathBuf>,
    /// auto, primevul, sven, safecoder or generic.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// PrimeVul+ files whose pairs (`pair_id`) are left out: the training split.
    #[arg(long)]
    pub exclude: Vec<PathBuf>,
    /// Keep only the first N tasks.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where to write the tasks (JSONL).
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(Args)]
pub struct IngestArgs {
    /// Files or directories (every *.jsonl / *.json inside).
    #[arg(required = true)]
    pub input: Vec<PathBuf>,
    /// auto, primevul, sven, safecoder or generic.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Where to write the records (JSONL).
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(Args, Clone)]
pub struct TeacherArgs {
    /// Run configuration (TOML) with [data.repair], [data.prompts], [teacher] and
    /// [teacher.openai] sections; every key is listed in configs/srcode.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The teacher: `local` (the in-process model) or `openai` (an OpenAI-compatible endpoint).
    #[arg(long)]
    pub teacher: Option<String>,
    /// Local teacher model: GGUF file or Hugging Face directory (default: the fetched default).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    pub base_url: Option<String>,
    /// The `model` name sent to the endpoint.
    #[arg(long)]
    pub teacher_model: Option<String>,
    /// Environment variable with the API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Records worked on at once (HTTP: concurrent requests; local: the decode batch).
    #[arg(long)]
    pub workers: Option<usize>,
    /// When the teacher's repair is rejected, use the record's real fix as the secure version
    /// if it passes the same checks (counted apart in the card); sets
    /// data.repair.fallback_to_real_fix.
    #[arg(long)]
    pub fallback_real_fix: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Files or directories of vulnerability fixes (any format `ingest` reads).
    #[arg(required = true)]
    pub input: Vec<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Run name: output goes to runs/NAME/data/ (unless --out is given).
    #[arg(long, default_value = "primevul-plus")]
    pub name: String,
    /// Output directory (overrides --name).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the first N records.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub teacher: TeacherArgs,
}

#[derive(Args)]
pub struct PromptsArgs {
    /// Run name (runs/NAME/data/ must hold a previous `repair`).
    #[arg(long, default_value = "primevul-plus")]
    pub name: String,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub teacher: TeacherArgs,
}

/// The `[teacher]` section of the run configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TeacherSection {
    kind: String,
    /// Local teacher: GGUF file or Hugging Face directory.
    model: Option<PathBuf>,
    workers: Option<usize>,
    /// `[teacher.openai]`: the endpoint.
    openai: HttpTeacherConfig,
}

impl Default for TeacherSection {
    fn default() -> Self {
        TeacherSection {
            kind: "local".into(),
            model: None,
            workers: None,
            openai: HttpTeacherConfig::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunFile {
    data: DataConfig,
    teacher: TeacherSection,
}

fn load_config(path: Option<&Path>) -> Result<RunFile> {
    let Some(p) = path else {
        return Ok(RunFile::default());
    };
    let text =
        std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
    let v: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config {} is not valid TOML", p.display()))?;
    // Other sections (sft, rl, eval) belong to other commands.
    let mut keep = toml::Table::new();
    for k in ["data", "teacher"] {
        if let Some(x) = v.get(k) {
            keep.insert(k.into(), x.clone());
        }
    }
    let rf: RunFile = keep
        .try_into()
        .with_context(|| format!("config {}", p.display()))?;
    rf.data
        .validate()
        .with_context(|| format!("config {}", p.display()))?;
    Ok(rf)
}

fn make_teacher(a: &TeacherArgs, section: &TeacherSection) -> Result<(Box<dyn Teacher>, usize)> {
    let kind = a.teacher.clone().unwrap_or_else(|| section.kind.clone());
    match kind.as_str() {
        "local" => {
            let path = home::resolve_model(a.model.as_deref().or(section.model.as_deref()))?;
            let workers = a.workers.or(section.workers).unwrap_or(8);
            eprintln!("loading the local teacher {}", path.display());
            let t = LocalTeacher::load(&path, workers)
                .with_context(|| format!("loading teacher model {}", path.display()))?;
            Ok((Box::new(t), workers))
        }
        "openai" | "http" => {
            let mut cfg = section.openai.clone();
            if let Some(u) = &a.base_url {
                cfg.base_url.clone_from(u);
            }
            if let Some(m) = &a.teacher_model {
                cfg.model.clone_from(m);
            }
            if let Some(k) = &a.api_key_env {
                cfg.api_key_env.clone_from(k);
            }
            let workers = a.workers.or(section.workers).unwrap_or(4);
            Ok((Box::new(HttpTeacher::new(cfg)?), workers))
        }
        other => bail!("--teacher `{other}`: expected `local` or `openai`"),
    }
}

fn ingest_all(inputs: &[PathBuf], format: &str) -> Result<Vec<VulnRecord>> {
    let format: Format = format.parse()?;
    let mut records = Vec::new();
    let mut bad = 0usize;
    for p in inputs {
        let got =
            srcode_data::ingest(p, format).with_context(|| format!("ingesting {}", p.display()))?;
        for b in got.bad.iter().take(20) {
            eprintln!("skipped {b}");
        }
        if got.bad.len() > 20 {
            eprintln!(
                "... and {} more bad lines in {}",
                got.bad.len() - 20,
                p.display()
            );
        }
        bad += got.bad.len();
        for (why, n) in &got.skipped {
            eprintln!("{}: skipped {n} record(s): {why}", p.display());
        }
        records.extend(got.records);
    }
    eprintln!(
        "ingested {} record(s) ({} with the real fix){}",
        records.len(),
        records.iter().filter(|r| r.fixed.is_some()).count(),
        if bad > 0 {
            format!(", {bad} bad line(s) skipped")
        } else {
            String::new()
        }
    );
    Ok(records)
}

fn out_dir(out: Option<&Path>, name: &str) -> PathBuf {
    out.map_or_else(
        || Path::new("runs").join(name).join("data"),
        Path::to_path_buf,
    )
}

pub fn run(c: DataCommand) -> Result<i32> {
    match c {
        DataCommand::Ingest(a) => {
            let records = ingest_all(&a.input, &a.format)?;
            srcode_core::jsonl::write_atomic(&a.output, &records)
                .with_context(|| format!("writing {}", a.output.display()))?;
            eprintln!("wrote {}", a.output.display());
            Ok(0)
        }
        DataCommand::Tasks(a) => {
            tasks(a)?;
            Ok(0)
        }
        DataCommand::Build(a) => run_build(a, Stages::All),
        DataCommand::Repair(a) => run_build(a, Stages::RepairOnly),
        DataCommand::Prompts(a) => {
            let dir = out_dir(a.out.as_deref(), &a.name);
            let paths = BuildPaths::new(&dir);
            let records: Vec<VulnRecord> = srcode_core::jsonl::read_strict(&paths.records())
                .with_context(|| {
                    format!(
                        "{}: run `srcode data repair` first",
                        paths.records().display()
                    )
                })?;
            execute(records, &a.teacher, &paths, Stages::All)
        }
    }
}

fn run_build(a: BuildArgs, stages: Stages) -> Result<i32> {
    let mut records = ingest_all(&a.input, &a.format)?;
    if let Some(n) = a.limit {
        records.truncate(n);
    }
    if records.is_empty() {
        bail!("no usable records in the input");
    }
    let dir = out_dir(a.out.as_deref(), &a.name);
    execute(records, &a.teacher, &BuildPaths::new(&dir), stages)
}

fn execute(
    records: Vec<VulnRecord>,
    ta: &TeacherArgs,
    paths: &BuildPaths,
    stages: Stages,
) -> Result<i32> {
    let mut rf = load_config(ta.config.as_deref())?;
    if ta.fallback_real_fix {
        rf.data.repair.fallback_to_real_fix = true;
    }
    let (teacher, workers) = make_teacher(ta, &rf.teacher)?;
    let scanner = srcode_scan::Scanner::builtin().context("loading the analyser's rules")?;
    let bar = ProgressBar::new(records.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:28} {bar:30} {pos}/{len} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |p: srcode_data::Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        let what = if p.stage == "repair" {
            "accepted"
        } else {
            "prompts kept"
        };
        bar.set_message(format!(
            "{} · {what} {} ({:.0}%)",
            p.stage,
            p.accepted,
            100.0 * p.accepted as f64 / p.done.max(1) as f64
        ));
    };
    let report = build(
        &records,
        teacher.as_ref(),
        &scanner,
        &rf.data,
        paths,
        workers,
        stages,
        &progress,
    )
    .with_context(|| format!("building in {}", paths.dir.display()))?;
    bar.finish_and_clear();
    let fallback = if rf.data.repair.fallback_to_real_fix && stages == Stages::All {
        format!(" (+{} from the real fix)", report.fallback_pairs)
    } else {
        String::new()
    };
    eprintln!(
        "{} record(s): {} repaired earlier, {} now; {} pair(s) accepted{fallback}; {} teacher call(s), {} from the cache",
        report.records,
        report.repaired_before,
        report.repaired_now,
        report.accepted_pairs,
        report.teacher_calls,
        report.cache_hits
    );
    if let Some(f) = &report.failure {
        eprintln!(
            "error: the build stopped: {f}\nEverything finished is kept in {}; run the same command again to resume.",
            paths.dir.display()
        );
        return Ok(3);
    }
    if let (Some(d), Some(c)) = (&report.dataset, &report.card) {
        eprintln!(
            "wrote {} ({} samples) and {}",
            d.display(),
            report.samples,
            c.display()
        );
    } else {
        eprintln!("repairs are in {}", paths.repairs().display());
    }
    Ok(0)
}

fn tasks(a: TasksArgs) -> Result<()> {
    let mut trained: std::collections::HashSet<String> = std::collections::HashSet::new();
    for p in &a.exclude {
        let samples: Vec<srcode_data::PrimeVulPlus> = srcode_core::jsonl::read_strict(p)
            .with_context(|| format!("--exclude {}: reading PrimeVul+ samples", p.display()))?;
        trained.extend(samples.into_iter().map(|s| s.pair_id));
    }
    let records = ingest_all(&a.input, &a.format)?;
    let cfg = srcode_data::config::PromptConfig::default();
    let (mut out, mut excluded) = (Vec::new(), 0usize);
    let mut rejected: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &records {
        if trained.contains(&r.id) {
            excluded += 1;
            continue;
        }
        match srcode_data::prompts::description_prompt(r, &cfg) {
            Ok(prompt) => out.push(serde_json::json!({
                "id": r.id,
                "prompt": prompt,
                "language": r.language.name(),
                "cwe": r.cwe.map(|c| c.to_string()),
                "mode": "instruct",
            })),
            Err(why) => *rejected.entry(why).or_default() += 1,
        }
        if a.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    if out.is_empty() {
        anyhow::bail!(
            "no task written: {} records, {excluded} in the training split, {} without a usable description (records without one need a teacher's prompts: run `srcode data build` on the held-out records; its primevul_plus.jsonl is itself a task file for `srcode eval --bench jsonl`)",
            records.len(),
            rejected.values().sum::<usize>()
        );
    }
    srcode_core::jsonl::write_atomic(&a.output, &out)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "wrote {} tasks to {} ({excluded} records in the training split left out{})",
        out.len(),
        a.output.display(),
        if rejected.is_empty() {
            String::new()
        } else {
            format!(
                "; no prompt for {}",
                rejected
                    .iter()
                    .map(|(w, n)| format!("{n} ({w})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    Ok(())
}
