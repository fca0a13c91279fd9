//! In-process scan latency on typical LLM-sized functions (30–80 lines of C or Python, taken
//! from SVEN's training split): `cargo bench -p srcode-scan --bench scan`.
//! Reports the median, p90 and maximum time of one `Scanner::scan_code` call per language, and
//! the median of tree-sitter parsing alone (what any tree-sitter-based analyser pays).

use srcode_scan::{Language, Scanner};
use std::time::{Duration, Instant};

fn snippets(dir: &std::path::Path, lang: Language) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let name = v["file_name"].as_str().unwrap_or("");
            let l = srcode_scan::lang::from_path(std::path::Path::new(name));
            let same = match lang {
                Language::C => matches!(l, Some(Language::C) | Some(Language::Cpp)),
                other => l == Some(other),
            };
            if !same {
                continue;
            }
            for key in ["func_src_before", "func_src_after"] {
                if let Some(src) = v[key].as_str() {
                    let n = src.lines().count();
                    if (30..=80).contains(&n) {
                        out.push(src.to_string());
                    }
                }
            }
        }
    }
    out
}

fn main() {
    let Some(data) = srcode_core::shared_data("sven/train", "scan bench") else {
        return;
    };
    let t0 = Instant::now();
    let scanner = Scanner::builtin().expect("built-in rules");
    println!(
        "scanner construction (all rules, 5 languages): {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "| language | snippets | lines (mean) | median | p90 | max | findings | tree-sitter parse alone, median |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for lang in [Language::C, Language::Python] {
        let snips = snippets(&data, lang);
        if snips.is_empty() {
            println!("| {lang} | 0 | - | - | - | - | - |");
            continue;
        }
        // Warm-up: parsers and caches.
        for s in snips.iter().take(20) {
            let _ = scanner.scan_code(s.as_bytes(), lang, "");
        }
        let mut times: Vec<Duration> = Vec::new();
        let mut findings = 0;
        for _ in 0..5 {
            for s in &snips {
                let t = Instant::now();
                let f = scanner.scan_code(s.as_bytes(), lang, "").expect("scan");
                times.push(t.elapsed());
                findings += f.len();
            }
        }
        // The floor under any tree-sitter analyser: parsing alone, with a reused parser.
        let mut parser = tree_sitter::Parser::new();
        parser
            .set_language(&srcode_scan::lang::grammar(lang))
            .expect("grammar");
        let mut parse_times: Vec<Duration> = Vec::new();
        for _ in 0..5 {
            for s in &snips {
                let t = Instant::now();
                let tree = parser.parse(s.as_bytes(), None);
                drop(tree);
                parse_times.push(t.elapsed());
            }
        }
        parse_times.sort();
        let parse_median = parse_times[parse_times.len() / 2].as_secs_f64() * 1e3;
        times.sort();
        let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        let lines: usize = snips.iter().map(|s| s.lines().count()).sum();
        println!(
            "| {lang} | {} | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms | {} | {parse_median:.3} ms |",
            snips.len(),
            lines as f64 / snips.len() as f64,
            q(0.5),
            q(0.9),
            q(1.0),
            findings / 5
        );
    }
}
