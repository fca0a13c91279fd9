#!/usr/bin/env python3
"""Run srcode's benchmarks and the baselines serially and write bench/out/results.md.

  bench/.venv/bin/python bench/run.py                      # every comparison: decode (batch 1 and 8),
                                                           # train, scan, reward, serve
  bench/.venv/bin/python bench/run.py --only scan
  bench/.venv/bin/python bench/run.py --only decode --batches 1
  bench/.venv/bin/python bench/run.py --only train --threads 2

srcode side   : target/release/srcode bench decode|train ... --json
baseline side : bench/decode_llamacpp.py (llama.cpp), bench/train_torch.py (PyTorch)

Everything runs one process at a time (candle's and OpenMP's thread pools spin-wait,
so two benchmarks at once would measure each other). Every process gets the same
thread count through RAYON_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS and the
scripts' --threads. If the srcode binary is missing or a subcommand fails, its
column says "n/a (reason)" and the baseline still runs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

REPO = os.path.dirname(common.BENCH_DIR)


PARTS = ["decode", "train", "scan", "reward", "serve"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=common.default_model_path(), help="GGUF file (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=PARTS, help="run only this part")
    p.add_argument("--batches", default="1,8", help="decode batch sizes, comma-separated (default 1,8)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompt-file", default=os.path.join("bench", "prompt.txt"))
    p.add_argument("--srcode", default=os.path.join(REPO, "target", "release", "srcode"), help="srcode binary")
    venv_py = os.path.join(common.BENCH_DIR, ".venv", "bin", "python")
    p.add_argument("--python", default=venv_py if os.path.exists(venv_py) else sys.executable,
                   help="interpreter with the baseline packages (default: bench/.venv/bin/python, made by "
                        "bench/setup.sh, else this one)")
    p.add_argument("--torch-adamw", choices=["default", "foreach", "fused"], default="default",
                   help="AdamW implementation for the PyTorch baseline (train_torch.py --adamw)")
    p.add_argument("--skip-srcode", action="store_true")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per command")
    p.add_argument("--out", default=os.path.join(common.BENCH_DIR, "out"))
    p.add_argument("--wait-idle", type=int, default=0, metavar="SECONDS",
                   help="before each command wait (up to SECONDS) until the CPUs are >= 90%% idle over 3 s")
    return p.parse_args()


def thread_env(n: int) -> dict:
    env = dict(os.environ)
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(n)
    return env


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_idle_fraction(window: float = 3.0) -> float:
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    i0, t0 = snap()
    time.sleep(window)
    i1, t1 = snap()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit: int) -> str:
    """Wait until the machine is (nearly) idle; returns a note for the log."""
    if limit <= 0:
        return ""
    deadline = time.time() + limit
    while True:
        idle = cpu_idle_fraction()
        if idle >= 0.9:
            return f"idle {idle:.0%}"
        if time.time() > deadline:
            common.log(f"warning: machine still busy after {limit}s (idle {idle:.0%}); running anyway")
            return f"BUSY: idle only {idle:.0%}"
        common.log(f"waiting for an idle machine (idle {idle:.0%}) ...")
        time.sleep(10)


WAIT_IDLE = 0
NOTES = []


def run_json(cmd: list[str], env: dict, timeout: int, log_path: str):
    """Run cmd; return (parsed JSON object from its stdout, None) or (None, reason)."""
    note = wait_idle(WAIT_IDLE)
    if note:
        NOTES.append(f"{os.path.basename(log_path)}: {note} before start, load avg {loadavg()}")
    common.log(f"$ {shlex.join(cmd)}    [load avg {loadavg()}]")
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        return None, f"cannot run: {e.strerror}"
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout}s"
    with open(log_path, "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n# exit {r.returncode}\n# --- stdout\n{r.stdout}\n# --- stderr\n{r.stderr}")
    obj = None
    for line in reversed(r.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no stderr"])[-1][:200]
        return None, f"exit {r.returncode}: {tail}"
    if obj is None:
        return None, "no JSON object on stdout"
    return obj, None


def srcode_run(a, sub: list[str], name: str):
    if a.skip_srcode:
        return None, "skipped (--skip-srcode)"
    if not os.path.isfile(a.srcode):
        rel = os.path.relpath(a.srcode, REPO)
        return None, f"{rel} not found: cargo build --release -p srcode"
    cmd = [a.srcode, "bench", *sub, "--json"]
    return run_json(cmd, thread_env(a.threads), a.timeout, os.path.join(a.out, f"{name}.srcode.log"))


def baseline_run(a, script: str, extra: list[str], name: str):
    if a.skip_baseline:
        return None, "skipped (--skip-baseline)"
    cmd = [a.python, os.path.join("bench", script), "--model", a.model, "--threads", str(a.threads), *extra, "--json"]
    return run_json(cmd, thread_env(a.threads), a.timeout, os.path.join(a.out, f"{name}.baseline.log"))


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "rate":
        return f"{v:,.1f}"
    if kind == "sec":
        return f"{v:.3f}"
    if kind == "bytes":
        return f"{v / 2**20:,.0f} MiB"
    return str(v)


def table(rows, s_obj, s_err, b_obj, b_err):
    """rows: (label, key, kind, higher_is_better)."""
    out = ["| metric | srcode | baseline | ratio srcode/baseline |", "|---|---:|---:|---:|"]
    for n, (label, key, kind, hib) in enumerate(rows):
        sv = s_obj.get(key) if s_obj else None
        bv = b_obj.get(key) if b_obj else None
        # The reason for an n/a goes in the first row only.
        scell = fmt(sv, kind) if s_obj else ("n/a" if n else f"n/a ({s_err})")
        bcell = fmt(bv, kind) if b_obj else ("n/a" if n else f"n/a ({b_err})")
        if isinstance(sv, (int, float)) and isinstance(bv, (int, float)) and bv:
            ratio = f"{sv / bv:.2f}× ({'higher' if hib else 'lower'} is better)"
        else:
            ratio = "–"
        out.append(f"| {label} | {scell} | {bcell} | {ratio} |")
    return "\n".join(out)


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return (rev or "?") + (" (dirty)" if dirty else "")
    except OSError:
        return "?"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    global WAIT_IDLE
    a = parse_args()
    WAIT_IDLE = a.wait_idle
    a.model = os.path.abspath(a.model)
    os.makedirs(a.out, exist_ok=True)
    common.require_file(a.model, "model file")
    raw = {}
    md = [
        "# srcode vs baselines",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- host: {cpu_name()}, {os.cpu_count()} logical CPUs; load average at start {loadavg()}",
        f"- srcode: `{os.path.relpath(a.srcode, REPO)}` at commit {git_rev()}",
        f"- model: `{a.model}`",
        f"- threads: {a.threads} (RAYON_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS and --threads); "
        "every benchmark ran alone, one after the other",
        "",
    ]

    if a.only in (None, "decode"):
        md += ["## Greedy decode (baseline: llama.cpp via llama-cpp-python, same GGUF)", "",
               f"Prompt `{a.prompt_file}`, {a.new_tokens} new tokens per sequence, median of 3 runs after 1 warm-up. "
               "decode tok/s is per sequence; aggregate = batch × per-sequence.", ""]
        for B in [int(x) for x in a.batches.split(",") if x.strip()]:
            sub = ["decode", "--model", a.model, "--prompt-file", a.prompt_file,
                   "--new-tokens", str(a.new_tokens), "--batch", str(B)]
            s_obj, s_err = srcode_run(a, sub, f"decode_b{B}")
            b_obj, b_err = baseline_run(a, "decode_llamacpp.py", ["--new-tokens", str(a.new_tokens), "--batch", str(B),
                                                                  "--prompt-file", a.prompt_file], f"decode_b{B}")
            raw[f"decode_b{B}"] = {"srcode": s_obj or s_err, "baseline": b_obj or b_err}
            md += [f"### batch {B}", ""]
            md.append(table([
                ("prompt tokens", "prompt_tokens", "int", True),
                ("prefill tok/s", "prefill_tokens_per_second", "rate", True),
                ("decode tok/s (per sequence)", "decode_tokens_per_second", "rate", True),
                ("aggregate decode tok/s", "aggregate_tokens_per_second", "rate", True),
            ], s_obj, s_err, b_obj, b_err))
            if b_obj:
                md += ["", f"llama.cpp: first greedy token id {b_obj.get('first_token_id')} "
                       f"({json.dumps(b_obj.get('first_token_piece'))}); its own counters for the last run: "
                       f"{json.dumps(b_obj.get('llama_perf_last_run'))}"]
            md.append("")

    if a.only in (None, "train"):
        md += ["## Full fine-tuning step (baseline: PyTorch eager, f32, AdamW)", "",
               f"One sequence of {a.seq_len} tokens, median of {a.steps} steps after 1 warm-up. "
               "tok/s = seq_len / (forward + backward).", ""]
        sub = ["train", "--model", a.model, "--seq-len", str(a.seq_len), "--steps", str(a.steps)]
        s_obj, s_err = srcode_run(a, sub, "train")
        b_obj, b_err = baseline_run(a, "train_torch.py", ["--seq-len", str(a.seq_len), "--steps", str(a.steps),
                                                          "--prompt-file", a.prompt_file,
                                                          "--adamw", a.torch_adamw], "train")
        raw["train"] = {"srcode": s_obj or s_err, "baseline": b_obj or b_err}
        md.append(table([
            ("tok/s (forward+backward)", "tokens_per_second", "rate", True),
            ("forward s", "forward_seconds", "sec", False),
            ("backward s", "backward_seconds", "sec", False),
            ("optimizer step s", "optimizer_seconds", "sec", False),
            ("peak RSS", "peak_rss_bytes", "bytes", False),
        ], s_obj, s_err, b_obj, b_err))
        if b_obj:
            md += ["", f"PyTorch {b_obj.get('torch_version')}, AdamW implementation: {b_obj.get('adamw')}, "
                   f"training tokens: {b_obj.get('tokens')}, losses {[round(x, 3) for x in b_obj.get('losses', [])]}.",
                   f"Check against llama.cpp: {json.dumps(b_obj.get('verify'))}"]
        md.append("")

    # The other comparisons have their own scripts; their Markdown goes in as they print it.
    semgrep = os.path.join(os.path.dirname(a.python), "semgrep")
    others = {
        "scan": ("Scan (baseline: semgrep, the same rules translated)",
                 [a.python, os.path.join(common.BENCH_DIR, "scan_vs_semgrep.py"), "--srcode", a.srcode,
                  "--threads", str(a.threads)]
                 + (["--semgrep", semgrep] if os.path.exists(semgrep) else [])),
        "reward": ("Token-level reward latency (one 256-token completion, analyser + alignment + repair pattern)",
                   ["cargo", "bench", "-q", "-p", "srcode-reward", "--bench", "reward"]),
        "serve": ("Reward service under load (`srcode serve --rewards-only`, wrk)",
                  [a.python, os.path.join(common.BENCH_DIR, "serve_load.py"), "--srcode", a.srcode]),
    }
    for part, (title, cmd) in others.items():
        if a.only not in (None, part):
            continue
        md += [f"## {title}", "", f"`{' '.join(shlex.quote(c) for c in cmd)}`", ""]
        if WAIT_IDLE:
            NOTES.append(f"{part}: {wait_idle(WAIT_IDLE)}")
        log = os.path.join(a.out, f"{part}.log")
        try:
            r = subprocess.run(cmd, cwd=REPO, env=thread_env(a.threads), capture_output=True, text=True,
                               timeout=a.timeout)
            with open(log, "w") as f:
                f.write(r.stdout + "\n--- stderr ---\n" + r.stderr)
            text = (r.stdout.strip() or r.stderr.strip()).splitlines()
            if r.returncode != 0 or any(t.startswith("SKIP") for t in text):
                reason = next((t for t in text if t.startswith("SKIP")), f"exit code {r.returncode}")
                md += [f"n/a ({reason}; see `{os.path.basename(log)}`)", ""]
            else:
                md += text + [""]
            raw[part] = {"stdout": r.stdout, "returncode": r.returncode}
        except subprocess.TimeoutExpired:
            md += [f"n/a (timed out after {a.timeout} s)", ""]
            raw[part] = {"error": "timeout"}

    if NOTES:
        md += ["CPU idleness before each command:", ""] + [f"- {n}" for n in NOTES] + [""]
    md += [f"Load average at end: {loadavg()}. Raw JSON: `results.json`; full logs: `*.log` in this folder.", ""]
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(raw, f, indent=1)
    path = os.path.join(a.out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    print(f"wrote {os.path.relpath(path)}")
    print("\n".join(md))


if __name__ == "__main__":
    main()
