//! Learning on a tiny random model: gradients against finite differences, every trainable tensor
//! reached by the backward pass, loss going down under AdamW, LoRA, checkpoints.

use candle_core::{DType, Device, Tensor, Var};
use srcode_lm::model::{ForwardOpts, Llama, LoraConfig, WeightMode};
use srcode_lm::train::{self, token_logprobs, AdamW, AdamWConfig};
use srcode_lm::weights::WeightSource;
use srcode_lm::LlamaConfig;

mod common;
use common::max_abs_diff;

fn tiny(trainable: bool) -> Llama {
    Llama::random(&LlamaConfig::tiny(61), 42, trainable, &Device::Cpu).unwrap()
}

/// Rank-4 LoRA on every projection (B starts at zero).
fn attach_rank4(m: &mut Llama) {
    m.attach_lora(
        &LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        },
        1,
    )
    .unwrap();
}

fn seq() -> Tensor {
    let ids: Vec<u32> = vec![3, 17, 5, 60, 22, 9, 41, 0, 13, 7, 7, 30];
    Tensor::from_vec(ids, (1, 12), &Device::Cpu).unwrap()
}

fn loss(m: &Llama, ids: &Tensor) -> Tensor {
    token_logprobs(m, ids, 1, true)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let m = tiny(true);
    let ids = seq();
    let l = loss(&m, &ids);
    let grads = l.backward().unwrap();
    let eps = 1e-2f32;
    let mut checked = 0;
    // A few coordinates of tensors from every part of the network.
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    ] {
        let (_, var) = m.trainable().iter().find(|(n, _)| n == name).unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // The coordinates with the largest gradients (small ones drown in f32 noise).
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &i in idx.iter().take(3) {
            let mut plus = orig.clone();
            plus[i] += eps;
            var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let lp = loss(&m, &ids).to_scalar::<f32>().unwrap();
            let mut minus = orig.clone();
            minus[i] -= eps;
            var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let lm = loss(&m, &ids).to_scalar::<f32>().unwrap();
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let tol = 2e-3 + 0.05 * g[i].abs();
            assert!(
                (fd - g[i]).abs() < tol,
                "{name}[{i}]: autograd {} vs finite difference {fd}",
                g[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 30);
}

#[test]
fn every_trainable_tensor_receives_a_gradient() {
    let m = tiny(true);
    let grads = loss(&m, &seq()).backward().unwrap();
    assert!(!m.trainable().is_empty());
    for (name, var) in m.trainable() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {name}"));
        let n = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "gradient of {name} is zero");
    }
}

#[test]
fn adamw_steps_lower_the_loss_of_a_sequence() {
    let m = tiny(true);
    let ids = seq();
    let cfg = AdamWConfig {
        lr: 3e-3,
        ..Default::default()
    };
    let mut opt = AdamW::new(m.trainable(), cfg).unwrap();
    let first = loss(&m, &ids).to_scalar::<f32>().unwrap();
    let mut last = first;
    for _ in 0..8 {
        let l = loss(&m, &ids);
        last = l.to_scalar::<f32>().unwrap();
        let grads = l.backward().unwrap();
        let st = opt.step(&grads, Some(1.0)).unwrap();
        assert!(st.grad_norm > 0.0 && st.clip_scale <= 1.0);
    }
    let after = loss(&m, &ids).to_scalar::<f32>().unwrap();
    assert!(after < first * 0.8, "loss {first} -> {last} -> {after}");
}

#[test]
fn fused_adamw_matches_the_textbook_update() {
    // One parameter, two steps, hand-computed.
    let m = tiny(true);
    let (_, var) = m.trainable()[0].clone();
    let p0 = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let cfg = AdamWConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(&[("p".into(), var.clone())], cfg).unwrap();
    let ones = Tensor::ones(var.shape(), DType::F32, &Device::Cpu).unwrap();
    let l = (var.as_tensor() * &ones).unwrap().sum_all().unwrap(); // gradient 1 everywhere
    let grads = l.backward().unwrap();
    opt.step(&grads, None).unwrap();
    let p1 = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    // Step 1: m̂ = 1, v̂ = 1 → p ← p(1 − lr·wd) − lr · 1/(1 + eps)
    let want = p0 * (1.0 - 0.1 * 0.01) - 0.1 / (1.0 + 1e-8);
    assert!((p1 - want).abs() < 1e-6, "{p1} vs {want}");
}

