//! Mean token reward over the changed hunks of SVEN pairs, fixed vs vulnerable, tokenised with
//! the default model's tokenizer:
//! `cargo run --release -p srcode-reward --example sven_rewards -- ../shared/data/sven/train [MODEL]`

use srcode_reward::config::RewardConfig;
use srcode_reward::{sven, RewardEngine};
use srcode_scan::{pairs, Scanner};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "../shared/data/sven/train".into()),
    );
    let model = match args.next() {
        Some(m) => PathBuf::from(m),
        None => srcode_lm::tokenizer::default_test_gguf().ok_or("no model: pass its path")?,
    };
    let tok = srcode_lm::loader::inspect(&model)?.tokenizer;
    let engine = RewardEngine::new(Scanner::builtin()?, RewardConfig::default());
    let ps = pairs::load_sven(&dir)?;
    let rep = sven::hunk_rewards(&engine, &ps, &|code| {
        tok.encode_with_offsets(code)
            .map(|(_, o)| o)
            .unwrap_or_default()
    })?;
    println!(
        "{} pairs from {}, tokenizer of {}\n",
        ps.len(),
        dir.display(),
        model.display()
    );
    print!("{}", rep.markdown());
    Ok(())
}
