//! The bar on SVEN's training pairs with SmolLM2's tokenizer: the mean token reward over
//! the changed hunks is higher for the fixed version than for the vulnerable one in at least 8
//! of the 9 CWEs. Skips, saying why, without `../shared/data` or the default model.

use srcode_reward::config::RewardConfig;
use srcode_reward::{sven, RewardEngine};
use srcode_scan::{pairs, Scanner};

#[test]
fn fixed_hunks_earn_more_than_vulnerable_hunks_in_8_of_9_cwes() {
    let Some(dir) = srcode_core::shared_data("sven/train", "sven hunk rewards") else {
        return;
    };
    let Some(model) = srcode_lm::tokenizer::default_test_gguf() else {
        return; // default_test_gguf printed why
    };
    let tok = srcode_lm::loader::inspect(&model).unwrap().tokenizer;
    let engine = RewardEngine::new(Scanner::builtin().unwrap(), RewardConfig::default());
    let ps = pairs::load_sven(&dir).unwrap();
    let rep = sven::hunk_rewards(&engine, &ps, &|code| {
        tok.encode_with_offsets(code).unwrap().1
    })
    .unwrap();
    eprintln!("{}", rep.markdown());
    let (wins, cwes) = rep.wins();
    assert_eq!(cwes, 9, "all nine CWEs have usable pairs");
    assert!(wins >= 8, "{}", rep.markdown());
}