#[test]
fn incremental_decoding_matches_the_full_forward() {
    let m = tiny(false);
    let ids = seq();
    let full = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    let mut cache = m.new_cache();
    let a = m
        .forward(
            &ids.narrow(1, 0, 7).unwrap(),
            ForwardOpts::default(),
            Some(&mut cache),
        )
        .unwrap();
    let mut parts = vec![a];
    for i in 7..12 {
        parts.push(
            m.forward(
                &ids.narrow(1, i, 1).unwrap(),
                ForwardOpts::default(),
                Some(&mut cache),
            )
            .unwrap(),
        );
    }
    let inc = Tensor::cat(&parts, 1).unwrap();
    let d = max_abs_diff(&full, &inc);
    assert!(d < 1e-4, "max difference {d}");
}

#[test]
fn the_cache_grows_past_its_chunk_and_survives_dropping_rows() {
    // 150 positions cross the cache's first growth (128); a row is dropped half-way, as the
    // generator does when a sequence finishes.
    let m = tiny(false);
    let n = 150;
    let ids: Vec<u32> = (0..2 * n).map(|i| (i * 7 % 61) as u32).collect();
    let ids = Tensor::from_vec(ids, (2, n), &Device::Cpu).unwrap();
    let full = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    let mut cache = m.new_cache();
    let mut row1 = vec![m
        .forward(
            &ids.narrow(1, 0, 20).unwrap(),
            ForwardOpts::default(),
            Some(&mut cache),
        )
        .unwrap()
        .get(1)
        .unwrap()];
    let mut batch = ids.clone();
    for i in 20..n {
        if i == 100 {
            cache.retain_rows(&[1]).unwrap();
            batch = ids.narrow(0, 1, 1).unwrap();
        }
        let out = m
            .forward(
                &batch.narrow(1, i, 1).unwrap(),
                ForwardOpts::default(),
                Some(&mut cache),
            )
            .unwrap();
        let last = out.dim(0).unwrap() - 1;
        row1.push(out.get(last).unwrap());
    }
    let inc = Tensor::cat(&row1, 0).unwrap();
    let d = max_abs_diff(&full.get(1).unwrap(), &inc);
    assert!(d < 1e-4, "max difference {d}");
}

#[test]
fn left_padding_does_not_change_a_row() {
    let m = tiny(false);
    let short: Vec<u32> = vec![4, 8, 15, 16];
    let alone = m
        .forward(
            &Tensor::from_vec(short.clone(), (1, 4), &Device::Cpu).unwrap(),
            ForwardOpts::default(),
            None,
        )
        .unwrap();
    let mut padded = vec![0u32, 0, 0];
    padded.extend(&short);
    let other: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7];
    let batch = Tensor::from_vec([padded, other].concat(), (2, 7), &Device::Cpu).unwrap();
    let opts = ForwardOpts {
        pad_left: &[3, 0],
        grad: false,
    };
    let out = m.forward(&batch, opts, None).unwrap();
    let row = out.get(0).unwrap().narrow(0, 3, 4).unwrap();
    let d = max_abs_diff(&row, &alone.get(0).unwrap());
    assert!(d < 1e-4, "max difference {d}");
}

#[test]
fn a_left_padded_row_decodes_with_the_cache_as_it_does_alone() {
    // Decoding one position at a time takes the fused attention kernel, which skips each row's
    // padding itself; the row must match its own unpadded full forward.
    let m = tiny(false);
    let short: Vec<u32> = vec![4, 8, 15, 16, 23, 42, 9, 1];
    let alone = m
        .forward(
            &Tensor::from_vec(short.clone(), (1, 8), &Device::Cpu).unwrap(),
            ForwardOpts::default(),
            None,
        )
        .unwrap();
    let other: Vec<u32> = (0..11).map(|i| (i * 5 % 61) as u32).collect();
    let mut padded = vec![0u32; 3];
    padded.extend(&short);
    let batch = Tensor::from_vec([padded, other].concat(), (2, 11), &Device::Cpu).unwrap();
    let opts = || ForwardOpts {
        pad_left: &[3, 0],
        grad: false,
    };
    let mut cache = m.new_cache();
    let first = m
        .forward(&batch.narrow(1, 0, 6).unwrap(), opts(), Some(&mut cache))
        .unwrap();
    let mut rows = vec![first.get(0).unwrap().narrow(0, 3, 3).unwrap()];
    for i in 6..11 {
        let out = m
            .forward(&batch.narrow(1, i, 1).unwrap(), opts(), Some(&mut cache))
            .unwrap();
        rows.push(out.get(0).unwrap());
    }
    let inc = Tensor::cat(&rows, 0).unwrap();
    let d = max_abs_diff(&inc, &alone.get(0).unwrap());
    assert!(d < 1e-4, "max difference {d}");
}

