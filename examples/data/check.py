#!/usr/bin/env python3
"""Checks examples/data/pairs.jsonl and reports how often srcode's analyser flags each side.

Usage: python3 examples/data/check.py [--no-scan] [--srcode PATH]

1. every line is a JSON object with exactly the expected keys; ids unique; vulnerable != fixed;
   both versions define `func_name` with the same signature.
2. C: `gcc -fsyntax-only -Wall -Werror` on both versions after the standard headers.
   Python: `ast.parse` on both; the top level is exactly one FunctionDef named `func_name`.
3. descriptions avoid words that would give the answer away.
4. (unless --no-scan) runs `srcode scan --format json` on every version and prints, per CWE,
   vulnerable flagged / fixed flagged. These figures are reported, never asserted.

Exit status: 0 when checks 1-3 pass, 1 otherwise. Standard library only.
"""

import argparse
import ast
import collections
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PAIRS = os.path.join(HERE, "pairs.jsonl")

KEYS = {"id", "language", "cwe", "func_name", "description", "vulnerable", "fixed"}
LANGS = {"c": ".c", "python": ".py"}
C_HEADERS = "".join(
    f"#include <{h}>\n"
    for h in ("stdio.h", "stdlib.h", "string.h", "stdint.h", "stddef.h", "unistd.h", "limits.h", "errno.h")
)
BANNED = [
    "secure", "security", "safe", "vulnerab", "sanitiz", "sanitis", "escape", "inject",
    "overflow", "bound", "valid", "attack", "exploit", "malicious", "cwe", "untrusted", "trusted",
]
MIN_LINES, MAX_LINES = 8, 40


def c_signature(src, name):
    """Text before the body's opening brace, whitespace-normalised; None if it does not define name."""
    head = src.split("{", 1)[0]
    if not re.search(r"\b" + re.escape(name) + r"\s*\(", head):
        return None
    return " ".join(head.split())


def py_signature(src, name, errors, where):
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        errors.append(f"{where}: ast.parse failed: {e}")
        return None
    body = tree.body
    if len(body) != 1 or not isinstance(body[0], ast.FunctionDef) or body[0].name != name:
        errors.append(f"{where}: top level is not exactly one `def {name}`")
        return None
    return ast.dump(body[0].args)


def gcc_check(src, where, errors, gcc):
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as fh:
        fh.write(C_HEADERS + "\n" + src)
        path = fh.name
    try:
        r = subprocess.run([gcc, "-fsyntax-only", "-Wall", "-Werror", path], capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"{where}: gcc -fsyntax-only -Wall -Werror failed:\n{r.stderr.strip()}")
    finally:
        os.unlink(path)


def changed_lines(a, b):
    n = 0
    for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0):
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
            n += 1
    return n


