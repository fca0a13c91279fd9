#!/usr/bin/env python3
"""llama.cpp (via llama-cpp-python's low-level C API) greedy-decode baseline.

  python bench/decode_llamacpp.py --model GGUF --threads 2 --new-tokens 128 \
      --batch 1 --prompt-file bench/prompt.txt --json

Loads the GGUF once (load time excluded), then per run:
  * clears the KV cache,
  * prefill: one llama_decode() over the prompt for every sequence
    (batch B = B copies of the prompt, seq ids 0..B-1, one llama_batch),
  * decode: new_tokens-1 further llama_decode() calls of B tokens each (one
    token per sequence), greedy argmax over the logits with end-of-generation
    tokens masked out, so exactly new_tokens tokens are generated per sequence
    (the first comes from the prefill logits).
One warm-up run, then the median of --runs (3) timed runs.

Metrics (same keys as `srcode bench decode --json`):
  prefill_tokens_per_second   = B * prompt_tokens / prefill_seconds
  decode_tokens_per_second    = (new_tokens-1) / decode_seconds   (per sequence)
  aggregate_tokens_per_second = B * (new_tokens-1) / decode_seconds
The argmax runs in numpy on llama.cpp's logits buffer (zero-copy); its cost is
included in decode_seconds (~tens of microseconds per token).

llama.cpp's own counters (llama_perf_context) are reported too; note that
llama.cpp files any llama_decode() with more than one token under "prompt eval",
so for B > 1 the decode steps show up in p_eval, not eval.

--reference PATH: instead of benchmarking, tokenise the prompt, run the prefill
with logits for every prompt position, write {prompt_tokens, first_token_id,
last_logits} as JSON to PATH and all logits to PATH.logits.npy (used by
train_torch.py to check the PyTorch model against llama.cpp).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=common.default_model_path(), help="GGUF file (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=1, help="number of sequences decoded together")
    p.add_argument("--prompt-file", default=common.DEFAULT_PROMPT_FILE)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto",
                   help="llama.cpp flash-attention setting (default: llama.cpp's own default, auto)")
    p.add_argument("--reference", metavar="PATH", help="write prompt tokens + first-token logits as JSON and exit")
    p.add_argument("--verbose", action="store_true", help="keep llama.cpp's log output")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p.parse_args()


args = parse_args()
common.set_thread_env(args.threads)

import numpy as np  # noqa: E402
import llama_cpp as L  # noqa: E402

_LOG_CB = None


def quiet_logs():
    global _LOG_CB
    cbtype = getattr(L, "llama_log_callback", None)
    if cbtype is None:
        return
    _LOG_CB = cbtype(lambda level, text, user: None)  # keep a reference alive
    L.llama_log_set(_LOG_CB, ctypes.c_void_p(0))


class Engine:
    def __init__(self, model_path: str, threads: int, n_ctx: int, n_batch: int, n_seq_max: int, flash_attn: str):
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        t0 = time.perf_counter()
        self.model = L.llama_model_load_from_file(model_path.encode(), mp)
        if not self.model:
            sys.exit(f"llama.cpp could not load {model_path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = min(n_batch, 512)
        cp.n_seq_max = n_seq_max
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.no_perf = False
        cp.flash_attn_type = {"auto": getattr(L, "LLAMA_FLASH_ATTN_TYPE_AUTO", -1),
                              "on": getattr(L, "LLAMA_FLASH_ATTN_TYPE_ENABLED", 1),
                              "off": getattr(L, "LLAMA_FLASH_ATTN_TYPE_DISABLED", 0)}[flash_attn]
        self.cparams = {k: getattr(cp, k) for k in ("n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_threads",
                                                     "n_threads_batch", "flash_attn_type", "kv_unified")}
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            sys.exit("llama.cpp could not create a context")
        self.load_seconds = time.perf_counter() - t0
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.eog = np.array([t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)], dtype=np.int64)

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (L.llama_token * cap)()
        # add_special=True honours the GGUF's add_bos flag (false for SmolLM2); parse_special=True
        # turns <|im_start|>/<|im_end|> into their special token ids.
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, cap, True, True)
        if n < 0:
            sys.exit("tokenisation failed")
        return list(buf[:n])

    def piece(self, tok: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def clear(self):
        if hasattr(L, "llama_memory_clear"):
            L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        elif hasattr(L, "llama_kv_self_clear"):
            L.llama_kv_self_clear(self.ctx)
        else:
            L.llama_kv_cache_clear(self.ctx)

    def fill(self, entries):
        """entries: list of (token, pos, seq_id, want_logits)."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, out) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if out else 0

    def decode(self):
        rc = L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            sys.exit(f"llama_decode failed: {rc}")
        L.llama_synchronize(self.ctx)

    def logits(self, i: int) -> np.ndarray:
        ptr = L.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def greedy(self, i: int) -> int:
        lg = self.logits(i)
        t = int(lg.argmax())
        if self.eog.size and t in self.eog:  # never stop: mask end-of-generation tokens
            lg = lg.copy()
            lg[self.eog] = -np.inf
            t = int(lg.argmax())
        return t

    def perf(self):
        d = L.llama_perf_context(self.ctx)
        return {"t_p_eval_ms": d.t_p_eval_ms, "n_p_eval": d.n_p_eval, "t_eval_ms": d.t_eval_ms, "n_eval": d.n_eval}

    def run(self, prompt: list[int], B: int, new_tokens: int):
        P = len(prompt)
        self.clear()
        L.llama_perf_context_reset(self.ctx)
        self.fill([(t, j, s, j == P - 1) for s in range(B) for j, t in enumerate(prompt)])
        t0 = time.perf_counter()
        self.decode()
        t1 = time.perf_counter()
        first_unmasked = int(self.logits((0 + 1) * P - 1).argmax())
        nxt = [self.greedy(s * P + P - 1) for s in range(B)]
        out = [[t] for t in nxt]
        t2 = time.perf_counter()
        for step in range(new_tokens - 1):
            self.fill([(nxt[s], P + step, s, True) for s in range(B)])
            self.decode()
            nxt = [self.greedy(s) for s in range(B)]
            for s in range(B):
                out[s].append(nxt[s])
        t3 = time.perf_counter()
        return {"prefill_seconds": t1 - t0, "decode_seconds": t3 - t2, "tokens": out,
                "first_token_unmasked": first_unmasked, "perf": self.perf()}