#[test]
fn grad_and_inference_kernels_agree() {
    let m = tiny(true);
    let ids = seq();
    let a = m
        .forward(
            &ids,
            ForwardOpts {
                pad_left: &[],
                grad: true,
            },
            None,
        )
        .unwrap();
    let b = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 1e-4, "max difference {d}");
}

#[test]
fn lora_starts_at_the_base_model_and_trains_only_adapters() {
    let mut m = tiny(false);
    let ids = seq();
    let before = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    attach_rank4(&mut m);
    assert_eq!(m.trainable().len(), 2 * 7 * 2);
    let after = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    let d = max_abs_diff(&before, &after);
    assert!(d < 1e-6);
    let mut opt = AdamW::new(
        m.trainable(),
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let l0 = loss(&m, &ids).to_scalar::<f32>().unwrap();
    for _ in 0..6 {
        let g = loss(&m, &ids).backward().unwrap();
        opt.step(&g, Some(1.0)).unwrap();
    }
    let l1 = loss(&m, &ids).to_scalar::<f32>().unwrap();
    assert!(l1 < l0, "LoRA loss {l0} -> {l1}");
    // Adapters round-trip through the PEFT layout.
    let dir = tempfile::tempdir().unwrap();
    train::save_checkpoint(&m, dir.path(), Some("tiny")).unwrap();
    let lcfg = train::read_adapter_config(dir.path()).unwrap();
    assert_eq!(lcfg.rank, 4);
    let mut m2 = tiny(false);
    m2.attach_lora(&lcfg, 99).unwrap();
    train::load_adapter(&m2, dir.path()).unwrap();
    let a = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    let b = m2.forward(&ids, ForwardOpts::default(), None).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 1e-6, "reloaded adapter differs by {d}");
    // Merging folds the trained adapter into the weights: same outputs, no adapters left, and
    // the merged model differs from the base (the adapter had learnt something).
    m2.merge_lora().unwrap();
    assert!(m2.trainable().is_empty() && m2.lora_config().is_none());
    let merged = m2.forward(&ids, ForwardOpts::default(), None).unwrap();
    let d = max_abs_diff(&a, &merged);
    assert!(d < 1e-4, "merged model differs from the adapted one by {d}");
    assert!(max_abs_diff(&before, &merged) > 1e-3);
    assert!(m2.merge_lora().is_err(), "merging twice must be refused");
    let names: Vec<String> =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(names
        .contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
}

#[test]
fn full_checkpoints_round_trip_and_resume_the_optimiser() {
    let m = tiny(true);
    let ids = seq();
    let mut opt = AdamW::new(
        m.trainable(),
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let g = loss(&m, &ids).backward().unwrap();
    opt.step(&g, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    train::save_checkpoint(&m, dir.path(), None).unwrap();
    let state = opt.state_tensors().unwrap();
    let cfg = LlamaConfig::from_hf_json(&dir.path().join("config.json")).unwrap();
    let src = WeightSource::open_safetensors_dir(dir.path()).unwrap();
    let m2 = Llama::load(
        &src,
        &cfg,
        WeightMode::Dense {
            dtype: DType::F32,
            trainable: true,
        },
        &Device::Cpu,
    )
    .unwrap();
    let a = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    let b = m2.forward(&ids, ForwardOpts::default(), None).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 1e-6);
    // The resumed optimiser takes the same next step as the original.
    let mut opt2 = AdamW::new(
        m2.trainable(),
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    opt2.load_state(&state).unwrap();
    assert_eq!(opt2.steps(), 1);
    let g1 = loss(&m, &ids).backward().unwrap();
    opt.step(&g1, None).unwrap();
    let g2 = loss(&m2, &ids).backward().unwrap();
    opt2.step(&g2, None).unwrap();
    let a = m.forward(&ids, ForwardOpts::default(), None).unwrap();
    let b = m2.forward(&ids, ForwardOpts::default(), None).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 1e-5, "resumed training diverged by {d}");
}

#[test]
fn bad_inputs_give_errors_not_panics() {
    let m = tiny(true);
    let ids = seq();
    assert!(token_logprobs(&m, &ids, 0, false).is_err());
    assert!(token_logprobs(&m, &ids, 12, false).is_err());
    let oov = Tensor::from_vec(vec![1u32, 500], (1, 2), &Device::Cpu).unwrap();
    assert!(m.forward(&oov, ForwardOpts::default(), None).is_err());
    let mut m2 = tiny(false);
    assert!(m2
        .attach_lora(
            &LoraConfig {
                rank: 0,
                alpha: 1.0,
                ..Default::default()
            },
            0
        )
        .is_err());
    assert!(m2
        .attach_lora(
            &LoraConfig {
                rank: 2,
                alpha: 1.0,
                targets: vec!["nope".into()]
            },
            0
        )
        .is_err());
    let dir = tempfile::tempdir().unwrap();
    assert!(WeightSource::open_safetensors_dir(dir.path()).is_err());
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"gpt2\"}").unwrap();
    assert!(LlamaConfig::from_hf_json(&dir.path().join("config.json")).is_err());
}

#[test]
fn adamw_tensor_path_matches_the_fused_update_and_saves_its_state() {
    // Non-f32 (and GPU) parameters take the tensor-op path with its moments kept on the
    // parameter's device; it must agree with the fused CPU pass and save/restore the same state.
    let init: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
    let fused = Var::from_vec(init.clone(), (3, 4), &Device::Cpu).unwrap();
    let wide = Var::from_vec(
        init.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        (3, 4),
        &Device::Cpu,
    )
    .unwrap();
    let cfg = AdamWConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut a = AdamW::new(&[("p".into(), fused.clone())], cfg.clone()).unwrap();
    let mut b = AdamW::new(&[("p".into(), wide.clone())], cfg.clone()).unwrap();
    for step in 0..3 {
        let w: Vec<f32> = (0..12).map(|i| ((i + step) as f32 * 0.9).cos()).collect();
        let wf = Tensor::from_vec(w.clone(), (3, 4), &Device::Cpu).unwrap();
        let la = (fused.as_tensor() * &wf)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let wd = wf.to_dtype(DType::F64).unwrap();
        let lb = (wide.as_tensor() * &wd)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        a.step(&la.backward().unwrap(), Some(0.5)).unwrap();
        b.step(&lb.backward().unwrap(), Some(0.5)).unwrap();
    }
    let pa = fused
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let pb = wide
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for (x, y) in pa.iter().zip(&pb) {
        assert!((*x as f64 - y).abs() < 1e-5, "{x} vs {y}");
    }
    let (sa, sb) = (a.state_tensors().unwrap(), b.state_tensors().unwrap());
    for key in ["p.exp_avg", "p.exp_avg_sq"] {
        let x = sa[key].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = sb[key].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x.iter().any(|v| *v != 0.0), "{key} was never updated");
        for (x, y) in x.iter().zip(&y) {
            assert!((x - y).abs() < 1e-5, "{key}: {x} vs {y}");
        }
    }
    let mut c = AdamW::new(&[("p".into(), wide.clone())], cfg).unwrap();
    c.load_state(&sb).unwrap();
    assert_eq!(c.steps(), 3);
    let restored = c.state_tensors().unwrap();
    let y = restored["p.exp_avg_sq"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let z = sb["p.exp_avg_sq"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(y, z);
}

#[test]
fn a_frozen_weight_matmul_gives_the_input_gradient_and_none_to_the_weight() {
    let xs: Vec<f32> = (0..15).map(|i| (i as f32 * 0.61).sin()).collect();
    let ws: Vec<f32> = (0..20).map(|i| (i as f32 * 0.23).cos()).collect();
    let x = Var::from_vec(xs, (3, 5), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(ws, (4, 5), &Device::Cpu).unwrap();
    let g = Tensor::from_vec(
        (0..12).map(|i| i as f32 - 5.0).collect(),
        (3, 4),
        &Device::Cpu,
    )
    .unwrap();
    let fast = srcode_lm::ops::matmul_frozen_wt(x.as_tensor(), &w).unwrap();
    let plain = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
    assert!(max_abs_diff(&fast, &plain) < 1e-6);
    let gf = (&fast * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let gp = (&plain * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (a, b) = (
        gf.get(x.as_tensor()).unwrap(),
        gp.get(x.as_tensor()).unwrap(),
    );
    assert!(max_abs_diff(a, b) < 1e-5);
    assert!(gf.get(&w).is_none(), "the frozen weight got a gradient");
}

fn log_softmax_last(t: &Tensor) -> Tensor {
    candle_nn::ops::log_softmax(t, candle_core::D::Minus1).unwrap()
}

/// Deterministic, non-zero values for a tensor of `dims`.
fn wave(dims: &[usize], scale: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * scale).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

#[test]
fn packed_copy_folds_the_adapter_and_is_a_snapshot() {
    use srcode_lm::qmatmul::PackedKind;
    let ids = seq();
    let base = log_softmax_last(
        &tiny(false)
            .forward(&ids, ForwardOpts::default(), None)
            .unwrap(),
    );
    let mut m = tiny(false);
    attach_rank4(&mut m);
    for (name, v) in m.trainable() {
        if name.contains("lora_B") {
            v.set(&wave(v.dims(), 0.3)).unwrap();
        }
    }
    let adapted = log_softmax_last(&m.forward(&ids, ForwardOpts::default(), None).unwrap());
    let q = m.packed_copy(PackedKind::Q8_0).unwrap();
    assert!(q.trainable().is_empty() && q.lora_config().is_none());
    assert_eq!(
        q.weight_mode(),
        WeightMode::Quantized(candle_core::quantized::GgmlDType::Q8_0)
    );
    let packed = log_softmax_last(&q.forward(&ids, ForwardOpts::default(), None).unwrap());
    let err = max_abs_diff(&adapted, &packed);
    let moved = max_abs_diff(&adapted, &base);
    // The same quantisation of the model without an adapter sets the scale of rounding error
    // (random tiny weights round coarsely).
    let plain = tiny(false).packed_copy(PackedKind::Q8_0).unwrap();
    let plain_err = max_abs_diff(
        &log_softmax_last(&plain.forward(&ids, ForwardOpts::default(), None).unwrap()),
        &base,
    );
    assert!(
        err < 3.0 * plain_err + 1e-3 && err < 0.3,
        "the Q8_0 copy is {err} from the adapted model (rounding alone: {plain_err})"
    );
    assert!(
        moved > 10.0 * err,
        "the adapter moved the model by {moved}, the copy's error is {err}: not folded in?"
    );
    // Incremental decoding on the copy matches its own full forward.
    let mut cache = q.new_cache();
    let (_, n) = ids.dims2().unwrap();
    let mut last = None;
    for t in 0..n {
        let one = ids.narrow(1, t, 1).unwrap();
        last = Some(
            q.forward(&one, ForwardOpts::default(), Some(&mut cache))
                .unwrap(),
        );
    }
    let step = log_softmax_last(&last.unwrap());
    let full_last = packed.narrow(1, n - 1, 1).unwrap();
    let d = max_abs_diff(&step, &full_last);
    assert!(
        d < 1e-3,
        "cached decode differs from the full forward by {d}"
    );
    // A snapshot: training the adapter afterwards does not reach the copy.
    for (_, v) in m.trainable() {
        v.set(&v.as_tensor().zeros_like().unwrap()).unwrap();
    }
    let again = log_softmax_last(&q.forward(&ids, ForwardOpts::default(), None).unwrap());
    assert_eq!(max_abs_diff(&packed, &again), 0.0);
    // Full fine-tuning: the embedding `Var` is copied out, not shared.
    let full = tiny(true);
    let qf = full.packed_copy(PackedKind::Q8_0).unwrap();
    let f0 = qf.forward(&ids, ForwardOpts::default(), None).unwrap();
    for (_, v) in full.trainable() {
        v.set(&wave(v.dims(), 0.1)).unwrap();
    }
    let f1 = qf.forward(&ids, ForwardOpts::default(), None).unwrap();
    assert_eq!(max_abs_diff(&f0, &f1), 0.0);
}
