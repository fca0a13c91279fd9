//! Latency of rewarding one 256-token completion (analyser + alignment + repair-reference
//! patterns, no teacher): `cargo bench -p srcode-reward --bench reward`. Completions are SVEN
//! training functions (C and Python) cut to 256 SmolLM2 tokens, each rewarded against its own
//! repair pair.

use srcode_reward::config::RewardConfig;
use srcode_reward::reference::RepairPattern;
use srcode_reward::{RewardEngine, RewardInput};
use srcode_scan::{pairs, Scanner};
use std::time::Instant;

fn main() {
    let Some(dir) = srcode_core::shared_data("sven/train", "reward bench") else {
        return;
    };
    let Some(model) = srcode_lm::tokenizer::default_test_gguf() else {
        println!("SKIP reward bench: no default model (run `srcode model fetch`)");
        return;
    };
    let tok = srcode_lm::loader::inspect(&model)
        .expect("tokenizer")
        .tokenizer;
    let engine = RewardEngine::new(Scanner::builtin().expect("rules"), RewardConfig::default());
    let ps = pairs::load_sven(&dir).expect("pairs");
    // (completion cut to 256 tokens, token spans, pattern, language)
    let mut cases = Vec::new();
    for p in &ps {
        let Ok(pat) = RepairPattern::new(&p.vulnerable, &p.fixed, p.lang, 3) else {
            continue;
        };
        let Ok((_, offs)) = tok.encode_with_offsets(&p.vulnerable) else {
            continue;
        };
        if offs.len() < 256 {
            continue;
        }
        let end = offs[255].1;
        let text = p.vulnerable[..end].to_string();
        let toks: Vec<(usize, usize)> = offs[..256].to_vec();
        cases.push((text, toks, pat, p.lang));
        if cases.len() == 300 {
            break;
        }
    }
    let mut times = Vec::new();
    for round in 0..4 {
        for (text, toks, pat, lang) in &cases {
            let t = Instant::now();
            let r = engine
                .reward(&RewardInput {
                    completion: text,
                    tokens: toks,
                    lang: *lang,
                    pair: Some(pat),
                    reference_len: None,
                    function_name: None,
                    tests: None,
                })
                .expect("reward");
            let dt = t.elapsed();
            std::hint::black_box(r);
            if round > 0 {
                times.push(dt);
            }
        }
    }
    times.sort();
    let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "rewarding one 256-token completion ({} completions x 3 rounds): median {:.3} ms, p90 {:.3} ms, max {:.3} ms",
        cases.len(),
        q(0.5),
        q(0.9),
        q(1.0)
    );
}
