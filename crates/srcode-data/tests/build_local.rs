//! The whole build (ingest → repair with reflection → implicit prompts → PrimeVul+ and card)
//! with the real default model as the in-process teacher, on pairs of the demo corpus: the
//! outputs are valid, a second run makes no teacher call, a grown input only repairs the new
//! record, and a torn checkpoint line (a kill mid-write) is cut off and redone.

use srcode_data::build::{read_checkpoint, Stages};
use srcode_data::prompts::LEAK_WORDS;
use srcode_data::vul2safe::{RepairOutcome, REAL_FIX};
use srcode_data::{build, ingest, BuildPaths, DataConfig, Format, LocalTeacher, PrimeVulPlus};
use std::path::Path;

fn small_config() -> DataConfig {
    let mut cfg = DataConfig::default();
    cfg.repair.max_rounds = 1;
    cfg.repair.analysis_max_tokens = 48;
    cfg.repair.repair_extra_tokens = 48;
    cfg.repair.reflect_max_tokens = 80;
    cfg.repair.fallback_to_real_fix = true;
    cfg.prompts.per_pair = 2;
    cfg.prompts.max_tokens = 48;
    cfg
}

fn demo(ids: &[&str]) -> Vec<srcode_data::VulnRecord> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/pairs.jsonl");
    let all = ingest(&path, Format::Auto).unwrap().records;
    ids.iter()
        .map(|id| all.iter().find(|r| r.id == *id).unwrap().clone())
        .collect()
}

#[test]
fn a_local_build_writes_valid_outputs_and_resumes_without_teacher_calls() {
    let Some(gguf) = srcode_lm::tokenizer::default_test_gguf() else {
        return;
    };
    let teacher = LocalTeacher::load(&gguf, 4).unwrap();
    let scanner = srcode_scan::Scanner::builtin().unwrap();
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let paths = BuildPaths::new(dir.path());
    let records = demo(&["demo-py-001", "demo-c-001", "demo-py-010"]);
    let quiet = |_: srcode_data::Progress| {};

    let first = build(
        &records[..2],
        &teacher,
        &scanner,
        &cfg,
        &paths,
        4,
        Stages::All,
        &quiet,
    )
    .unwrap();
    assert_eq!(first.failure, None);
    assert_eq!(first.repaired_now, 2);
    assert!(
        first.teacher_calls >= 2 * 3,
        "analysis, repair, reflection each"
    );

    // Every record has an outcome; rejected ones say why.
    let outcomes: Vec<RepairOutcome> = read_checkpoint(&paths.repairs()).unwrap();
    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        assert!(
            o.rounds >= 1 && o.rounds <= 2,
            "{}: {} rounds",
            o.id,
            o.rounds
        );
        assert!(!o.analysis.is_empty(), "{}", o.id);
        assert_eq!(o.accepted, o.rejection.is_none(), "{o:?}");
        if let Some(r) = &o.rejection {
            assert!(!r.code.is_empty() && !r.detail.is_empty(), "{r:?}");
        }
    }

    // The dataset: one sample per kept prompt of a pair (teacher-accepted or real-fix
    // fallback), prompts free of security words, fix spans inside the secure code.
    let samples: Vec<PrimeVulPlus> = srcode_core::jsonl::read_strict(&paths.dataset()).unwrap();
    assert_eq!(samples.len(), first.samples);
    assert!(
        first.accepted_pairs + first.fallback_pairs >= 1,
        "both demo fixes pass the checks, so at least the fallback gives pairs"
    );
    assert!(!samples.is_empty());
    for x in &samples {
        let lower = x.prompt.to_lowercase();
        for w in LEAK_WORDS {
            assert!(
                !lower.contains(w),
                "{}: prompt mentions `{w}`: {}",
                x.id,
                x.prompt
            );
        }
        assert_ne!(x.secure, x.vulnerable);
        for s in &x.fix_spans {
            assert!(s.start < s.end && s.end <= x.secure.len(), "{s:?}");
        }
        if x.teacher == REAL_FIX {
            let r = records.iter().find(|r| r.id == x.pair_id).unwrap();
            assert_eq!(Some(x.secure.as_str()), r.fixed.as_deref());
            assert_eq!(x.confidence, None);
        } else {
            assert!(x.confidence.is_some_and(|c| c >= cfg.repair.min_confidence));
        }
    }
    let card = std::fs::read_to_string(paths.card()).unwrap();
    assert!(card.contains("## Acceptance funnel"), "{card}");
    assert!(card.contains("| ingested | 2 |"), "{card}");
    assert!(card.contains("## Prompt length (words)"), "{card}");
    if first.fallback_pairs > 0 {
        assert!(card.contains("are not teacher repairs"), "{card}");
    }
    let dataset_bytes = std::fs::read(paths.dataset()).unwrap();

    // Run it again: everything is finished, nothing is asked, the same dataset comes out.
    let again = build(
        &records[..2],
        &teacher,
        &scanner,
        &cfg,
        &paths,
        4,
        Stages::All,
        &quiet,
    )
    .unwrap();
    assert_eq!(again.teacher_calls, 0);
    assert_eq!(again.repaired_before, 2);
    assert_eq!(again.repaired_now, 0);
    assert_eq!(std::fs::read(paths.dataset()).unwrap(), dataset_bytes);

    // A kill while a line was being written leaves a torn last line: it is cut off, and a
    // record added to the input is the only one repaired (its earlier answers come from the
    // cache when it has any).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(paths.repairs())
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"id\": \"demo-py-010\", \"langu").unwrap();
    drop(f);
    let grown = build(
        &records,
        &teacher,
        &scanner,
        &cfg,
        &paths,
        4,
        Stages::All,
        &quiet,
    )
    .unwrap();
    assert_eq!(grown.failure, None);
    assert_eq!(grown.repaired_before, 2);
    assert_eq!(grown.repaired_now, 1);
    let outcomes2: Vec<RepairOutcome> = read_checkpoint(&paths.repairs()).unwrap();
    assert_eq!(outcomes2.len(), 3);
    assert_eq!(
        &outcomes2[..2],
        &outcomes[..],
        "finished records are kept as they were"
    );
}

