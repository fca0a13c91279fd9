#!/usr/bin/env bash
# RL on the prompts the base model answers insecurely, evaluated on the other pairs' held-out
# prompts (README, "Latest quickstart result"). The 12 pairs are those whose description tasks
# the base SmolLM2-135M answered with an analyser finding most often in a 60-task probe
# (n=4, 192 tokens). Resumable; about 33 min on 2 cores. Usage: scripts/experiments/hot-prompts.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
o=${1:-runs/hot}
cargo build --release -p srcode
S=./target/release/srcode
$S model fetch >/dev/null
mkdir -p "$o"
python3 scripts/experiments/hot-pairs.py examples/data/pairs.jsonl "$o/pairs.jsonl"
c=configs/hot-prompts.toml
t0=$(date +%s); st() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
st data; $S data build "$o/pairs.jsonl" --config $c --out "$o/data"
$S data tasks examples/data/pairs.jsonl --exclude "$o/data/primevul_plus.jsonl" --output "$o/heldout.jsonl"
st sft; $S train sft --data "$o/data/primevul_plus.jsonl" --config $c --out "$o/sft"
st rl; $S train rl --data "$o/data/primevul_plus.jsonl" --init "$o/sft/final" --config $c --out "$o/rl"
for m in "base|" "sft|--adapter $o/sft/final" "rl|--adapter $o/rl/final"; do
  n=${m%%|*}; ad=${m#*|}
  st "eval $n"
  # shellcheck disable=SC2086
  $S eval --bench jsonl --data "$o/heldout.jsonl" --weights f32 $ad --n 4 --temperature 0.7 \
    --max-new-tokens 128 --seed 1 --out "$o/eval/$n"
done
st report
$S report --title "RL on insecurely-answered prompts" --eval "base=$o/eval/base" \
  --eval "sft=$o/eval/sft" --eval "rl=$o/eval/rl" --rl "rl=$o/rl" --heatmaps 4 --out "$o"
st done
