//! Checkpoints shared by the trainers: the trainable tensors, the optimiser state and a JSON
//! state, written to `checkpoint.tmp/` and renamed into place so a kill never leaves half a
//! checkpoint; the metrics log cut back to the checkpoint's step on resume.

use crate::error::{Result, TrainError};
use candle_core::{Tensor, Var};
use serde::de::DeserializeOwned;
use serde::Serialize;
use srcode_lm::train::AdamW;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Writes `params`, the optimiser state and `state` into `dir/checkpoint`.
pub fn save<S: Serialize>(
    params: &[(String, Var)],
    opt: &AdamW,
    state: &S,
    dir: &Path,
) -> Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let w: HashMap<String, Tensor> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    srcode_lm::train::write_safetensors(&w, &tmp.join("trainable.safetensors"))?;
    srcode_lm::train::write_safetensors(&opt.state_tensors()?, &tmp.join("optimizer.safetensors"))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Input(e.to_string()))?;
    std::fs::write(tmp.join("state.json"), json).map_err(io(&tmp))?;
    let dst = dir.join("checkpoint");
    let old = dir.join("checkpoint.old");
    if dst.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(&dst, &old).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&tmp))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// The checkpoint of `dir`, falling back to `checkpoint.old` when a kill came between the two
/// renames of [`save`].
pub fn find(dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.join("state.json").is_file())
}

/// Loads a checkpoint into `params` and `opt`; returns its state.
pub fn load<S: DeserializeOwned>(
    params: &[(String, Var)],
    opt: &mut AdamW,
    ckpt: &Path,
) -> Result<S> {
    let sp = ckpt.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
    let state: S = serde_json::from_str(&text)
        .map_err(|e| TrainError::Input(format!("{}: {e}", sp.display())))?;
    let wp = ckpt.join("trainable.safetensors");
    let dev = params
        .first()
        .map_or(candle_core::Device::Cpu, |(_, v)| v.device().clone());
    let w = candle_core::safetensors::load(&wp, &dev)?;
    for (name, var) in params {
        let t = w.get(name).ok_or_else(|| {
            TrainError::Input(format!(
                "{}: no tensor `{name}` (a checkpoint of another model or adapter setting?)",
                wp.display()
            ))
        })?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    let o = candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &dev)?;
    opt.load_state(&o)?;
    Ok(state)
}

/// Appends one JSON line to `path`.
pub fn append_line<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let mut line = serde_json::to_string(v).map_err(|e| TrainError::Input(e.to_string()))?;
    line.push('\n');
    f.write_all(line.as_bytes()).map_err(io(path))
}

/// Keeps the lines of a metrics log whose `step` is at most `step` (a resumed run rewrites
/// what came after its checkpoint).
pub fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(io(path))
}