#[test]
fn descriptions_stand_in_when_every_teacher_prompt_is_rejected() {
    let Some(gguf) = srcode_lm::tokenizer::default_test_gguf() else {
        return;
    };
    let teacher = LocalTeacher::load(&gguf, 4).unwrap();
    let scanner = srcode_scan::Scanner::builtin().unwrap();
    let mut cfg = small_config();
    // No teacher prompt at all: each pair that passes gets its description, or nothing.
    cfg.prompts.per_pair = 0;
    cfg.prompts.fallback_to_description = true;
    let dir = tempfile::tempdir().unwrap();
    let paths = BuildPaths::new(dir.path());
    let records = demo(&["demo-c-001", "demo-py-001"]);
    let s = build(
        &records,
        &teacher,
        &scanner,
        &cfg,
        &paths,
        4,
        Stages::All,
        &|_| {},
    )
    .unwrap();
    assert_eq!(s.failure, None);
    let samples: Vec<PrimeVulPlus> = srcode_core::jsonl::read_strict(&paths.dataset()).unwrap();
    assert_eq!(
        samples.len(),
        s.accepted_pairs + s.fallback_pairs,
        "one per pair"
    );
    assert!(!samples.is_empty());
    for x in &samples {
        let r = records.iter().find(|r| r.id == x.pair_id).unwrap();
        let d = r.description.as_deref().unwrap();
        assert_eq!(x.prompt_style, srcode_data::prompts::DESCRIPTION);
        assert!(x.prompt.starts_with(d), "{}", x.prompt);
        assert!(
            x.prompt.contains("Implement it with this signature"),
            "{}",
            x.prompt
        );
    }
    let card = std::fs::read_to_string(paths.card()).unwrap();
    assert!(card.contains("records' own descriptions"), "{card}");
}
