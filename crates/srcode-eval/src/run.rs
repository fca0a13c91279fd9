//! The resumable evaluation loop. An evaluation directory holds `run.json` (what is evaluated
//! and how: an evaluation resumes only with the same settings), `samples.jsonl` (every sample,
//! a task's samples appended together and synced, so a kill loses at most the task in flight),
//! `metrics.json`, `report.md` and `report.html`.

use crate::bench::{Mode, Task};
use crate::gen::{GenSettings, Generator};
use crate::metrics::Metrics;
use crate::report;
use crate::score::{Sample, Scorer};
use crate::{EvalError, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What an evaluation is; stored as `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    pub bench: String,
    /// The benchmark file or directory.
    pub data: String,
    /// The model's identity.
    pub model: String,
    /// `Some(Instruct)` asks completion tasks as instructions.
    pub mode: Option<Mode>,
    /// Completion tasks asked through the chat template with a pre-filled answer (local model).
    #[serde(default)]
    pub chat_prefill: bool,
    pub gen: GenSettings,
    /// Digest of the tasks' ids and prompts (a changed benchmark file starts afresh).
    pub tasks_digest: String,
    pub tasks: usize,
}

impl EvalSpec {
    pub fn digest(tasks: &[Task]) -> String {
        let mut h = Sha256::new();
        for t in tasks {
            h.update(t.id.as_bytes());
            h.update([0]);
            h.update(t.prompt.as_bytes());
            h.update([0]);
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Result of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub dir: PathBuf,
    pub metrics: Metrics,
    pub samples: Vec<Sample>,
    /// Tasks found done in the directory.
    pub resumed_tasks: usize,
    /// Tasks generated now.
    pub new_tasks: usize,
}

/// Paths inside an evaluation directory.
pub fn samples_path(dir: &Path) -> PathBuf {
    dir.join("samples.jsonl")
}

/// Reads `samples.jsonl`, dropping a torn last line (a write cut by a kill) and truncating the
/// file to the last whole line.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EvalError::io(path, e)),
    };
    let mut out = Vec::new();
    let mut good = 0usize;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if line.trim().is_empty() {
            good += line.len();
            continue;
        }
        let whole = line.ends_with('\n');
        match serde_json::from_str::<Sample>(line) {
            Ok(s) if whole || !last => {
                out.push(s);
                good += line.len();
            }
            _ if last => {
                tracing::warn!(file = %path.display(), "dropping a torn last line");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| EvalError::io(path, e))?;
                f.set_len(good as u64).map_err(|e| EvalError::io(path, e))?;
            }
            Err(e) => {
                return Err(EvalError::input(
                    format!("{}:{}", path.display(), i + 1),
                    format!("not a sample: {e}"),
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(out)
}

/// The task as it is asked of this generator.
fn as_asked(t: &Task, spec_mode: Option<Mode>, raw: bool) -> Task {
    if t.mode == Mode::Complete && (!raw || spec_mode == Some(Mode::Instruct)) {
        t.as_instruct()
    } else {
        t.clone()
    }
}

/// Evaluates `tasks` with `generator` into `dir`, resuming what is there. `tasks_per_call`
/// tasks are generated together; `progress(done, total)` is called after each group.
pub fn evaluate(
    tasks: &[Task],
    generator: &dyn Generator,
    scorer: &Scorer,
    spec: &EvalSpec,
    dir: &Path,
    tasks_per_call: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalOutcome> {
    spec.gen.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let spec_path = dir.join("run.json");
    if spec_path.exists() {
        let old: EvalSpec = serde_json::from_str(
            &std::fs::read_to_string(&spec_path).map_err(|e| EvalError::io(&spec_path, e))?,
        )
        .map_err(|e| EvalError::input(spec_path.display(), e.to_string()))?;
        if &old != spec {
            let a = serde_json::to_value(&old)?;
            let b = serde_json::to_value(spec)?;
            let changed: Vec<String> = a
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: {v} → {}",
                        b.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
                    )
                })
                .collect();
            return Err(EvalError::Config(format!(
                "{} holds an evaluation with other settings ({}); use another output \
                 directory, or delete it to start afresh",
                dir.display(),
                changed.join("; ")
            )));
        }
    } else {
        write_atomic(&spec_path, serde_json::to_string_pretty(spec)?.as_bytes())?;
    }
    let path = samples_path(dir);
    let mut samples = read_samples(&path)?;
    let n = spec.gen.n;
    // Tasks with all their samples are done; partial ones (not written by this code, but
    // possible after a crash of an older version) are dropped and redone.
    let mut count: HashMap<&str, usize> = HashMap::new();
    for s in &samples {
        *count.entry(s.task_id.as_str()).or_default() += 1;
    }
    let done: std::collections::HashSet<String> = count
        .iter()
        .filter(|(_, &c)| c >= n)
        .map(|(k, _)| k.to_string())
        .collect();
    if samples.iter().any(|s| !done.contains(&s.task_id)) {
        samples.retain(|s| done.contains(&s.task_id));
        srcode_core::jsonl::write_atomic(&path, &samples)?;
    }
    let todo: Vec<Task> = tasks
        .iter()
        .filter(|t| !done.contains(&t.id))
        .map(|t| as_asked(t, spec.mode, generator.completes_raw()))
        .collect();
    let resumed = tasks.len() - todo.len();
    let total = tasks.len();
    progress(resumed, total);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| EvalError::io(&path, e))?;
    let mut finished = resumed;
    for chunk in todo.chunks(tasks_per_call.max(1)) {
        let refs: Vec<&Task> = chunk.iter().collect();
        let results = generator.generate(&refs, &spec.gen);
        let jobs: Vec<(
            &Task,
            usize,
            Option<&crate::gen::Completion>,
            Option<String>,
        )> = refs
            .iter()
            .zip(&results)
            .flat_map(|(t, r)| {
                (0..n).map(move |j| match r {
                    Ok(v) => (*t, j, v.get(j), None),
                    Err(e) => (*t, j, None, Some(e.to_string())),
                })
            })
            .collect();
        let scored: Vec<Sample> = jobs
            .par_iter()
            .map(|(t, j, c, err)| match (c, err) {
                (Some(c), _) => scorer
                    .score(t, *j, c)
                    .unwrap_or_else(|e| Sample::failed(t, *j, format!("scoring: {e}"))),
                (None, e) => Sample::failed(
                    t,
                    *j,
                    e.clone().unwrap_or_else(|| "no sample returned".into()),
                ),
            })
            .collect();
        let mut buf = Vec::new();
        for s in &scored {
            serde_json::to_writer(&mut buf, s)?;
            buf.push(b'\n');
        }
        file.write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| EvalError::io(&path, e))?;
        samples.extend(scored);
        finished += chunk.len();
        progress(finished, total);
    }
    // Samples in task order, whatever order they were generated in.
    let order: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    samples.retain(|s| order.contains_key(s.task_id.as_str()));
    samples.sort_by_key(|s| (order.get(s.task_id.as_str()).copied(), s.index));
    let metrics = Metrics::compute(&samples);
    write_atomic(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    let title = format!("{} on {}", spec.model, spec.bench);
    write_atomic(
        &dir.join("report.md"),
        report::markdown(&title, spec, &metrics).as_bytes(),
    )?;
    write_atomic(
        &dir.join("report.html"),
        report::html(&title, spec, &metrics, &samples, tasks).as_bytes(),
    )?;
    Ok(EvalOutcome {
        dir: dir.to_path_buf(),
        metrics,
        samples,
        resumed_tasks: resumed,
        new_tasks: total - resumed,
    })
}

/// Writes a file through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    srcode_core::jsonl::write_file_atomic(path, bytes).map_err(|e| EvalError::io(path, e))
}
