//! `srcode reward`: token-level rewards for a file of rollouts, with an optional HTML heat map.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::{json, Value};
use srcode_reward::align::align_token_bytes;
use srcode_reward::config::RewardConfig;
use srcode_reward::heatmap::{self, HeatmapEntry};
use srcode_reward::reference::RepairPattern;
use srcode_reward::{RewardEngine, RewardInput, TokenRewards};
use srcode_scan::{extract, Language, Scanner};

use crate::home;

#[derive(Args)]
pub struct RewardArgs {
    /// Model whose tokenizer defines the tokens (GGUF file or Hugging Face directory; default:
    /// the fetched default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Rollouts, one JSON object per line: `prompt`, `completion`, optional `language`,
    /// `token_ids` (the generated ids; else the completion is tokenised), `function_name`,
    /// `tests` (Python run against the code in the sandbox: no network, CPU/memory/file/process
    /// limits), `pair_id` (a pair of `--pairs`) or `pair: {vulnerable, fixed}` inline.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the rewarded rollouts (JSONL). With `--resume`, lines already there are
    /// kept and their inputs skipped.
    #[arg(long)]
    output: PathBuf,
    /// Reward configuration (TOML; see `srcode_reward::config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Repair pairs, one JSON object per line: `pair_id` (or `id`), `vulnerable` (or
    /// `func_src_before`), `fixed` (or `func_src_after`), optional `language`.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Extra analyser rule directory (repeatable).
    #[arg(long = "rules", value_name = "DIR")]
    rules: Vec<PathBuf>,
    /// Also render every rewarded rollout as a coloured per-token heat map (self-contained HTML).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Continue an interrupted run: keep the output's complete lines and skip their inputs.
    #[arg(long)]
    resume: bool,
}

#[derive(Deserialize)]
struct Rollout {
    #[serde(default)]
    prompt: String,
    completion: String,
    language: Option<String>,
    token_ids: Option<Vec<u32>>,
    function_name: Option<String>,
    /// Python tests run against the completion's code in the sandbox.
    tests: Option<String>,
    pair_id: Option<String>,
    pair: Option<InlinePair>,
}

#[derive(Deserialize)]
struct InlinePair {
    #[serde(alias = "func_src_before")]
    vulnerable: String,
    #[serde(alias = "func_src_after")]
    fixed: String,
}

#[derive(Deserialize)]
struct PairLine {
    #[serde(alias = "id")]
    pair_id: Value,
    #[serde(alias = "func_src_before")]
    vulnerable: String,
    #[serde(alias = "func_src_after")]
    fixed: String,
    language: Option<String>,
}

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A repair pair: vulnerable code, fixed code, and its language when the file says.
type PairSrc = (String, String, Option<Language>);

/// A rewarded rollout kept for the heat map: title, prompt, completion, token spans, rewards.
struct Shown {
    title: String,
    prompt: String,
    completion: String,
    spans: Vec<(usize, usize)>,
    rewards: TokenRewards,
}

fn load_pairs(path: &Path) -> Result<HashMap<String, PairSrc>> {
    let f = File::open(path).with_context(|| format!("opening pairs file {}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let p: PairLine = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a pair record", path.display(), i + 1))?;
        let l = match &p.language {
            Some(s) => Some(
                s.parse::<Language>()
                    .with_context(|| format!("{}:{}", path.display(), i + 1))?,
            ),
            None => None,
        };
        out.insert(id_string(&p.pair_id), (p.vulnerable, p.fixed, l));
    }
    Ok(out)
}

