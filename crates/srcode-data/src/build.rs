//! `srcode data build`: ingest → repair → prompts → PrimeVul+ and its card, in a directory that
//! is also the checkpoint. Each finished record is appended to `repairs.jsonl` (and its prompts
//! to `prompts.jsonl`) the moment it is done, and every teacher call goes through the response
//! cache, so a killed build resumes where it stopped without repeating a call. When the teacher
//! fails (after its retries), the build stops taking new records, keeps what is finished, and
//! reports the failure; run it again when the teacher is back.

use crate::config::DataConfig;
use crate::error::{DataError, Result};
use crate::ingest::VulnRecord;
use crate::prompts::{prompts_for, shingles, PromptSet};
use crate::teacher::{CachedTeacher, Teacher};
use crate::vul2safe::{real_fix_fallback, repair_record, RepairOutcome, REAL_FIX};
use serde::{Deserialize, Serialize};
use srcode_core::{Cwe, Language, Span};
use srcode_scan::Scanner;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// One PrimeVul+ sample: an implicit prompt with the secure and the vulnerable function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimeVulPlus {
    pub id: String,
    pub prompt: String,
    pub language: Language,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwe: Option<Cwe>,
    pub secure: String,
    pub vulnerable: String,
    /// Byte spans of `secure` that the repair changed.
    pub fix_spans: Vec<Span>,
    pub source: String,
    /// The teacher that wrote `secure`, or `real-fix` when it is the project's own fix.
    pub teacher: String,
    /// The reflection's confidence in `secure` (null for a real-fix pair: no reflection).
    pub confidence: Option<f32>,
    pub pair_id: String,
    pub prompt_style: String,
}

/// Where a build keeps its files.
#[derive(Debug, Clone)]
pub struct BuildPaths {
    pub dir: PathBuf,
}

impl BuildPaths {
    pub fn new(dir: &Path) -> Self {
        BuildPaths {
            dir: dir.to_path_buf(),
        }
    }
    pub fn records(&self) -> PathBuf {
        self.dir.join("records.jsonl")
    }
    pub fn repairs(&self) -> PathBuf {
        self.dir.join("repairs.jsonl")
    }
    pub fn prompts(&self) -> PathBuf {
        self.dir.join("prompts.jsonl")
    }
    pub fn dataset(&self) -> PathBuf {
        self.dir.join("primevul_plus.jsonl")
    }
    pub fn card(&self) -> PathBuf {
        self.dir.join("card.md")
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.join("teacher_cache.sqlite")
    }
}

/// Which stages a build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stages {
    /// Repair only (`srcode data repair`).
    RepairOnly,
    /// Repair (what is left of it), prompts, dataset and card.
    All,
}

/// Progress as the build runs.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub stage: &'a str,
    pub done: usize,
    pub total: usize,
    pub accepted: usize,
}

/// What a build did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildReport {
    pub records: usize,
    pub repaired_before: usize,
    pub repaired_now: usize,
    /// Records whose teacher repair was accepted.
    pub accepted_pairs: usize,
    /// Pairs whose secure version is the record's real fix (`fallback_to_real_fix`).
    pub fallback_pairs: usize,
    pub samples: usize,
    pub teacher_calls: usize,
    pub cache_hits: usize,
    /// The teacher failure that stopped the build, if one did.
    pub failure: Option<String>,
    pub dataset: Option<PathBuf>,
    pub card: Option<PathBuf>,
}

/// Reads the finished lines of an append-only JSONL checkpoint. A torn last line (the process
/// was killed while writing it) is cut off so appending continues cleanly; a bad line in the
/// middle is an error naming it.
pub fn read_checkpoint<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let good_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if good_len < bytes.len() {
        tracing::warn!(path = %path.display(), "dropping a torn last line");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| DataError::io(path, e))?;
        f.set_len(good_len as u64)
            .map_err(|e| DataError::io(path, e))?;
    }
    let mut out = Vec::new();
    for (i, line) in BufReader::new(&bytes[..good_len]).lines().enumerate() {
        let line = line.map_err(|e| DataError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| DataError::Input(format!("{}:{}: {e}", path.display(), i + 1)))?,
        );
    }
    Ok(out)
}

