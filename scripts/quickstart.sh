#!/usr/bin/env bash
# The main job, end to end on the embedded default model (SmolLM2-135M-Instruct):
#
#   build → fetch the model → Vul2Safe on demo pairs (local teacher, real-fix and description
#   fallbacks counted in the card) → LoRA SFT → GRPO with token-level rewards from the SFT
#   adapter → evaluate base, SFT and RL on held-out implicit prompts (pairs never trained on)
#   and on HumanEval-Pro when ../shared/data is there → runs/quickstart/report.html
#
# Usage: scripts/quickstart.sh [--minutes N] [--out DIR]
#   --minutes  the budget (default 20, build included, on 2 cores); every stage scales with it:
#              more training pairs, SFT and RL steps, samples per evaluation task.
#   --out      the run directory (default runs/quickstart).
# Every stage resumes when the same command runs again; a finished stage is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=20
out=runs/quickstart
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=${2:?--minutes needs a number}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$minutes" in
  ''|*[!0-9]*) echo "quickstart: --minutes must be a whole number, got '$minutes'" >&2; exit 2 ;;
esac
if [ "$minutes" -lt 20 ]; then
  echo "quickstart: --minutes $minutes is below the smallest budget (20)" >&2; exit 2
fi
# Budget → stage sizes. 20 minutes is the unit; the figures grow linearly with it.
f=$((minutes / 20))
pairs=$((8 * f)); [ $pairs -gt 40 ] && pairs=40
sft_steps=$((6 * f))
rl_steps=$((10 * f))
eval_n=$((2 * f)); [ $eval_n -gt 8 ] && eval_n=8
he_limit=$((8 * f)); [ $he_limit -gt 40 ] && he_limit=40
mkdir -p "$out"
t_start=$(date +%s)
stamp() { echo "[$(( ($(date +%s) - t_start) / 60 ))m$(( ($(date +%s) - t_start) % 60 ))s] $*"; }

stamp "build"
cargo build --release -p srcode
srcode=./target/release/srcode
$srcode model fetch
$srcode model info | head -4

stamp "Vul2Safe on $pairs demo pairs (local teacher)"
# The training pairs: first the twelve whose tasks the base model answered insecurely most often
# in a probe (RL needs rollouts it can penalise; scripts/experiments/hot-pairs.py), in the same
# order at every budget, then every third remaining pair. All the others are held out.
python3 - examples/data/pairs.jsonl "$out/pairs.jsonl" "$pairs" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
first = ["demo-c-001", "demo-py-008", "demo-c-002", "demo-py-009", "demo-c-006", "demo-py-006",
         "demo-c-013", "demo-py-021", "demo-c-007", "demo-py-024", "demo-c-011", "demo-c-016"]
rest = [r["id"] for r in rows if r["id"] not in first]
order = first + rest[::3] + [i for i in rest if i not in rest[::3]]
keep = set(order[:int(sys.argv[3])])
with open(sys.argv[2], "w") as f:
    for r in rows:
        if r["id"] in keep:
            f.write(json.dumps(r) + "\n")
PY
$srcode data build "$out/pairs.jsonl" --config configs/quickstart.toml --out "$out/data"
sed -n '1,/^## Implicit prompts/p' "$out/data/card.md" | head -20
$srcode data tasks examples/data/pairs.jsonl --exclude "$out/data/primevul_plus.jsonl" \
  --output "$out/heldout.jsonl"

stamp "SFT on PrimeVul+ (LoRA, $sft_steps steps)"
$srcode train sft --data "$out/data/primevul_plus.jsonl" --config configs/quickstart.toml \
  --max-steps "$sft_steps" --out "$out/sft"

stamp "RL: GRPO with token-level rewards from the SFT adapter ($rl_steps steps)"
$srcode train rl --data "$out/data/primevul_plus.jsonl" --init "$out/sft/final" \
  --config configs/quickstart.toml --steps "$rl_steps" --out "$out/rl"

# The three models decode the same kind of weights (Q8_0; an adapter is folded into the dense
# weights before they are quantised), with the same seed and sampling, so differences are the
# training's.
models=("base|" "sft|--adapter $out/sft/final" "rl|--adapter $out/rl/final")
evals=()
for m in "${models[@]}"; do
  name=${m%%|*}; adapter=${m#*|}
  stamp "evaluate $name on the held-out prompts (n=$eval_n)"
  # shellcheck disable=SC2086
  $srcode eval --bench jsonl --data "$out/heldout.jsonl" --weights q8_0 $adapter --batch 32 \
    --n "$eval_n" --temperature 0.7 --max-new-tokens 128 --seed 1 --out "$out/eval/$name/heldout"
  evals+=(--eval "$name=$out/eval/$name/heldout")
done
if [ -f ../shared/data/humaneval-pro/humaneval_pro.json ] || [ -n "${SRCODE_SHARED_DATA:-}" ]; then
  for m in "${models[@]}"; do
    name=${m%%|*}; adapter=${m#*|}
    stamp "evaluate $name on HumanEval-Pro ($he_limit tasks, functional tests in the sandbox)"
    # shellcheck disable=SC2086
    $srcode eval --bench humaneval-pro --limit "$he_limit" --weights q8_0 $adapter \
      --n 1 --temperature 0.2 --max-new-tokens 256 --seed 1 --out "$out/eval/$name/humaneval-pro"
    evals+=(--eval "$name=$out/eval/$name/humaneval-pro")
  done
else
  echo "note: ../shared/data is absent; the HumanEval-Pro evaluation is skipped"
fi

stamp "report"
cat > "$out/notes.txt" <<EOF
scripts/quickstart.sh --minutes $minutes   (SmolLM2-135M-Instruct, $(nproc) CPU cores)
training: $pairs demo pairs through Vul2Safe -> $(grep -c . "$out/data/primevul_plus.jsonl") PrimeVul+ samples; LoRA SFT $sft_steps steps; GRPO $rl_steps steps of 4 prompts x 4 rollouts (token-level rewards plus the instance reward, from the SFT adapter; rollouts from a Q8_0 snapshot)
held-out: $(grep -c . "$out/heldout.jsonl") implicit prompts of pairs never trained on, n=$eval_n samples each at T=0.7, 128 new tokens, Q8_0 weights; the same seed for every model
EOF
$srcode report --title "srcode quickstart: base vs SFT vs RL" --notes "$out/notes.txt" \
  "${evals[@]}" --rl "rl=$out/rl" --heatmaps 3 --out "$out"
stamp "done: $out/report.html"
