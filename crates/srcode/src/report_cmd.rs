//! `srcode report`: one page for a whole run of the method — the before/after table of the
//! evaluations (with bootstrapped differences), the RL training curves, and held-out answers of
//! the first and last model with their per-token reward heat maps. Writes `report.html` and
//! `report.md` (the tables, for a README).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use srcode_core::html_escape as esc;
use srcode_eval::report::CompareRun;
use srcode_eval::score::Sample;
use srcode_reward::config::RewardConfig;
use srcode_reward::heatmap::{self, HeatmapEntry};
use srcode_reward::{RewardEngine, RewardInput, TokenRewards};

use crate::home;

#[derive(Args)]
pub struct ReportArgs {
    /// The page's title.
    #[arg(long, default_value = "srcode report")]
    pub title: String,
    /// An evaluation as NAME=DIR (an `srcode eval` output directory), repeatable, in order:
    /// the first evaluation of each benchmark is the baseline the others are compared with.
    #[arg(long = "eval", value_name = "NAME=DIR")]
    pub evals: Vec<String>,
    /// An RL run as NAME=DIR (`srcode train rl --out DIR`), repeatable: drawn as training curves.
    #[arg(long = "rl", value_name = "NAME=DIR")]
    pub rls: Vec<String>,
    /// Held-out answers to draw as per-token reward heat maps: for this many tasks of the first
    /// benchmark, the baseline's answer (a flagged one where there is one) beside the last
    /// model's answer to the same task.
    #[arg(long, default_value_t = 3)]
    pub heatmaps: usize,
    /// The model whose tokenizer splits the heat maps' answers (default: the fetched default).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A Markdown or text file whose content is shown under the title (how the run was made).
    #[arg(long)]
    pub notes: Option<PathBuf>,
    /// Bootstrap resamples for the differences.
    #[arg(long, default_value_t = 2000)]
    pub iters: usize,
    /// Output directory: report.html and report.md.
    #[arg(long)]
    pub out: PathBuf,
}

fn named(spec: &str, flag: &str) -> Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((n, d)) if !n.is_empty() && !d.is_empty() => Ok((n.to_string(), PathBuf::from(d))),
        _ => bail!("--{flag} {spec}: expected NAME=DIR"),
    }
}

/// Evaluations grouped by benchmark, in the order of their first appearance.
fn groups(runs: Vec<CompareRun>) -> Vec<(String, Vec<CompareRun>)> {
    let mut out: Vec<(String, Vec<CompareRun>)> = Vec::new();
    for r in runs {
        match out.iter_mut().find(|(b, _)| *b == r.spec.bench) {
            Some((_, v)) => v.push(r),
            None => out.push((r.spec.bench.clone(), vec![r])),
        }
    }
    out
}

