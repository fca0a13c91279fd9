#!/usr/bin/env python3
"""Two `srcode` binaries on the same directory, interleaved: median wall and CPU time of each.

On a shared VM whose speed drifts, only runs taken side by side compare. Both binaries scan
DIR (`--format json`, output discarded) in turns, N times each (default 15), and the medians
of wall time and of user+system CPU time are printed, with the ratio of the second to the first.

usage: python3 bench/scan_ab.py BIN_A BIN_B DIR [--n 15]
  e.g. python3 bench/scan_vs_semgrep.py --keep /tmp/sb --repeats 1
       python3 bench/scan_ab.py /tmp/srcode-old target/release/srcode /tmp/sb/files
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=15)
    args = ap.parse_args()
    for path in (args.a, args.b):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path}: not an executable")
    if not os.path.isdir(args.dir):
        sys.exit(f"{args.dir}: not a directory")
    res = {args.a: ([], []), args.b: ([], [])}
    for _ in range(args.n):
        for b in (args.a, args.b):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            p = subprocess.run([b, "scan", "--format", "json", args.dir], stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if p.returncode not in (0, 1):
                sys.exit(f"{b} failed with status {p.returncode}")
            res[b][0].append(wall)
            res[b][1].append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    med = {b: (statistics.median(w), statistics.median(c)) for b, (w, c) in res.items()}
    for b, (w, c) in med.items():
        print(f"{b}: wall {w * 1e3:.1f} ms, CPU {c * 1e3:.1f} ms (medians of {args.n})")
    (wa, ca), (wb, cb) = med[args.a], med[args.b]
    print(f"second / first: wall {wb / wa:.3f}, CPU {cb / ca:.3f}")


main()
