#!/usr/bin/env python3
"""Load on `srcode serve`'s reward endpoint: wrk against loopback, bounded in time.

Starts `srcode serve --rewards-only` on the default model's tokenizer, builds a request with a
256-token C completion (an LLM-style answer in a Markdown fence, with an unsafe copy the
analyser flags), and runs wrk for `--seconds` with `--connections` keep-alive connections, once
with the generated token ids in the request (what an RL trainer sends) and once without (the
server tokenises). Prints a Markdown table and writes bench/out/serve_load.{md,json}.

    apt-get install wrk      # or any wrk 4.x on PATH
    python3 bench/serve_load.py --seconds 20 --connections 16
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMPLETION_HEAD = """Here is a function that builds the greeting and logs it:

```c
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

/* Builds "Hello, <name>!" into out and returns its length. */
int build_greeting(char *out, size_t out_len, const char *name)
{
    char buf[64];
    size_t n;

    if (out == NULL || name == NULL)
        return -1;
    strcpy(buf, "Hello, ");
    strcat(buf, name);
    strcat(buf, "!");
    n = strlen(buf);
    if (n + 1 > out_len)
        return -1;
    memcpy(out, buf, n + 1);
    return (int)n;
}
"""

FILLER = """
static int count_vowels(const char *s)
{
    int c = 0;
    for (; *s; s++)
        if (strchr("aeiouAEIOU", *s) != NULL)
            c++;
    return c;
}
"""


def post(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def completion_of(base, tokens):
    """An answer of exactly `tokens` tokens under the server's tokenizer."""
    text = COMPLETION_HEAD
    while len(post(base + "/tokenize", {"content": text})["tokens"]) < tokens + 8:
        text += FILLER
    text += "```\n"
    r = post(base + "/tokenize", {"content": text, "with_offsets": True})
    ids, offs = r["tokens"][:tokens], r["offsets"][:tokens]
    return text[: offs[-1][1]], ids


def parse_wrk(out):
    def dur(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000

    res = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    res["requests"], res["seconds"] = int(m.group(1)), float(m.group(2))
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"\s{p}%\s+([\d.]+(?:us|ms|s))", out)
        res[f"p{p}_ms"] = dur(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--srcode", default=os.path.join(ROOT, "target/release/srcode"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/out"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    cmd = [a.srcode, "serve", "--rewards-only", "--port", str(a.port)]
    if a.model:
        cmd += ["--model", a.model]
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{a.port}"
    try:
        line = server.stderr.readline()
        if "listening" not in line:
            sys.exit(f"srcode serve did not start: {line}{server.stderr.read()}")
        text, ids = completion_of(base, a.tokens)
        rows = []
        for label, item in (
            ("with token ids", {"response": text, "response_token_ids": ids, "language": "c"}),
            ("server tokenises", {"response": text, "language": "c"}),
        ):
            check = post(base + "/v1/rewards/token", item)
            assert len(check["token_rewards"]) == a.tokens, len(check["token_rewards"])
            assert check["findings"], "the bench completion should be flagged"
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
                f.write('wrk.method = "POST"\n')
                f.write('wrk.headers["Content-Type"] = "application/json"\n')
                f.write("wrk.body = " + json.dumps(json.dumps(item)) + "\n")
                lua = f.name
            out = subprocess.run(
                ["wrk", "-t", str(a.wrk_threads), "-c", str(a.connections), "-d", f"{a.seconds}s",
                 "--latency", "-s", lua, base + "/v1/rewards/token"],
                capture_output=True, text=True, check=True).stdout
            os.unlink(lua)
            r = parse_wrk(out)
            r.update(label=label, tokens=a.tokens, connections=a.connections,
                     findings=len(check["findings"]), body_bytes=len(json.dumps(item)))
            rows.append(r)
            time.sleep(1)
        metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    finally:
        server.terminate()
        server.wait()
    md = [f"`srcode serve --rewards-only`, POST /v1/rewards/token, {a.tokens}-token C completion, "
          f"wrk {a.wrk_threads} thread / {a.connections} connections / {a.seconds} s, loopback, "
          f"{os.cpu_count()} CPUs shared by server and wrk",
          "",
          "| request | requests/s | p50 ms | p90 ms | p99 ms | errors (non-2xx + socket) |",
          "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['label']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {r['non2xx'] + r['socket_errors']} |")
    print("\n".join(md))
    with open(os.path.join(a.out, "serve_load.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(a.out, "serve_load.json"), "w") as f:
        json.dump({"rows": rows, "metrics_after": metrics}, f, indent=1)


if __name__ == "__main__":
    main()