pub fn run(a: RewardArgs) -> Result<()> {
    let model = home::resolve_model(a.model.as_deref())?;
    let tok = srcode_lm::loader::inspect(&model)
        .with_context(|| format!("reading the tokenizer of {}", model.display()))?
        .tokenizer;
    let cfg = match &a.config {
        Some(p) => RewardConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("reward config {}", p.display()))?,
        None => RewardConfig::default(),
    };
    let ngram = cfg.reference.ngram;
    let engine = RewardEngine::new(
        Scanner::with_rule_dirs(&a.rules).context("loading rules")?,
        cfg,
    );
    let pairs = match &a.pairs {
        Some(p) => load_pairs(p)?,
        None => HashMap::new(),
    };
    let input = std::fs::read_to_string(&a.input)
        .with_context(|| format!("reading rollouts {}", a.input.display()))?;
    let lines: Vec<(usize, &str)> = input
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut done = 0;
    if a.resume && a.output.exists() {
        let prev = std::fs::read_to_string(&a.output)?;
        // Only complete lines count; a torn last line is rewritten.
        done = prev
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_ok())
            .count();
        let keep: String = prev.lines().take(done).map(|l| format!("{l}\n")).collect();
        std::fs::write(&a.output, keep)?;
    } else if a.output.exists() && !a.resume {
        std::fs::remove_file(&a.output)
            .with_context(|| format!("replacing {}", a.output.display()))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.output)
        .with_context(|| format!("opening {}", a.output.display()))?;
    let mut out = BufWriter::new(out);
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rollouts ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done as u64);
    let mut pattern_cache: HashMap<String, Option<RepairPattern>> = HashMap::new();
    let mut shown: Vec<Shown> = Vec::new();
    let mut bad = 0usize;
    for &(ln, line) in lines.iter().skip(done) {
        let where_ = format!("{}:{}", a.input.display(), ln + 1);
        let r: Rollout = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                bar.suspend(|| eprintln!("skipping {where_}: not a rollout record: {e}"));
                bad += 1;
                continue;
            }
        };
        let pair_src = match (&r.pair, &r.pair_id) {
            (Some(p), _) => Some((p.vulnerable.clone(), p.fixed.clone(), None)),
            (None, Some(id)) => match pairs.get(id) {
                Some(p) => Some(p.clone()),
                None => bail!("{where_}: pair_id {id:?} is not in --pairs"),
            },
            _ => None,
        };
        let language = match (&r.language, &pair_src) {
            (Some(l), _) => l.parse::<Language>().with_context(|| where_.clone())?,
            (None, Some((_, _, Some(l)))) => *l,
            _ => match extract::answer_language(r.completion.as_bytes()) {
                Some(l) => l,
                None => {
                    bail!("{where_}: no `language` and none can be guessed from the completion")
                }
            },
        };
        let (ids, spans) = match &r.token_ids {
            Some(ids) => {
                let bytes: Vec<&[u8]> = ids.iter().map(|&i| tok.token_bytes(i)).collect();
                (
                    ids.clone(),
                    align_token_bytes(r.completion.as_bytes(), &bytes),
                )
            }
            None => tok
                .encode_with_offsets(&r.completion)
                .with_context(|| where_.clone())?,
        };
        let pattern = match &pair_src {
            Some((v, f, _)) => {
                let key = format!("{language}\u{0}{v}\u{0}{f}");
                pattern_cache
                    .entry(key)
                    .or_insert_with(|| RepairPattern::new(v, f, language, ngram).ok())
                    .as_ref()
            }
            None => None,
        };
        let reference_len = pair_src
            .as_ref()
            .map(|(_, f, _)| f.bytes().filter(|b| !b.is_ascii_whitespace()).count());
        let rewards = engine
            .reward(&RewardInput {
                completion: &r.completion,
                tokens: &spans,
                lang: language,
                pair: pattern,
                reference_len,
                function_name: r.function_name.as_deref(),
                tests: r.tests.as_deref(),
            })
            .with_context(|| where_.clone())?;
        let tokens: Vec<String> = spans
            .iter()
            .map(|&(s, e)| String::from_utf8_lossy(&r.completion.as_bytes()[s..e]).into_owned())
            .collect();
        let mut obj: serde_json::Map<String, Value> = serde_json::from_str(line)?;
        obj.insert("language".into(), json!(language.name()));
        obj.insert("token_ids".into(), json!(ids));
        obj.insert("tokens".into(), json!(tokens));
        obj.insert("token_rewards".into(), json!(rewards.per_token));
        obj.insert("instance_reward".into(), json!(rewards.instance));
        obj.insert("total_reward".into(), json!(rewards.total));
        obj.insert(
            "reward_breakdown".into(),
            serde_json::to_value(&rewards.breakdown)?,
        );
        obj.insert("findings".into(), serde_json::to_value(&rewards.findings)?);
        obj.insert("pair_pattern".into(), json!(pattern.is_some()));
        serde_json::to_writer(&mut out, &obj)?;
        out.write_all(b"\n")?;
        out.flush()?;
        if a.html.is_some() && shown.len() < 500 {
            shown.push(Shown {
                title: format!("{where_} ({language})"),
                prompt: r.prompt,
                completion: r.completion,
                spans,
                rewards,
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(h) = &a.html {
        let entries: Vec<HeatmapEntry> = shown
            .iter()
            .map(|s| HeatmapEntry {
                title: &s.title,
                prompt: (!s.prompt.is_empty()).then_some(s.prompt.as_str()),
                completion: &s.completion,
                tokens: &s.spans,
                rewards: &s.rewards,
            })
            .collect();
        std::fs::write(h, heatmap::render("srcode token rewards", &entries))
            .with_context(|| format!("writing {}", h.display()))?;
        eprintln!("heat map: {}", h.display());
    }
    eprintln!(
        "rewarded {} rollout(s) into {}{}",
        lines.len() - done - bad,
        a.output.display(),
        if bad > 0 {
            format!("; skipped {bad} malformed line(s)")
        } else {
            String::new()
        }
    );
    Ok(())
}