def main():
    common.require_file(args.model, "model file")
    if not args.verbose:
        quiet_logs()
    prompt_text = common.read_prompt(args.prompt_file)
    B, N = args.batch, args.new_tokens
    if args.reference:
        B, N = 1, 1
    if N < 1 or B < 1:
        sys.exit("--new-tokens and --batch must be >= 1")

    # Size the context from a first tokenisation with a throwaway vocab-only estimate:
    # prompt tokens <= bytes, so bytes + new tokens per sequence is always enough.
    per_seq = len(prompt_text.encode()) + N + 16
    n_ctx = ((B * per_seq + 255) // 256) * 256
    n_batch = max(512, B * len(prompt_text.encode()))
    eng = Engine(args.model, args.threads, n_ctx, n_batch, B, args.flash_attn)
    prompt = eng.tokenize(prompt_text)

    if args.reference:
        # Prefill with logits for every prompt position; first greedy token = argmax at the last one.
        P = len(prompt)
        eng.clear()
        eng.fill([(t, j, 0, True) for j, t in enumerate(prompt)])
        eng.decode()
        all_logits = np.stack([eng.logits(j).copy() for j in range(P)])
        first = int(all_logits[-1].argmax())
        np.save(args.reference + ".logits.npy", all_logits)
        ref = {"prompt_tokens": prompt, "first_token_id": first, "first_token_piece": eng.piece(first),
               "logits_file": args.reference + ".logits.npy", "last_logits": [float(x) for x in all_logits[-1]]}
        with open(args.reference, "w") as f:
            json.dump(ref, f)
        return

    for _ in range(args.warmup):
        eng.run(prompt, B, N)
    runs = [eng.run(prompt, B, N) for _ in range(args.runs)]
    P = len(prompt)
    pre = common.median([r["prefill_seconds"] for r in runs])
    dec = common.median([r["decode_seconds"] for r in runs])
    last = runs[-1]
    seq0 = last["tokens"][0]
    same = [sum(1 for a, b in zip(seq0, s) if a == b) for s in last["tokens"]]
    n_dec = N - 1
    res = {
        "batch": B,
        "prompt_tokens": P,
        "new_tokens": N,
        "prefill_tokens_per_second": B * P / pre,
        "decode_tokens_per_second": (n_dec / dec) if n_dec else None,
        "aggregate_tokens_per_second": (B * n_dec / dec) if n_dec else None,
        "prefill_seconds": pre,
        "decode_seconds": dec,
        "runs": args.runs,
        "threads": args.threads,
        "first_token_id": last["first_token_unmasked"],
        "first_token_piece": eng.piece(last["first_token_unmasked"]),
        "generated_token_ids": seq0,
        "generated_text": "".join(eng.piece(t) for t in seq0),
        "sequences_matching_seq0_tokens": same,
        "llama_perf_last_run": last["perf"],
        "llama_perf_tokens_per_second": {
            "p_eval": (1000 * last["perf"]["n_p_eval"] / last["perf"]["t_p_eval_ms"]) if last["perf"]["t_p_eval_ms"] else None,
            "eval": (1000 * last["perf"]["n_eval"] / last["perf"]["t_eval_ms"]) if last["perf"]["t_eval_ms"] else None,
        },
        "all_prefill_seconds": [r["prefill_seconds"] for r in runs],
        "all_decode_seconds": [r["decode_seconds"] for r in runs],
        "load_seconds": eng.load_seconds,
        "context_params": eng.cparams,
        "llama_cpp_python_version": getattr(L, "__version__", "?"),
        "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
    }
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
