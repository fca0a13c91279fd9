#!/usr/bin/env python3
"""GPU helpers for srcode's device benchmarks (bench/gpu/run.sh); needs torch, and transformers
for the `train` baseline.

  make  --like DIR --out DIR [--hidden H --layers L --inter F --heads N --kv-heads K]
        [--dtype f32|bf16] [--seed S]
      Writes a Hugging Face Llama directory with random weights (normal, std 0.02, fixed seed)
      and the tokenizer files of --like: a model of any size for throughput measurements, which
      srcode and PyTorch then load from the same file.
  train --model DIR [--batch B] [--seq-len T] [--dtype f32|bf16] [--steps N]
      PyTorch + transformers full fine-tuning step (forward, cross-entropy, backward, grad-norm
      clip 1.0, fused AdamW) on CUDA, timed like `srcode bench train`; prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import torch


def make(a):
    cfg = json.load(open(os.path.join(a.like, "config.json")))
    for key, val in [("hidden_size", a.hidden), ("num_hidden_layers", a.layers),
                     ("intermediate_size", a.inter), ("num_attention_heads", a.heads),
                     ("num_key_value_heads", a.kv_heads)]:
        if val:
            cfg[key] = val
    cfg["head_dim"] = None
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    cfg["torch_dtype"] = "bfloat16" if a.dtype == "bf16" else "float32"
    d, f, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    kv, v = cfg.get("num_key_value_heads") or n, cfg["vocab_size"]
    hd = d // n
    g = torch.Generator(device="cuda" if torch.cuda.is_available() else "cpu").manual_seed(a.seed)
    dev = g.device

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=dev) * 0.02).to(dt).cpu()

    sd = {"model.embed_tokens.weight": rnd(v, d), "model.norm.weight": torch.ones(d, dtype=dt)}
    if not cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = rnd(v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = rnd(n * hd, d)
        sd[p + "self_attn.k_proj.weight"] = rnd(kv * hd, d)
        sd[p + "self_attn.v_proj.weight"] = rnd(kv * hd, d)
        sd[p + "self_attn.o_proj.weight"] = rnd(d, n * hd)
        sd[p + "mlp.gate_proj.weight"] = rnd(f, d)
        sd[p + "mlp.up_proj.weight"] = rnd(f, d)
        sd[p + "mlp.down_proj.weight"] = rnd(d, f)
        sd[p + "input_layernorm.weight"] = torch.ones(d, dtype=dt)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(d, dtype=dt)
    os.makedirs(a.out, exist_ok=True)
    from safetensors.torch import save_file
    save_file(sd, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if os.path.exists(os.path.join(a.like, name)):
            shutil.copy(os.path.join(a.like, name), a.out)
    params = sum(t.numel() for t in sd.values())
    print(json.dumps({"out": a.out, "params": params, "dtype": a.dtype}))


def train(a):
    from transformers import AutoConfig, AutoModelForCausalLM
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    cfg = AutoConfig.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dt, attn_implementation="sdpa")
    model = model.cuda().train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq_len + 1), generator=g).cuda()
    x, y = ids[:, :-1], ids[:, 1:]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    times = []
    for step in range(a.steps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        loss.backward()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        if step > 0:
            times.append((t1 - t0, t2 - t1, t3 - t2))
    med = lambda v: sorted(v)[len(v) // 2]
    f, b, o = (med([t[i] for t in times]) for i in range(3))
    tokens = a.batch * a.seq_len
    print(json.dumps({
        "impl": "pytorch+transformers", "torch": torch.__version__, "batch": a.batch,
        "seq_len": a.seq_len, "dtype": a.dtype, "mode": "full",
        "tokens_per_second": tokens / (f + b), "step_tokens_per_second": tokens / (f + b + o),
        "forward_seconds": f, "backward_seconds": b, "optimizer_seconds": o,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(),
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--like", required=True)
    m.add_argument("--out", required=True)
    for k in ("hidden", "layers", "inter", "heads", "kv-heads"):
        m.add_argument(f"--{k}", type=int)
    m.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    t.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    {"make": make, "train": train}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
