#!/usr/bin/env python3
"""`srcode scan` vs `semgrep --experimental` on 1,000 LLM-sized files, end to end.

Files: SVEN training functions of 30-80 lines (C and Python, vulnerable and fixed versions),
cycled to --files files. Semgrep gets as many rules as srcode has for C and Python, generated
from srcode's own rules: each becomes a semgrep rule matching calls of the functions that rule's
query names (`f(...)`, `$X.f(...)`), so both tools look for the same APIs with the same rule
count. Both run with the same thread count; the median wall time of --repeats runs is reported.

usage: python3 bench/scan_vs_semgrep.py [--semgrep PATH] [--files 1000] [--repeats 3] [--threads 2]
                                       [--keep DIR]
--keep DIR writes the files to DIR/files and the semgrep rules to DIR/rules.json and keeps them
(for profiling, or for bench/scan_ab.py).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def functions(data):
    out = []
    for name in sorted(os.listdir(data)):
        if not name.endswith(".jsonl"):
            continue
        for line in open(os.path.join(data, name)):
            r = json.loads(line)
            ext = r["file_name"].rsplit(".", 1)[-1]
            lang = {"c": "c", "h": "c", "cc": "cpp", "cpp": "cpp", "py": "py"}.get(ext)
            if lang is None:
                continue
            for key in ("func_src_before", "func_src_after"):
                src = r[key]
                if 30 <= src.count("\n") + 1 <= 80:
                    out.append((lang, src))
    return out


def semgrep_rules(lang_filter):
    rules = []
    for fname in ("c.toml", "python.toml"):
        path = os.path.join(ROOT, "crates/srcode-scan/rules", fname)
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        for r in doc.get("rule", []):
            langs = [l for l in r["languages"] if l in lang_filter]
            if not langs:
                continue
            q = r.get("query", "")
            q = " ".join(q.values()) if isinstance(q, dict) else q
            names = set()
            for m in re.finditer(r'#(?:eq|any-of)\?\s+@\w+((?:\s+"[^"]+")+)', q):
                names.update(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', m.group(1)))
            names = sorted(n for n in names if n not in ("os", "subprocess", "yaml", "random", "hashlib"))[:12]
            if not names:
                names = ["__never_called__"]
            lang = "python" if langs[0] == "python" else "c"
            either = []
            for n in names:
                either.append({"pattern": f"{n}(...)"})
                if lang == "python":
                    either.append({"pattern": f"$X.{n}(...)"})
            rules.append({
                "id": r["id"].replace(".", "-"),
                "languages": [lang],
                "severity": "WARNING",
                "message": r["message"][:80],
                "pattern-either": either,
            })
    return rules


def wall(cmd, env=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t
    if p.returncode not in (0, 1):
        sys.exit(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    return dt, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--semgrep", default=shutil.which("semgrep") or os.path.join(ROOT, ".venv-tools/bin/semgrep"))
    ap.add_argument("--srcode", default=os.path.join(ROOT, "target/release/srcode"))
    ap.add_argument("--data", default=os.path.join(ROOT, "../shared/data/sven/train"))
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", help="write the files here and keep them")
    a = ap.parse_args()
    if not os.path.isdir(a.data):
        sys.exit(f"SKIP: {a.data} not found")
    if not os.path.exists(a.semgrep):
        sys.exit(f"SKIP: semgrep not found ({a.semgrep}); pip install semgrep==1.182.0")
    funcs = functions(a.data)
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        tmp = os.path.abspath(a.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="scanbench-")
    try:
        src_dir = os.path.join(tmp, "files")
        os.makedirs(src_dir, exist_ok=True)
        for i in range(a.files):
            lang, src = funcs[i % len(funcs)]
            ext = {"c": "c", "cpp": "cpp", "py": "py"}[lang]
            with open(os.path.join(src_dir, f"f{i:04d}.{ext}"), "w") as f:
                f.write(src)
        rules = semgrep_rules({"c", "cpp", "python"})
        rules_path = os.path.join(tmp, "rules.json")
        with open(rules_path, "w") as f:
            json.dump({"rules": rules}, f)
        n_srcode = len(rules)
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), SEMGREP_ENABLE_VERSION_CHECK="0", SEMGREP_SEND_METRICS="off")
        s_cmd = [a.srcode, "scan", "--format", "json", src_dir]
        g_cmd = [a.semgrep, "scan", "--experimental", "--config", rules_path, "--json", "--metrics=off",
                 "--disable-version-check", "--quiet", "-j", str(a.threads), src_dir]
        wall(s_cmd, env)  # warm the page cache
        wall(g_cmd, env)
        s_times, g_times = [], []
        for _ in range(a.repeats):
            dt, out = wall(s_cmd, env)
            s_times.append(dt)
            s_find = len(json.loads(out))
            dt, out = wall(g_cmd, env)
            g_times.append(dt)
            g_find = len(json.loads(out).get("results", []))
        s, g = statistics.median(s_times), statistics.median(g_times)
        lines = sum(open(os.path.join(src_dir, n)).read().count("\n") for n in os.listdir(src_dir))
        print(f"{a.files} files ({lines} lines), {n_srcode} rules each (C and Python), {a.threads} threads, median of {a.repeats}")
        print()
        print("| tool | wall time | findings |")
        print("|---|---:|---:|")
        print(f"| srcode scan | {s:.2f} s | {s_find} |")
        print(f"| semgrep --experimental | {g:.2f} s | {g_find} |")
        print(f"\nsrcode is {g / s:.1f}x faster")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


main()
