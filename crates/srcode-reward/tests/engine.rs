//! The reward engine end to end on small completions, with a character-level "tokenizer" (every
//! byte a token) so expectations are easy to read; alignment to real tokenizers is tested in
//! `align` and with SmolLM2's tokenizer in `sven.rs`.

use srcode_reward::config::{RewardConfig, Spread};
use srcode_reward::reference::RepairPattern;
use srcode_reward::{RewardEngine, RewardInput};
use srcode_scan::{Language, Scanner};

fn bytes_as_tokens(s: &str) -> Vec<(usize, usize)> {
    (0..s.len()).map(|i| (i, i + 1)).collect()
}

fn engine(cfg: RewardConfig) -> RewardEngine {
    RewardEngine::new(Scanner::builtin().unwrap(), cfg)
}

fn input<'a>(c: &'a str, toks: &'a [(usize, usize)], lang: Language) -> RewardInput<'a> {
    RewardInput {
        completion: c,
        tokens: toks,
        lang,
        pair: None,
        reference_len: None,
        function_name: None,
        tests: None,
    }
}

#[test]
fn the_analyser_penalises_exactly_the_tokens_of_the_finding() {
    let e = engine(RewardConfig::default());
    let c = "void f(const char *s) {\n  char b[8];\n  strcpy(b, s);\n}\n";
    let t = bytes_as_tokens(c);
    let r = e.reward(&input(c, &t, Language::C)).unwrap();
    let at = c.find("strcpy(b, s)").unwrap();
    let span = at..at + "strcpy(b, s)".len();
    for (i, v) in r.per_token.iter().enumerate() {
        if span.contains(&i) {
            assert!(*v < 0.0, "token {i} inside the finding got {v}");
        } else {
            assert_eq!(*v, 0.0, "token {i} outside the finding got {v}");
        }
    }
    // High severity (0.75) times weight 1.
    assert!((r.per_token[at] + 0.75).abs() < 1e-6);
    assert!(r.breakdown.clean < 0.0 && r.breakdown.parse > 0.0);
    assert_eq!(
        r.dense().last().copied(),
        Some(r.per_token[r.per_token.len() - 1] + r.instance)
    );
    assert!((r.total - (r.per_token.iter().sum::<f32>() + r.instance)).abs() < 1e-5);
}

#[test]
fn line_spread_covers_the_whole_line_and_weights_scale() {
    let mut cfg = RewardConfig::default();
    cfg.analyser.spread = Spread::Line;
    cfg.analyser.weight = 2.0;
    let e = engine(cfg);
    let c = "void f(const char *s) {\n  char b[8];\n  strcpy(b, s);\n}\n";
    let t = bytes_as_tokens(c);
    let r = e.reward(&input(c, &t, Language::C)).unwrap();
    let line_start = c.find("  strcpy").unwrap();
    assert!((r.per_token[line_start] + 1.5).abs() < 1e-6);
    assert_eq!(r.per_token[c.find("char b").unwrap()], 0.0);
}

#[test]
fn statement_spread_covers_the_statement_around_the_finding() {
    let mut cfg = RewardConfig::default();
    cfg.analyser.spread = Spread::Statement;
    let e = engine(cfg);
    let c = "void f(const char *s) { char b[8]; if (s) n = strcpy(b, s) - b; puts(b); }\n";
    let t = bytes_as_tokens(c);
    let r = e.reward(&input(c, &t, Language::C)).unwrap();
    let stmt = "if (s) n = strcpy(b, s) - b;";
    let at = c.find(stmt).unwrap();
    for (i, v) in r.per_token.iter().enumerate() {
        let inside = (at..at + stmt.len()).contains(&i);
        assert_eq!(*v < 0.0, inside, "token {i} ({:?}): {v}", &c[i..i + 1]);
    }
}

#[test]
fn a_clean_secure_answer_earns_more_than_a_vulnerable_one() {
    let e = engine(RewardConfig::default());
    let vuln = "def run(host):\n    import os\n    os.system(\"ping -c 1 \" + host)\n";
    let safe = "def run(host):\n    import subprocess\n    subprocess.run([\"ping\", \"-c\", \"1\", host], check=True)\n";
    let (tv, ts) = (bytes_as_tokens(vuln), bytes_as_tokens(safe));
    let rv = e.reward(&input(vuln, &tv, Language::Python)).unwrap();
    let rs = e.reward(&input(safe, &ts, Language::Python)).unwrap();
    assert!(
        rs.total > rv.total,
        "safe {} vs vulnerable {}",
        rs.total,
        rv.total
    );
    assert!(rs.findings.is_empty());
}