pub fn run(a: ReportArgs) -> Result<()> {
    if a.evals.is_empty() && a.rls.is_empty() {
        bail!("nothing to report: give --eval NAME=DIR and/or --rl NAME=DIR");
    }
    let mut runs = Vec::new();
    for e in &a.evals {
        let (name, dir) = named(e, "eval")?;
        runs.push(
            crate::eval_cmd::load_run(&dir, name)
                .with_context(|| format!("--eval {e}: not an evaluation directory"))?,
        );
    }
    let groups = groups(runs);
    let mut rl = Vec::new();
    for r in &a.rls {
        let (name, dir) = named(r, "rl")?;
        let p = dir.join("metrics.jsonl");
        let ms: Vec<srcode_train::rl::RlMetrics> = srcode_core::jsonl::read_strict(&p)
            .with_context(|| format!("--rl {r}: reading {}", p.display()))?;
        rl.push((name, ms));
    }
    let notes = match &a.notes {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };

    let mut md = format!("# {}\n\n", a.title);
    let mut h = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{}{}{}</style></head><body><h1>{t}</h1>",
        srcode_eval::report::STYLE,
        srcode_train::report::RL_STYLE,
        heatmap::STYLE,
        t = esc(&a.title)
    );
    if let Some(n) = &notes {
        let _ = write!(h, "<pre class=\"notes\">{}</pre>", esc(n.trim()));
    }
    // The verdict first: the last model against the baseline on each benchmark.
    if !groups.is_empty() {
        h.push_str("<h2>Before and after</h2><table><tr><th>benchmark</th><th>metric</th>");
        let _ = writeln!(
            md,
            "| benchmark | metric | baseline | last | difference (95% CI) |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        h.push_str("<th>baseline</th><th>last</th><th>difference (95% CI over tasks)</th></tr>");
        for (bench, rs) in &groups {
            let (Some(first), Some(last)) = (rs.first(), rs.last()) else {
                continue;
            };
            if rs.len() < 2 {
                continue;
            }
            let pair = [
                CompareRun {
                    name: first.name.clone(),
                    spec: first.spec.clone(),
                    metrics: first.metrics.clone(),
                    samples: first.samples.clone(),
                },
                CompareRun {
                    name: last.name.clone(),
                    spec: last.spec.clone(),
                    metrics: last.metrics.clone(),
                    samples: last.samples.clone(),
                },
            ];
            let d = srcode_eval::report::diffs(&pair, a.iters);
            for (metric, row) in &d {
                let Some(Some(x)) = row.first() else {
                    continue;
                };
                let lower_better = metric == "vulnerable_rate";
                let better = if lower_better {
                    x.diff < 0.0
                } else {
                    x.diff > 0.0
                };
                let sure = x.lo > 0.0 || x.hi < 0.0;
                let class = match (x.diff == 0.0, better, sure) {
                    (true, _, _) => "",
                    (_, true, true) => "good",
                    (_, false, true) => "bad",
                    _ => "muted",
                };
                let cell = format!(
                    "{:+.1} pts [{:+.1}, {:+.1}]",
                    100.0 * x.diff,
                    100.0 * x.lo,
                    100.0 * x.hi
                );
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{:.1}% ({})</td><td>{:.1}% ({})</td><td class=\"{class}\">{}</td></tr>",
                    esc(bench),
                    esc(metric),
                    100.0 * x.a,
                    esc(&first.name),
                    100.0 * x.b,
                    esc(&last.name),
                    esc(&cell)
                );
                let _ = writeln!(
                    md,
                    "| {bench} | {metric} | {:.1}% ({}) | {:.1}% ({}) | {cell} |",
                    100.0 * x.a,
                    first.name,
                    100.0 * x.b,
                    last.name
                );
            }
        }
        h.push_str("</table><p class=\"muted\">Differences are last − baseline on the tasks both have; green or red only when the interval excludes 0.</p>");
        md.push('\n');
    }
    for (bench, rs) in &groups {
        let _ = write!(h, "<h2>{}: every model</h2>", esc(bench));
        h.push_str(&srcode_eval::report::compare_body(rs, a.iters));
        let full = srcode_eval::report::compare_markdown(rs, bench, a.iters);
        // compare_markdown starts with its own H1; demote it under the report's title.
        md.push_str(&full.replacen("# ", "## ", 1));
        md.push('\n');
    }
    if !rl.is_empty() {
        h.push_str("<h2>Training curves</h2>");
        h.push_str(&srcode_train::report::rl_body(&rl));
        let _ = writeln!(md, "## RL runs\n\n| run | steps | flagged share of rollouts, first → last step | mean s/step |\n|---|---:|---:|---:|");
        for (name, ms) in &rl {
            let secs = ms.iter().map(|m| m.seconds).sum::<f64>() / ms.len().max(1) as f64;
            let _ = writeln!(
                md,
                "| {name} | {} | {} → {} | {secs:.1} |",
                ms.len(),
                ms.first()
                    .map_or("–".into(), |m| format!("{:.0}%", 100.0 * m.flagged_rate)),
                ms.last()
                    .map_or("–".into(), |m| format!("{:.0}%", 100.0 * m.flagged_rate)),
            );
        }
        md.push('\n');
    }
    if a.heatmaps > 0 {
        if let Some((bench, rs)) = groups.first() {
            let maps = heat_maps(rs, a.heatmaps, a.model.as_deref())?;
            if !maps.is_empty() {
                let _ = write!(
                    h,
                    "<h2>Held-out answers with their per-token rewards ({})</h2>{}",
                    esc(bench),
                    heatmap::LEGEND
                );
                let entries: Vec<HeatmapEntry<'_>> = maps
                    .iter()
                    .map(|m| HeatmapEntry {
                        title: &m.title,
                        prompt: Some(&m.prompt),
                        completion: &m.completion,
                        tokens: &m.spans,
                        rewards: &m.rewards,
                    })
                    .collect();
                h.push_str(&heatmap::sections(&entries));
            }
        }
    }
    h.push_str("</body></html>\n");
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let html = a.out.join("report.html");
    std::fs::write(&html, h).with_context(|| format!("writing {}", html.display()))?;
    let mdp = a.out.join("report.md");
    std::fs::write(&mdp, &md).with_context(|| format!("writing {}", mdp.display()))?;
    println!("{md}");
    println!("report: {}", html.display());
    Ok(())
}

