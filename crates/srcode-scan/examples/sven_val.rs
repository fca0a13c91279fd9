//! Per-CWE detection on SVEN vulnerable/fixed pairs:
//! `cargo run --release -p srcode-scan --example sven_val -- ../shared/data/sven/val`

use srcode_scan::{pairs, Scanner};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data/sven/val"));
    let scanner = Scanner::builtin()?;
    let ps = pairs::load_sven(&dir)?;
    let rep = pairs::evaluate(&scanner, &ps)?;
    println!("{} pairs from {}\n", ps.len(), dir.display());
    print!("{}", rep.markdown());
    Ok(())
}
