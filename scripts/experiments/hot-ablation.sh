#!/usr/bin/env bash
# The trainer issue's granularity ablation on the prompts the base model answers insecurely
# (README, "Granularity ablation"): from the data and SFT stages of hot-prompts.sh, GRPO with
# `both` (token rewards on their tokens plus the instance reward: the method) and with
# `instance` (the same total reward, all of it at the end), same seed and budget; then base, SFT
# and both RL models on the other pairs' held-out prompts. Rollouts and evaluation decode Q8_0
# weights (an adapter folded in), which keeps the whole run near an hour on 2 cores.
# Resumable. Usage: scripts/experiments/hot-ablation.sh [OUT] [N_EVAL] [SEED]
# (a SEED other than 1 writes its RL runs and report beside seed 1's, as rl-both-sSEED etc.)
set -euo pipefail
cd "$(dirname "$0")/../.."
o=${1:-runs/hot}
n=${2:-8}
seed=${3:-1}
sfx=""; [ "$seed" = 1 ] || sfx="-s$seed"
cargo build --release -p srcode
S=./target/release/srcode
$S model fetch >/dev/null
t0=$(date +%s); st() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
if [ ! -f "$o/sft/final/adapter_model.safetensors" ]; then
  st "data and SFT (scripts/experiments/hot-prompts.sh stages)"
  mkdir -p "$o"
  python3 scripts/experiments/hot-pairs.py examples/data/pairs.jsonl "$o/pairs.jsonl"
  $S data build "$o/pairs.jsonl" --config configs/hot-prompts.toml --out "$o/data"
  $S train sft --data "$o/data/primevul_plus.jsonl" --config configs/hot-prompts.toml --out "$o/sft"
fi
[ -f "$o/heldout.jsonl" ] || $S data tasks examples/data/pairs.jsonl \
  --exclude "$o/data/primevul_plus.jsonl" --output "$o/heldout.jsonl"
for g in both instance; do
  st "RL, granularity $g"
  $S train rl --data "$o/data/primevul_plus.jsonl" --init "$o/sft/final" --seed "$seed" \
    --config configs/hot-ablation.toml --reward-granularity "$g" --out "$o/rl-$g$sfx"
done
evals=()
for m in "base|" "sft|--adapter $o/sft/final" "rl-instance$sfx|--adapter $o/rl-instance$sfx/final" \
  "rl-both$sfx|--adapter $o/rl-both$sfx/final"; do
  name=${m%%|*}; ad=${m#*|}
  st "eval $name (n=$n)"
  # shellcheck disable=SC2086
  $S eval --bench jsonl --data "$o/heldout.jsonl" --weights q8_0 $ad --n "$n" \
    --temperature 0.7 --max-new-tokens 128 --seed 1 --batch 32 --out "$o/eval-q8/$name"
  evals+=(--eval "$name=$o/eval-q8/$name")
done
st report
$S train plot "$o/rl-both$sfx" "$o/rl-instance$sfx" --out "$o/ablation-curves$sfx.html"
$S report --title "Granularity ablation on insecurely-answered prompts (seed $seed)" "${evals[@]}" \
  --rl "both=$o/rl-both$sfx" --rl "instance=$o/rl-instance$sfx" --heatmaps 4 --out "$o/ablation$sfx"
st done
