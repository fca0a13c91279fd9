//! Per-CWE detection on SVEN vulnerable/fixed pairs:
//! `cargo run --release -p srcode-scan --example sven_val -- ../shared/data/sven/val`
//! (`--by-rule` adds a table per rule: rules that fire as often on the fixed versions are
//! noise to a reward built on them).

use srcode_scan::{pairs, Scanner};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let by_rule = args.iter().any(|a| a == "--by-rule");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data/sven/val"));
    let scanner = Scanner::builtin()?;
    let ps = pairs::load_sven(&dir)?;
    let rep = pairs::evaluate(&scanner, &ps)?;
    println!("{} pairs from {}\n", ps.len(), dir.display());
    print!("{}", rep.markdown());
    if by_rule {
        print!("\n{}", rep.markdown_by_rule());
    }
    Ok(())
}
