#!/usr/bin/env python3
"""Rollout flagged-rate curves of RL runs, summarised: the mean over each third of the steps,
the least-squares slope in points per step with a 95% bootstrap interval (steps resampled with
replacement, 2,000 times, fixed seed), and the mean wall time per step (sampling in brackets).

usage: python3 scripts/experiments/curve-stats.py RUN_DIR [RUN_DIR ...]
(each RUN_DIR is an `srcode train rl --out` directory with metrics.jsonl)
"""
import json
import random
import sys


def slope(points):
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rng = random.Random(1)
    print("| run | steps | thirds (flagged %) | slope, pts/step [95% CI] | s/step (sampling) |")
    print("|---|---:|---|---:|---:|")
    for d in sys.argv[1:]:
        try:
            rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if l.strip()]
        except OSError as e:
            sys.exit(f"{d}: {e}")
        if len(rows) < 3:
            sys.exit(f"{d}: only {len(rows)} steps")
        pts = [(r["step"], 100.0 * r["flagged_rate"]) for r in rows]
        k = len(pts)
        cuts = [0, k // 3, 2 * k // 3, k]
        thirds = [sum(y for _, y in pts[a:b]) / (b - a) for a, b in zip(cuts, cuts[1:])]
        boots = sorted(slope([rng.choice(pts) for _ in pts]) for _ in range(2000))
        lo, hi = boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]
        sec = sum(r["seconds"] for r in rows) / k
        roll = sum(r.get("rollout_seconds", 0.0) for r in rows) / k
        third_txt = " → ".join(f"{t:.1f}" for t in thirds)
        print(f"| {d} | {k} | {third_txt} | {slope(pts):+.2f} [{lo:+.2f}, {hi:+.2f}] | {sec:.1f} ({roll:.1f}) |")


main()
