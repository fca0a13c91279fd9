//! The runtime on the real default model (SmolLM2-135M-Instruct GGUF). Each test prints why it
//! skips when the model has not been fetched (`srcode model fetch`, or set SRCODE_TEST_GGUF).

use candle_core::{DType, Device, Tensor};
use srcode_lm::chat::ChatMessage;
use srcode_lm::generate::{generate, SamplingParams};
use srcode_lm::loader::{self, LoadedModel};
use srcode_lm::model::{ForwardOpts, WeightMode};
use srcode_lm::tokenizer::default_test_gguf;
use srcode_lm::train::token_logprobs;

mod common;
use common::max_abs_diff;

fn load(mode: Option<WeightMode>) -> Option<LoadedModel> {
    let path = default_test_gguf()?;
    Some(loader::load(&path, &Device::Cpu, mode).expect("default model loads"))
}

fn chat_prompt(lm: &LoadedModel, user: &str) -> Vec<u32> {
    let text = lm
        .chat
        .render(&[ChatMessage::new("user", user)], true)
        .unwrap();
    lm.tokenizer.encode(&text, false).unwrap()
}

#[test]
fn quantized_and_dense_weights_agree() {
    let Some(d) = load(Some(WeightMode::Dense {
        dtype: DType::F32,
        trainable: false,
    })) else {
        return;
    };
    let ids = chat_prompt(&d, "Write a Python function that reads a file.");
    let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    // All positions of the prompt, [seq, vocab].
    let last = |l: &Tensor| l.get(0).unwrap();
    let ad = last(&d.model.forward(&t, ForwardOpts::default(), None).unwrap());
    let lpd = candle_nn::ops::log_softmax(&ad, 1).unwrap();
    let pd = lpd.exp().unwrap();
    // The default (the file's own Q4_1 blocks) and Q8_0, both on srcode's packed kernels.
    for (mode, bound) in [
        (None, 0.08f32),
        (
            Some(WeightMode::Quantized(
                candle_core::quantized::GgmlDType::Q8_0,
            )),
            0.1,
        ),
    ] {
        let q = load(mode).unwrap();
        let aq = last(&q.model.forward(&t, ForwardOpts::default(), None).unwrap());
        // Top-1 agreement, a near-tie (the dense model's pick within 0.2 logits of the quantised
        // model's best) counting as agreement: on 39 positions a plain count moves by whole
        // positions when rounding anywhere upstream flips a tie (0.08-0.11 logits apart).
        let dense_pick = ad.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let mut agreeing = 0usize;
        for (i, &p) in dense_pick.iter().enumerate() {
            let row = aq.get(i).unwrap().to_vec1::<f32>().unwrap();
            let best = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            if best - row[p as usize] <= 0.2 {
                agreeing += 1;
            }
        }
        let agree = agreeing as f32 / dense_pick.len() as f32;
        assert!(
            agree > 0.85,
            "{mode:?}: top-1 agrees (ties within 0.2) at {agree} of positions"
        );
        // Only the 8-bit rounding of activations (and, for Q8_0, of the weights) separates them
        // from the dequantised f32 model: the distributions stay close.
        let lpq = candle_nn::ops::log_softmax(&aq, 1).unwrap();
        let kl = (&pd * (&lpd - &lpq).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .affine(1.0 / ids.len() as f64, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let cos = (&aq * &ad)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / (aq
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
                * ad.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .sqrt());
        eprintln!("{mode:?}: mean KL {kl}, logit cosine {cos}, top-1 agreement {agree}");
        assert!(kl < bound, "{mode:?}: KL(dense || quantised) = {kl}");
        assert!(cos > 0.995, "{mode:?}: logit cosine {cos}");
    }
}

#[test]
fn chat_request_for_code_gets_code() {
    let Some(lm) = load(None) else { return };
    let ids = chat_prompt(
        &lm,
        "Write a Python function that checks whether a number is prime.",
    );
    let params = SamplingParams {
        max_new_tokens: 160,
        stop_token_ids: lm.tokenizer.eos_token_ids(),
        ..Default::default()
    };
    let (g, stats) = generate(&lm.model, &lm.tokenizer, &[ids], &params).unwrap();
    let text = &g[0].text;
    eprintln!("{text}\n[{stats:?}]");
    assert!(
        text.contains("```") && text.contains("def ") && text.contains("return"),
        "no Python code in the answer: {text}"
    );
}

#[test]
fn batched_generation_equals_one_by_one() {
    // Dense weights: padding and masking must not change a row beyond float rounding. (With
    // quantised weights candle picks different kernels for 1 and for several rows, whose
    // activation rounding differs by up to ~0.1 nats, which says nothing about padding.)
    let Some(lm) = load(Some(WeightMode::Dense {
        dtype: DType::F32,
        trainable: false,
    })) else {
        return;
    };
    let prompts = vec![
        chat_prompt(&lm, "Write a Python function that adds two numbers."),
        chat_prompt(&lm, "Hi"),
        chat_prompt(
            &lm,
            "In C, how do I open a file for reading and check for errors?",
        ),
    ];
    let params = SamplingParams {
        max_new_tokens: 24,
        stop_token_ids: lm.tokenizer.eos_token_ids(),
        ..Default::default()
    };
    let (batched, _) = generate(&lm.model, &lm.tokenizer, &prompts, &params).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let (alone, _) =
            generate(&lm.model, &lm.tokenizer, std::slice::from_ref(p), &params).unwrap();
        // Padding changes floating-point summation order slightly: greedy tokens must agree on a
        // long common prefix, and log-probs must stay close where they do.
        let a = &alone[0].token_ids;
        let b = &batched[i].token_ids;
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        assert!(
            common >= a.len().min(b.len()).min(16),
            "row {i}: {a:?} vs {b:?}"
        );
        for j in 0..common {
            let d = (alone[0].logprobs[j] - batched[i].logprobs[j]).abs();
            assert!(d < 5e-3, "row {i} token {j}: log-prob differs by {d}");
        }
    }
}

#[test]
fn sampled_logprobs_match_teacher_forced_logprobs() {
    // What PPO relies on: the log-probs reported while sampling equal those recomputed by a full
    // forward over prompt + response.
    let Some(lm) = load(Some(WeightMode::Dense {
        dtype: DType::F32,
        trainable: false,
    })) else {
        return;
    };
    let prompt = chat_prompt(&lm, "Write a shell command that lists files.");
    let params = SamplingParams {
        max_new_tokens: 20,
        temperature: 0.9,
        top_p: Some(0.95),
        seed: 3,
        ..Default::default()
    };
    let (g, _) = generate(
        &lm.model,
        &lm.tokenizer,
        std::slice::from_ref(&prompt),
        &params,
    )
    .unwrap();
    let resp = &g[0].token_ids;
    let all: Vec<u32> = prompt.iter().chain(resp).copied().collect();
    let t = Tensor::from_vec(all.clone(), (1, all.len()), &Device::Cpu).unwrap();
    let lp = token_logprobs(&lm.model, &t, prompt.len(), false)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(lp.len(), resp.len());
    for (j, (a, b)) in lp.iter().zip(&g[0].logprobs).enumerate() {
        assert!(
            (a - b).abs() < 2e-3,
            "token {j}: forward {a} vs sampling {b}"
        );
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let Some(lm) = load(None) else { return };
    let p = chat_prompt(&lm, "Name a sorting algorithm.");
    let params = SamplingParams {
        max_new_tokens: 16,
        temperature: 1.0,
        top_k: Some(40),
        seed: 11,
        ..Default::default()
    };
    let (a, _) = generate(&lm.model, &lm.tokenizer, &[p.clone(), p.clone()], &params).unwrap();
    let (b, _) = generate(&lm.model, &lm.tokenizer, &[p.clone(), p], &params).unwrap();
    assert_eq!(a[0].token_ids, b[0].token_ids);
    assert_eq!(a[1].token_ids, b[1].token_ids);
}

#[test]
fn a_saved_checkpoint_loads_as_a_hugging_face_directory() {
    let Some(lm) = load(Some(WeightMode::Dense {
        dtype: DType::F32,
        trainable: false,
    })) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    loader::save_pretrained(&lm, dir.path()).unwrap();
    assert_eq!(
        loader::detect_format(dir.path()).unwrap(),
        loader::ModelFormat::HuggingFace
    );
    let back = loader::load(
        dir.path(),
        &Device::Cpu,
        Some(WeightMode::Dense {
            dtype: DType::F32,
            trainable: false,
        }),
    )
    .unwrap();
    let text = "<|im_start|>user\nint main() { return 0; } // naïve 🙂<|im_end|>\n";
    let a = lm.tokenizer.encode(text, false).unwrap();
    assert_eq!(a, back.tokenizer.encode(text, false).unwrap());
    assert_eq!(lm.tokenizer.eos_token_ids(), back.tokenizer.eos_token_ids());
    let msgs = [ChatMessage::new("user", "hi")];
    assert_eq!(
        lm.chat.render(&msgs, true).unwrap(),
        back.chat.render(&msgs, true).unwrap()
    );
    let t = Tensor::from_vec(a.clone(), (1, a.len()), &Device::Cpu).unwrap();
    let la = lm.model.forward(&t, ForwardOpts::default(), None).unwrap();
    let lb = back
        .model
        .forward(&t, ForwardOpts::default(), None)
        .unwrap();
    let d = max_abs_diff(&la, &lb);
    assert!(d < 1e-4, "reloaded logits differ by {d}");
}

#[test]
fn rows_with_their_own_settings_stream_the_same_text_they_return() {
    use srcode_lm::generate::{generate_rows, RowSpec, SinkControl};
    let Some(lm) = load(None) else { return };
    let a = chat_prompt(&lm, "Write a C function that adds two ints.");
    let b = chat_prompt(&lm, "Say hello.");
    let greedy = SamplingParams {
        max_new_tokens: 30,
        stop: vec!["}".into()],
        stop_token_ids: lm.tokenizer.eos_token_ids(),
        ..Default::default()
    };
    let sampled = SamplingParams {
        max_new_tokens: 7,
        temperature: 0.8,
        ..Default::default()
    };
    let specs = [
        RowSpec {
            prompt: &a,
            params: &greedy,
            seed: 0,
        },
        RowSpec {
            prompt: &b,
            params: &sampled,
            seed: 5,
        },
    ];
    let mut streamed = [String::new(), String::new()];
    let mut finished = [0usize; 2];
    let (gens, _) = generate_rows(&lm.model, &lm.tokenizer, &specs, &mut |ev| {
        streamed[ev.row].push_str(ev.text_delta);
        if ev.finish.is_some() {
            finished[ev.row] += 1;
        }
        SinkControl::Continue
    })
    .unwrap();
    assert_eq!(finished, [1, 1], "each row reports its end exactly once");
    for (i, g) in gens.iter().enumerate() {
        assert_eq!(
            streamed[i], g.text,
            "row {i}: streamed deltas differ from the text"
        );
    }
    assert!(
        gens[1].token_ids.len() <= 7,
        "row 1 keeps its own token limit"
    );
    assert!(
        !gens[0].text.contains('}'),
        "row 0 stops before its stop string"
    );
    // A row alone gives the same greedy text as in the mixed batch.
    let (alone, _) = generate(&lm.model, &lm.tokenizer, std::slice::from_ref(&a), &greedy).unwrap();
    let common = alone[0]
        .token_ids
        .iter()
        .zip(&gens[0].token_ids)
        .take_while(|(x, y)| x == y)
        .count();
    assert!(
        common >= 12,
        "{:?} vs {:?}",
        alone[0].token_ids,
        gens[0].token_ids
    );

    // A sink that cancels a row ends it at once.
    let (gens, _) = generate_rows(&lm.model, &lm.tokenizer, &specs[..1], &mut |ev| {
        if ev.token > 0 && ev.row == 0 {
            SinkControl::Cancel
        } else {
            SinkControl::Continue
        }
    })
    .unwrap();
    assert_eq!(gens[0].token_ids.len(), 1);
}
