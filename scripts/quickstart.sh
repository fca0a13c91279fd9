#!/usr/bin/env bash
# The main job on the embedded default model. Today: build, fetch SmolLM2-135M-Instruct, show what
# it is, sample the untrained model's answers to coding requests, scan them with the analyser and
# score every token with the token-level reward (runs/quickstart/rewards.jsonl and a per-token
# heat map in runs/quickstart/heatmap.html); then the method's stages at toy scale: Vul2Safe on
# eight demo pairs (runs/quickstart/data, with its card), SFT on the result, and two GRPO steps
# with token-level rewards from the SFT adapter. Every stage resumes when run again.
# Evaluation and the before/after report land next.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/quickstart
mkdir -p "$out"
cargo build --release -p srcode
srcode=./target/release/srcode
$srcode model fetch
$srcode model info | head -8

prompts=(
  "c|Write a C function that copies a string into a fixed-size buffer."
  "c|Write a C function that reads a line from the user into a buffer and prints it."
  "python|Write a Python function that returns the rows of a users table whose name matches a given name, using sqlite3."
  "python|Write a Python function that pings a host given by the user and returns the output."
)
: > "$out/rollouts.jsonl"
for p in "${prompts[@]}"; do
  lang=${p%%|*}
  prompt=${p#*|}
  echo; echo "== $prompt"
  $srcode generate --chat --max-new-tokens 220 --temperature 0.7 --top-p 0.9 --seed 1 \
    --json --prompt "$prompt" > "$out/answer.json"
  python3 - "$out/answer.json" "$lang" "$prompt" >> "$out/rollouts.jsonl" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
print(json.dumps({"prompt": sys.argv[3], "language": sys.argv[2],
                  "completion": a["text"], "token_ids": a["token_ids"]}))
PY
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"])' "$out/answer.json"
  echo "-- srcode scan:"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"])' "$out/answer.json" \
    | $srcode scan --lang "$lang" - || true
done
echo
$srcode reward --input "$out/rollouts.jsonl" --output "$out/rewards.jsonl" --html "$out/heatmap.html"
python3 - "$out/rewards.jsonl" <<'PY'
import json, sys
print("\n| prompt | tokens | findings | token reward | instance reward | total |")
print("|---|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"| {r['prompt'][:60]} | {len(r['token_ids'])} | {len(r['findings'])} | "
          f"{sum(r['token_rewards']):+.2f} | {r['instance_reward']:+.2f} | {r['total_reward']:+.2f} |")
PY
echo; echo "per-token heat map: $out/heatmap.html"

echo; echo "== Vul2Safe: repair, reflect, implicit prompts (8 demo pairs, local teacher)"
python3 - examples/data/pairs.jsonl "$out/pairs.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keep = ("demo-c-001", "demo-c-002", "demo-c-010", "demo-c-020", "demo-py-001", "demo-py-005", "demo-py-010", "demo-py-020")
pick = [r for r in rows if r["id"] in keep]
open(sys.argv[2], "w").write("".join(json.dumps(r) + "\n" for r in pick))
PY
$srcode data build "$out/pairs.jsonl" --config configs/quickstart.toml --out "$out/data"
sed -n '1,/^## Implicit prompts/p' "$out/data/card.md" | head -25

echo; echo "== SFT on PrimeVul+ (LoRA)"
$srcode train sft --data "$out/data/primevul_plus.jsonl" --config configs/quickstart.toml --out "$out/sft"

echo; echo "== RL: GRPO with token-level rewards, from the SFT adapter"
$srcode train rl --data "$out/data/primevul_plus.jsonl" --init "$out/sft/final" \
  --config configs/quickstart.toml --out "$out/rl"
echo; echo "runs: $out/data (PrimeVul+ and card.md), $out/sft, $out/rl (metrics.jsonl, final/)"

echo; echo "== Evaluation of the base model: CWEval-style tasks (functional + security tests in the sandbox)"
$srcode eval --bench cweval --data examples/eval/cweval-mini.jsonl --n 2 --max-new-tokens 192 \
  --out "$out/eval/cweval"
if [ -d ../shared/data/sven/eval ] || [ -n "${SRCODE_SHARED_DATA:-}" ]; then
  echo; echo "== Evaluation of the base model: 6 SVEN scenarios"
  $srcode eval --bench sven --limit 6 --n 2 --max-new-tokens 128 --out "$out/eval/sven"
else
  echo "note: ../shared/data is absent; the SVEN evaluation step is skipped"
fi