struct Map {
    title: String,
    prompt: String,
    completion: String,
    spans: Vec<(usize, usize)>,
    rewards: TokenRewards,
}

/// The baseline's and the last model's answers to the same tasks, scored token by token. Tasks
/// where the baseline was flagged come first.
fn heat_maps(runs: &[CompareRun], n: usize, model: Option<&Path>) -> Result<Vec<Map>> {
    let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
        return Ok(Vec::new());
    };
    let path = home::resolve_model(model)?;
    let tok = srcode_lm::loader::inspect(&path)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?
        .tokenizer;
    let scanner = srcode_scan::Scanner::builtin().context("loading the analyser's rules")?;
    let engine = RewardEngine::new(scanner, RewardConfig::default());
    let ok = |s: &&Sample| s.error.is_none() && !s.completion.is_empty();
    let mut tasks: Vec<&str> = Vec::new();
    for flagged in [true, false] {
        for s in first.samples.iter().filter(ok) {
            if s.vulnerable() == flagged && !tasks.contains(&s.task_id.as_str()) {
                tasks.push(&s.task_id);
            }
        }
    }
    let mut out = Vec::new();
    for task in tasks.into_iter().take(n) {
        let pick = |r: &CompareRun, want_flagged: bool| -> Option<Sample> {
            let mut c: Vec<&Sample> = r
                .samples
                .iter()
                .filter(ok)
                .filter(|s| s.task_id == task)
                .collect();
            c.sort_by_key(|s| (s.vulnerable() != want_flagged, s.index));
            c.first().map(|s| (*s).clone())
        };
        let prompt = prompt_of(first, task);
        let mut pair = vec![(first, pick(first, true))];
        if runs.len() > 1 {
            pair.push((last, pick(last, false)));
        }
        for (r, s) in pair {
            let Some(s) = s else { continue };
            let (_, spans) = tok
                .encode_with_offsets(&s.completion)
                .with_context(|| format!("tokenising an answer to {task}"))?;
            let rewards = engine
                .reward(&RewardInput {
                    completion: &s.completion,
                    tokens: &spans,
                    lang: s.language,
                    pair: None,
                    reference_len: None,
                    function_name: None,
                    tests: None,
                })
                .with_context(|| format!("scoring an answer to {task}"))?;
            out.push(Map {
                title: format!(
                    "{task} — {} (sample {}, {})",
                    r.name,
                    s.index,
                    if s.vulnerable() {
                        "flagged"
                    } else {
                        "not flagged"
                    }
                ),
                prompt: prompt.clone(),
                completion: s.completion.clone(),
                spans,
                rewards,
            });
        }
    }
    Ok(out)
}

/// The task's prompt as the evaluation recorded it (`tasks.jsonl` beside the samples when the
/// benchmark wrote one), else empty.
fn prompt_of(run: &CompareRun, task: &str) -> String {
    let Ok(text) = std::fs::read_to_string(&run.spec.data) else {
        return String::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("id").and_then(|x| x.as_str()) == Some(task))
        .and_then(|v| v.get("prompt").and_then(|p| p.as_str()).map(str::to_string))
        .unwrap_or_default()
}