struct Appender {
    path: PathBuf,
    file: Mutex<File>,
}

impl Appender {
    fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| DataError::io(path, e))?;
        Ok(Appender {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    fn append<T: Serialize>(&self, v: &T) -> Result<()> {
        let mut line = serde_json::to_string(v)
            .map_err(|e| DataError::Input(format!("{}: {e}", self.path.display())))?;
        line.push('\n');
        let mut f = self
            .file
            .lock()
            .map_err(|_| DataError::Input("checkpoint writer poisoned".into()))?;
        // One write per line: a kill leaves at most one torn line, which the reader cuts off.
        f.write_all(line.as_bytes())
            .and_then(|()| f.flush())
            .map_err(|e| DataError::io(&self.path, e))
    }
}

/// Runs `work` on `items` with `workers` threads; stops taking items after the first error and
/// returns it.
fn parallel<T: Sync>(
    items: &[T],
    workers: usize,
    work: impl Fn(&T) -> Result<()> + Sync,
) -> Option<DataError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<DataError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1).min(items.len().max(1)) {
            s.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { return };
                if let Err(e) = work(item) {
                    stop.store(true, Ordering::SeqCst);
                    if let Ok(mut slot) = first_err.lock() {
                        slot.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    first_err.into_inner().ok().flatten()
}

/// Runs the build for `records` in `paths.dir`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    records: &[VulnRecord],
    teacher: &dyn Teacher,
    scanner: &Scanner,
    cfg: &DataConfig,
    paths: &BuildPaths,
    workers: usize,
    stages: Stages,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BuildReport> {
    cfg.validate()?;
    std::fs::create_dir_all(&paths.dir).map_err(|e| DataError::io(&paths.dir, e))?;
    srcode_core::jsonl::write_atomic(&paths.records(), records)?;
    let cache = crate::cache::ResponseCache::open(&paths.cache())?;
    let cached = CachedTeacher::new(teacher, &cache);
    let mut report = BuildReport {
        records: records.len(),
        ..BuildReport::default()
    };

    // Repair.
    let done: Vec<RepairOutcome> = read_checkpoint(&paths.repairs())?;
    let done_ids: HashSet<&str> = done.iter().map(|o| o.id.as_str()).collect();
    let todo: Vec<&VulnRecord> = records
        .iter()
        .filter(|r| !done_ids.contains(r.id.as_str()))
        .collect();
    report.repaired_before = records.len() - todo.len();
    let accepted = AtomicUsize::new(done.iter().filter(|o| o.accepted).count());
    let finished = AtomicUsize::new(report.repaired_before);
    let repairs_out = Appender::open(&paths.repairs())?;
    let new_outcomes: Mutex<Vec<RepairOutcome>> = Mutex::new(Vec::new());
    progress(Progress {
        stage: "repair",
        done: finished.load(Ordering::SeqCst),
        total: records.len(),
        accepted: accepted.load(Ordering::SeqCst),
    });
    let failure = parallel(&todo, workers, |rec| {
        let o = repair_record(rec, &cached, scanner, &cfg.repair)?;
        repairs_out.append(&o)?;
        if o.accepted {
            accepted.fetch_add(1, Ordering::SeqCst);
        }
        let n = finished.fetch_add(1, Ordering::SeqCst) + 1;
        progress(Progress {
            stage: "repair",
            done: n,
            total: records.len(),
            accepted: accepted.load(Ordering::SeqCst),
        });
        if let Ok(mut v) = new_outcomes.lock() {
            v.push(o);
        }
        Ok(())
    });
    let mut outcomes = done;
    outcomes.extend(new_outcomes.into_inner().unwrap_or_default());
    report.repaired_now = outcomes.len() - report.repaired_before;
    // Keep the input order (and only records of this input).
    let order: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    outcomes.retain(|o| order.contains_key(o.id.as_str()));
    outcomes.sort_by_key(|o| order.get(o.id.as_str()).copied().unwrap_or(usize::MAX));
    if let Some(e) = failure {
        report.teacher_calls = cached.calls();
        report.cache_hits = cached.hits();
        report.failure = Some(e.to_string());
        report.accepted_pairs = outcomes.iter().filter(|o| o.accepted).count();
        return Ok(report);
    }
    report.accepted_pairs = outcomes.iter().filter(|o| o.accepted).count();
    if stages == Stages::RepairOnly {
        report.teacher_calls = cached.calls();
        report.cache_hits = cached.hits();
        return Ok(report);
    }

    // The pairs that go on: accepted teacher repairs, and (when configured) the real fix of
    // records whose teacher repair was rejected.
    let by_id: HashMap<&str, &VulnRecord> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut pairs: Vec<RepairOutcome> = Vec::with_capacity(outcomes.len());
    for o in &outcomes {
        if o.accepted {
            pairs.push(o.clone());
        } else if cfg.repair.fallback_to_real_fix {
            if let Some(rec) = by_id.get(o.id.as_str()) {
                if let Some(f) = real_fix_fallback(rec, o, scanner, &cfg.repair)? {
                    pairs.push(f);
                }
            }
        }
    }
    report.fallback_pairs = pairs.iter().filter(|o| o.teacher == REAL_FIX).count();

    // Prompts.
    let prompt_done: Vec<PromptSet> = read_checkpoint(&paths.prompts())?;
    let seen: Mutex<Vec<HashSet<u64>>> = Mutex::new(
        prompt_done
            .iter()
            .flat_map(|s| s.kept().map(|c| shingles(&c.text)))
            .collect(),
    );
    let have: HashSet<&str> = prompt_done.iter().map(|s| s.pair_id.as_str()).collect();
    let todo: Vec<&RepairOutcome> = pairs
        .iter()
        .filter(|o| !have.contains(o.id.as_str()))
        .collect();
    let total = pairs.len();
    let finished = AtomicUsize::new(total - todo.len());
    let prompts_out = Appender::open(&paths.prompts())?;
    let new_sets: Mutex<Vec<PromptSet>> = Mutex::new(Vec::new());
    let kept = AtomicUsize::new(prompt_done.iter().map(|s| s.kept().count()).sum());
    let failure = parallel(&todo, workers, |o| {
        let set = prompts_for(o, &cached, &cfg.prompts, &seen)?;
        prompts_out.append(&set)?;
        kept.fetch_add(set.kept().count(), Ordering::SeqCst);
        let n = finished.fetch_add(1, Ordering::SeqCst) + 1;
        progress(Progress {
            stage: "prompts",
            done: n,
            total,
            accepted: kept.load(Ordering::SeqCst),
        });
        if let Ok(mut v) = new_sets.lock() {
            v.push(set);
        }
        Ok(())
    });
    let mut sets = prompt_done;
    sets.extend(new_sets.into_inner().unwrap_or_default());
    report.teacher_calls = cached.calls();
    report.cache_hits = cached.hits();
    if let Some(e) = failure {
        report.failure = Some(e.to_string());
        return Ok(report);
    }

    // PrimeVul+ and its card.
    let by_pair: HashMap<&str, &PromptSet> = sets.iter().map(|s| (s.pair_id.as_str(), s)).collect();
    let mut samples = Vec::new();
    for o in &pairs {
        let (Some(set), Some(secure)) = (by_pair.get(o.id.as_str()), &o.repair) else {
            continue;
        };
        for (k, c) in set.kept().enumerate() {
            samples.push(PrimeVulPlus {
                id: format!("{}#{k}", o.id),
                prompt: c.text.clone(),
                language: o.language,
                cwe: o.cwe,
                secure: secure.clone(),
                vulnerable: o.vulnerable.clone(),
                fix_spans: o.fix_spans.clone(),
                source: o.source.clone(),
                teacher: o.teacher.clone(),
                confidence: o.verdict.as_ref().map(|v| v.confidence),
                pair_id: o.id.clone(),
                prompt_style: c.style.clone(),
            });
        }
    }
    srcode_core::jsonl::write_atomic(&paths.dataset(), &samples)?;
    let card = card(&CardInput {
        records,
        outcomes: &outcomes,
        pairs: &pairs,
        sets: &sets,
        samples: &samples,
        teacher: teacher.id(),
        cfg,
        report: &report,
    });
    write_atomic_text(&paths.card(), &card)?;
    report.samples = samples.len();
    report.dataset = Some(paths.dataset());
    report.card = Some(paths.card());
    Ok(report)
}

fn write_atomic_text(path: &Path, text: &str) -> Result<()> {
    srcode_core::jsonl::write_file_atomic(path, text.as_bytes()).map_err(|e| DataError::io(path, e))
}

fn cwe_name(c: Option<Cwe>) -> String {
    c.map_or_else(|| "unknown".to_string(), |c| c.to_string())
}

/// What the dataset card is written from.
pub struct CardInput<'a> {
    pub records: &'a [VulnRecord],
    /// Every record's repair outcome.
    pub outcomes: &'a [RepairOutcome],
    /// The pairs that went on to prompts (accepted, and real-fix fallbacks).
    pub pairs: &'a [RepairOutcome],
    pub sets: &'a [PromptSet],
    pub samples: &'a [PrimeVulPlus],
    pub teacher: &'a str,
    pub cfg: &'a DataConfig,
    pub report: &'a BuildReport,
}

/// The dataset card: counts per CWE and language, the acceptance funnel with rejection reasons,
/// and a histogram of prompt lengths.
pub fn card(input: &CardInput) -> String {
    let CardInput {
        records,
        outcomes,
        pairs,
        sets,
        samples,
        teacher,
        cfg,
        report,
    } = *input;
    let mut s = String::from("# PrimeVul+ dataset card\n\n");
    s.push_str(&format!(
        "Built by srcode Vul2Safe with teacher `{teacher}`: {} records in, {} repair pairs \
         accepted, {} samples (implicit prompts) out. Teacher calls this run: {}, answered \
         from the cache: {}.\n\n",
        records.len(),
        outcomes.iter().filter(|o| o.accepted).count(),
        samples.len(),
        report.teacher_calls,
        report.cache_hits
    ));
    let from_real = pairs.iter().filter(|o| o.teacher == REAL_FIX).count();
    if from_real > 0 {
        let n = samples.iter().filter(|x| x.teacher == REAL_FIX).count();
        s.push_str(&format!(
            "**{from_real} of the {} pairs are not teacher repairs**: the teacher's repair was \
             rejected, and the record's real fix, which passed the same independent checks \
             (parse, analyser, name, change size), is the secure version \
             (`fallback_to_real_fix`). Their {n} samples have `teacher = \"real-fix\"` and no \
             confidence.\n\n",
            pairs.len()
        ));
    }
    // Funnel.
    s.push_str("## Acceptance funnel\n\n| stage | records |\n|---|---:|\n");
    s.push_str(&format!("| ingested | {} |\n", records.len()));
    let too_long = outcomes
        .iter()
        .filter(|o| o.rejection.as_ref().is_some_and(|r| r.code == "too_long"))
        .count();
    s.push_str(&format!(
        "| sent to the teacher (not over max_function_bytes) | {} |\n",
        outcomes.len() - too_long
    ));
    let accepted = outcomes.iter().filter(|o| o.accepted).count();
    s.push_str(&format!(
        "| accepted pairs (teacher repair) | {accepted} |\n"
    ));
    let fallback = pairs.iter().filter(|o| o.teacher == REAL_FIX).count();
    if cfg.repair.fallback_to_real_fix {
        s.push_str(&format!(
            "| + pairs from the real fix (teacher repair rejected, real fix passes the checks) | {fallback} |\n"
        ));
    }
    let ids: HashSet<&str> = pairs.iter().map(|o| o.id.as_str()).collect();
    let with_prompt = sets
        .iter()
        .filter(|p| ids.contains(p.pair_id.as_str()) && p.kept().next().is_some())
        .count();
    s.push_str(&format!(
        "| pairs with ≥ 1 kept prompt | {with_prompt} |\n\n"
    ));
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        if let Some(r) = &o.rejection {
            *reasons.entry(r.code.as_str()).or_default() += 1;
        }
    }
    if !reasons.is_empty() {
        s.push_str("Rejections (the first problem of each rejected record's last round):\n\n| reason | records |\n|---|---:|\n");
        let mut v: Vec<_> = reasons.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (r, n) in v {
            s.push_str(&format!("| `{r}` | {n} |\n"));
        }
        s.push('\n');
    }
    let rounds: usize = outcomes.iter().map(|o| o.rounds).sum();
    s.push_str(&format!(
        "Repairs written: {rounds} ({:.2} per record; at most {} revisions). Thresholds: \
         confidence ≥ {}, changed lexemes ≤ {:.0}%.\n\n",
        rounds as f32 / outcomes.len().max(1) as f32,
        cfg.repair.max_rounds,
        cfg.repair.min_confidence,
        cfg.repair.max_change_ratio * 100.0
    ));
    // Prompts.
    let mut prompt_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let (mut asked, mut kept, mut described) = (0usize, 0usize, 0usize);
    for set in sets {
        for c in &set.candidates {
            if c.style == crate::prompts::DESCRIPTION {
                described += usize::from(c.rejected.is_none());
                continue;
            }
            asked += 1;
            match &c.rejected {
                None => kept += 1,
                Some(r) => {
                    let key = if r.contains("words (at least") {
                        format!("shorter than {} words", cfg.prompts.min_words)
                    } else {
                        r.split(['`', '(']).next().unwrap_or(r).trim().to_string()
                    };
                    *prompt_reasons.entry(key).or_default() += 1;
                }
            }
        }
    }
    s.push_str(&format!(
        "## Implicit prompts\n\n{asked} prompts asked for, {kept} kept.\n\n"
    ));
    if described > 0 {
        s.push_str(&format!(
            "**{described} prompt(s) are the records' own descriptions**, not the teacher's: every \
             prompt the teacher wrote for those pairs was rejected (`fallback_to_description`). \
             They passed the same leak filter and have style `description`.\n\n"
        ));
    }
    if !prompt_reasons.is_empty() {
        s.push_str("| rejected because | prompts |\n|---|---:|\n");
        for (r, n) in &prompt_reasons {
            s.push_str(&format!("| {r} | {n} |\n"));
        }
        s.push('\n');
    }
    // Per CWE and language.
    let mut table: BTreeMap<(String, Language), (usize, usize, usize)> = BTreeMap::new();
    for r in records {
        table.entry((cwe_name(r.cwe), r.language)).or_default().0 += 1;
    }
    for o in pairs {
        table.entry((cwe_name(o.cwe), o.language)).or_default().1 += 1;
    }
    for x in samples {
        table.entry((cwe_name(x.cwe), x.language)).or_default().2 += 1;
    }
    s.push_str("## Per CWE and language\n\n| CWE | language | records | pairs | samples |\n|---|---|---:|---:|---:|\n");
    for ((c, l), (n, a, k)) in &table {
        s.push_str(&format!("| {c} | {l} | {n} | {a} | {k} |\n"));
    }
    // Prompt length histogram.
    s.push_str("\n## Prompt length (words)\n\n");
    if samples.is_empty() {
        s.push_str("No samples.\n");
    } else {
        let edges = [0usize, 20, 40, 60, 80, 120, 160, 240, usize::MAX];
        let mut counts = vec![0usize; edges.len() - 1];
        for x in samples {
            let w = x.prompt.split_whitespace().count();
            if let Some(b) = edges.windows(2).position(|e| w >= e[0] && w < e[1]) {
                counts[b] += 1;
            }
        }
        let max = counts.iter().copied().max().unwrap_or(1).max(1);
        s.push_str("| words | samples | |\n|---|---:|---|\n");
        for (b, n) in counts.iter().enumerate() {
            let label = if edges[b + 1] == usize::MAX {
                format!("≥ {}", edges[b])
            } else {
                format!("{}–{}", edges[b], edges[b + 1] - 1)
            };
            let bar = "█".repeat((n * 30).div_ceil(max));
            s.push_str(&format!("| {label} | {n} | {bar} |\n"));
        }
    }
    s.push_str("\nFiles: `primevul_plus.jsonl` (the dataset: one sample per kept prompt), `repairs.jsonl` (every record's outcome, rejected ones with their reason), `prompts.jsonl` (every prompt, rejected ones with their reason), `records.jsonl` (the ingested input), `teacher_cache.sqlite` (every teacher answer).\n");
    s
}
