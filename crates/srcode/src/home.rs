//! Where srcode keeps its files: `$SRCODE_HOME` (default `~/.cache/srcode`), with models under
//! `models/`.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// File name of the embedded default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cache directory.
pub fn srcode_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("SRCODE_HOME") {
        return Ok(PathBuf::from(h));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("srcode")),
        None => {
            bail!("neither SRCODE_HOME nor HOME is set; set SRCODE_HOME to a writable directory")
        }
    }
}

/// Path of the default model inside the cache (whether or not it was fetched).
pub fn default_model_path() -> Result<PathBuf> {
    Ok(srcode_home()?.join("models").join(DEFAULT_MODEL_FILE))
}

/// Resolves a `--model` argument: the given path, or the fetched default.
pub fn resolve_model(arg: Option<&std::path::Path>) -> Result<PathBuf> {
    match arg {
        Some(p) => {
            if !p.exists() {
                bail!("model path {} does not exist", p.display());
            }
            Ok(p.to_path_buf())
        }
        None => {
            let p = default_model_path()?;
            if !p.is_file() {
                bail!(
                    "no --model given and the default model is not fetched yet ({}); run `srcode model fetch` first",
                    p.display()
                );
            }
            Ok(p)
        }
    }
}