def scan(srcode, src, ext):
    """Returns (flagged, [cwe...]) for one version, or raises RuntimeError."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "snippet" + ext)
        with open(path, "w") as fh:
            fh.write(src)
        r = subprocess.run([srcode, "scan", "--format", "json", path], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"srcode scan exited {r.returncode}: {r.stderr.strip()}")
    findings = json.loads(r.stdout) if r.stdout.strip() else []
    return r.returncode == 1, [cwe_number(f.get("cwe")) for f in findings]


def cwe_number(cwe):
    """CWE-78 and CWE-078 (the analyser zero-pads) both give 78; anything else gives None."""
    m = re.fullmatch(r"(?i)cwe-0*(\d+)", cwe or "")
    return int(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-scan", action="store_true", help="skip step 4 (the analyser figures)")
    ap.add_argument("--srcode", default=os.path.join(ROOT, "target", "release", "srcode"))
    args = ap.parse_args()

    errors = []
    records = []
    with open(PAIRS, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            where = f"pairs.jsonl:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{where}: not JSON: {e}")
                continue
            if not isinstance(rec, dict) or set(rec) != KEYS:
                errors.append(f"{where}: keys are {sorted(rec) if isinstance(rec, dict) else type(rec)}, want {sorted(KEYS)}")
                continue
            if not all(isinstance(rec[k], str) and rec[k] for k in KEYS):
                errors.append(f"{where}: every value must be a non-empty string")
                continue
            records.append((where, rec))

    # 1. structure
    ids = collections.Counter(r["id"] for _, r in records)
    for i, n in ids.items():
        if n > 1:
            errors.append(f"id {i} appears {n} times")
    gcc = shutil.which("gcc")
    if gcc is None:
        errors.append("gcc not found: cannot run check 2 for C")
    diff_sizes = []
    for where, r in records:
        where = f"{where} ({r['id']})"
        lang, name = r["language"], r["func_name"]
        if lang not in LANGS:
            errors.append(f"{where}: language {lang!r} not in {sorted(LANGS)}")
            continue
        want_prefix = "demo-c-" if lang == "c" else "demo-py-"
        if not re.fullmatch(re.escape(want_prefix) + r"\d{3}", r["id"]):
            errors.append(f"{where}: id should look like {want_prefix}NNN")
        if not re.fullmatch(r"CWE-\d+", r["cwe"]):
            errors.append(f"{where}: cwe {r['cwe']!r} is not CWE-<number>")
        if r["vulnerable"] == r["fixed"]:
            errors.append(f"{where}: vulnerable and fixed are identical")
        for side in ("vulnerable", "fixed"):
            n = len(r[side].rstrip("\n").splitlines())
            if not MIN_LINES <= n <= MAX_LINES:
                errors.append(f"{where}: {side} has {n} lines, want {MIN_LINES}-{MAX_LINES}")
        diff_sizes.append(changed_lines(r["vulnerable"], r["fixed"]))
        # 2. compiles / parses; same name and signature on both sides
        sigs = []
        for side in ("vulnerable", "fixed"):
            src = r[side]
            if lang == "c":
                if "#include" in src:
                    errors.append(f"{where}: {side} contains #include")
                sig = c_signature(src, name)
                if sig is None:
                    errors.append(f"{where}: {side} does not define {name}()")
                if gcc:
                    gcc_check(src, f"{where} {side}", errors, gcc)
            else:
                sig = py_signature(src, name, errors, f"{where} {side}")
            sigs.append(sig)
        if None not in sigs and sigs[0] != sigs[1]:
            errors.append(f"{where}: signatures differ between vulnerable and fixed")
        # 3. description wording
        low = r["description"].lower()
        for word in BANNED:
            if word in low:
                errors.append(f"{where}: description contains {word!r}")

    # summary
    by_lang = collections.Counter(r["language"] for _, r in records)
    by_cwe = collections.defaultdict(collections.Counter)
    for _, r in records:
        by_cwe[r["language"]][r["cwe"]] += 1
    cwe_key = lambda c: int(c.split("-")[1]) if re.fullmatch(r"CWE-\d+", c) else 0
    print(f"{len(records)} pairs: " + ", ".join(f"{n} {lang}" for lang, n in sorted(by_lang.items())))
    all_cwes = set()
    for lang in sorted(by_cwe):
        cwes = by_cwe[lang]
        all_cwes |= set(cwes)
        print(f"  {lang}: {len(cwes)} CWEs: " + ", ".join(f"{c} x{cwes[c]}" for c in sorted(cwes, key=cwe_key)))
    print(f"  distinct CWEs overall: {len(all_cwes)}")
    if diff_sizes:
        print(f"  lines changed per fix (diff +/-): min {min(diff_sizes)}, max {max(diff_sizes)}, "
              f"mean {sum(diff_sizes) / len(diff_sizes):.1f}")
    if len(records) != 60 or by_lang.get("c") != 30 or by_lang.get("python") != 30:
        errors.append("want 60 pairs: 30 c and 30 python")
    if len(all_cwes) < 12:
        errors.append(f"want at least 12 distinct CWEs, have {len(all_cwes)}")
    for lang in LANGS:
        if len(by_cwe.get(lang, {})) < 6:
            errors.append(f"want at least 6 CWEs for {lang}")

    # 4. analyser figures (reported only)
    if not args.no_scan:
        print()
        if not os.path.exists(args.srcode):
            print(f"analyser: {args.srcode} not found; build it with "
                  f"`cargo build --release -p srcode` or pass --no-scan")
        else:
            rows = collections.defaultdict(lambda: [0, 0, 0, 0])  # pairs, vuln flagged, fixed flagged, same-CWE on vuln
            totals = collections.defaultdict(lambda: [0, 0, 0])
            try:
                for _, r in records:
                    ext = LANGS[r["language"]]
                    v_flag, v_cwes = scan(args.srcode, r["vulnerable"], ext)
                    f_flag, _ = scan(args.srcode, r["fixed"], ext)
                    row = rows[(r["language"], r["cwe"])]
                    row[0] += 1
                    row[1] += v_flag
                    row[2] += f_flag
                    row[3] += cwe_number(r["cwe"]) in v_cwes
                    t = totals[r["language"]]
                    t[0] += 1
                    t[1] += v_flag
                    t[2] += f_flag
            except RuntimeError as e:
                print(f"analyser: {e}")
            else:
                print(f"analyser ({os.path.relpath(args.srcode, ROOT)} scan --format json), "
                      "per CWE: vulnerable flagged / fixed flagged (pairs) [vulnerable with a finding of that CWE]")
                for (lang, cwe) in sorted(rows, key=lambda k: (k[0], cwe_key(k[1]))):
                    n, v, f, same = rows[(lang, cwe)]
                    print(f"  {lang:<6} {cwe:<8} {v}/{n} vs {f}/{n}  [{same}/{n}]")
                for lang in sorted(totals):
                    n, v, f = totals[lang]
                    print(f"  {lang:<6} total    vulnerable {v}/{n} flagged, fixed {f}/{n} flagged")
                n = sum(t[0] for t in totals.values())
                v = sum(t[1] for t in totals.values())
                f = sum(t[2] for t in totals.values())
                print(f"  all    total    vulnerable {v}/{n} flagged, fixed {f}/{n} flagged")

    print()
    if errors:
        print(f"{len(errors)} problem(s):")
        for e in errors:
            print("  - " + e)
        return 1
    print("checks 1-3: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