#[test]
fn the_repair_reference_rewards_the_secure_pattern_and_penalises_the_vulnerable_one() {
    let vuln = "def get(cur, name):\n    cur.execute(\"SELECT * FROM u WHERE n = '%s'\" % name)\n";
    let fixed = "def get(cur, name):\n    cur.execute(\"SELECT * FROM u WHERE n = %s\", (name,))\n";
    let p = RepairPattern::new(vuln, fixed, Language::Python, 3).unwrap();
    let e = engine(RewardConfig::default());
    // Rollouts with other names and spacing.
    let good = "def fetch(db, user):\n    db.execute(\"SELECT id FROM t WHERE u = %s\",(user,))\n";
    let bad = "def fetch(db, user):\n    db.execute(\"SELECT id FROM t WHERE u = '%s'\" %  user)\n";
    let (tg, tb) = (bytes_as_tokens(good), bytes_as_tokens(bad));
    let mut ig = input(good, &tg, Language::Python);
    ig.pair = Some(&p);
    let mut ib = input(bad, &tb, Language::Python);
    ib.pair = Some(&p);
    let rg = e.reward(&ig).unwrap();
    let rb = e.reward(&ib).unwrap();
    assert!(rg.breakdown.reference_secure > 0.0 && rg.breakdown.reference_vulnerable == 0.0);
    assert!(rb.breakdown.reference_vulnerable < 0.0 && rb.breakdown.reference_secure == 0.0);
    // The penalised tokens are around the `%` that formats the query.
    let pct = bad.rfind('%').unwrap();
    assert!(rb.per_token[pct] < 0.0);
}

#[test]
fn degenerate_answers_earn_the_hack_penalty_and_no_positive_token_reward() {
    let e = engine(RewardConfig::default());
    for (c, why) in [
        ("", "bytes of code"),
        ("I'm sorry, but I cannot help with that.", "refusal"),
        ("```python\npass\n```", "bytes of code"),
    ] {
        let t = bytes_as_tokens(c);
        let r = e.reward(&input(c, &t, Language::Python)).unwrap();
        assert_eq!(r.instance, -1.0, "{c:?}");
        let reason = r.breakdown.guard_reason.clone().unwrap_or_default();
        assert!(reason.contains(why), "{c:?}: {reason}");
    }
    let c = "def other(x):\n    return x + 1\n";
    let t = bytes_as_tokens(c);
    let mut i = input(c, &t, Language::Python);
    i.function_name = Some("parse_header");
    let r = e.reward(&i).unwrap();
    assert!(r.breakdown.guard_reason.unwrap().contains("parse_header"));
    i.function_name = Some("other");
    i.reference_len = Some(2000);
    let r = e.reward(&i).unwrap();
    assert!(r.breakdown.guard_reason.unwrap().contains("reference"));
    i.reference_len = Some(40);
    assert!(e.reward(&i).unwrap().breakdown.guard_reason.is_none());
}

#[test]
fn rewards_are_deterministic_and_bad_tokens_are_errors() {
    let e = engine(RewardConfig::default());
    let c = "```c\nvoid f(char *s){ char b[4]; gets(b); strcpy(b, s); }\n```";
    let t = bytes_as_tokens(c);
    let a = e.reward(&input(c, &t, Language::C)).unwrap();
    let b = e.reward(&input(c, &t, Language::C)).unwrap();
    assert_eq!(a, b);
    let bad = [(0, 3), (3, 999)];
    let err = e
        .reward(&input(c, &bad, Language::C))
        .unwrap_err()
        .to_string();
    assert!(err.contains("token 1") && err.contains("999"), "{err}");
}

#[test]
fn configuration_reads_from_toml_and_rejects_unknown_keys() {
    let cfg = RewardConfig::from_toml(
        "[analyser]\nweight = 3.0\nspread = \"line\"\n[reference]\nngram = 4\n",
    )
    .unwrap();
    assert_eq!(cfg.analyser.weight, 3.0);
    assert_eq!(cfg.analyser.spread, Spread::Line);
    assert_eq!(cfg.reference.ngram, 4);
    assert_eq!(cfg.instance.parse, RewardConfig::default().instance.parse);
    let e = RewardConfig::from_toml("[analyser]\nwieght = 1.0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("wieght"), "{e}");
}

#[test]
fn functional_tests_run_in_the_sandbox_and_decide_the_tests_term() {
    let e = engine(RewardConfig::default()).with_sandbox(srcode_sandbox::Sandbox::default());
    let good = "```python\ndef add(a, b):\n    return a + b\n```";
    let bad = "```python\ndef add(a, b):\n    return a - b\n```";
    let tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0";
    for (c, want) in [(good, 1.0), (bad, -1.0)] {
        let t = bytes_as_tokens(c);
        let mut i = input(c, &t, Language::Python);
        i.tests = Some(tests);
        match e.reward(&i) {
            Ok(r) => assert_eq!(r.breakdown.tests, want, "{c}"),
            Err(err) => {
                eprintln!("SKIP sandboxed tests: {err}");
                return;
            }
        }
    }
}
