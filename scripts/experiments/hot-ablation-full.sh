#!/usr/bin/env bash
# The granularity ablation at the trainer issue's own size (README, "Granularity ablation"):
# from the SFT adapter of hot-ablation.sh (run that first), GRPO for 30 steps of 8 prompts × 4
# rollouts × 128 tokens with `both` and with `instance` rewards, same seed and budget
# (configs/hot-ablation-full.toml); then the end point of each run measured with many samples:
#   - held in: the 9 training prompts × N_IN samples at the rollouts' settings (T=1, top-p 1,
#     128 tokens, Q8_0), for the SFT start and both final policies: the rate the rollout curves
#     estimate, with 288 samples per model instead of 32 per step;
#   - held out: the other pairs' 51 prompts × 8 samples, as hot-ablation.sh evaluates.
# About 75 min a seed on 2 cores. Resumable.
# Usage: scripts/experiments/hot-ablation-full.sh [OUT] [SEED] [N_IN]
set -euo pipefail
cd "$(dirname "$0")/../.."
o=${1:-runs/hot}
seed=${2:-1}
nin=${3:-32}
sfx=""; [ "$seed" = 1 ] || sfx="-s$seed"
cargo build --release -p srcode
S=./target/release/srcode
[ -f "$o/sft/final/adapter_model.safetensors" ] || {
  echo "no SFT adapter in $o/sft/final: run scripts/experiments/hot-ablation.sh $o first" >&2
  exit 2
}
t0=$(date +%s); st() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
for g in both instance; do
  st "RL, granularity $g, seed $seed"
  $S train rl --data "$o/data/primevul_plus.jsonl" --init "$o/sft/final" --seed "$seed" \
    --config configs/hot-ablation-full.toml --reward-granularity "$g" --out "$o/full-$g$sfx"
done
$S train plot "$o/full-both$sfx" "$o/full-instance$sfx" --out "$o/full-curves$sfx.html"
heldin=(sft "$o/sft/final")
heldin+=("full-both$sfx" "$o/full-both$sfx/final" "full-instance$sfx" "$o/full-instance$sfx/final")
for ((i = 0; i < ${#heldin[@]}; i += 2)); do
  name=${heldin[i]}; ad=${heldin[i+1]}
  st "held-in evaluation of $name (9 prompts x $nin)"
  $S eval --bench jsonl --data "$o/data/primevul_plus.jsonl" --instruct --weights q8_0 \
    --adapter "$ad" --n "$nin" --temperature 1.0 --top-p 1.0 --max-new-tokens 128 --seed 7 \
    --batch 32 --out "$o/heldin/$name"
done
for name in "full-both$sfx" "full-instance$sfx"; do
  st "held-out evaluation of $name (51 prompts x 8)"
  $S eval --bench jsonl --data "$o/heldout.jsonl" --weights q8_0 --adapter "$o/$name/final" \
    --n 8 --temperature 0.7 --max-new-tokens 128 --seed 1 --batch 32 --out "$o/eval-q8/$name"
done
st reports
$S report --title "End points on the training prompts (seed $seed)" \
  --eval "sft=$o/heldin/sft" --eval "instance=$o/heldin/full-instance$sfx" \
  --eval "both=$o/heldin/full-both$sfx" --heatmaps 0 --out "$o/full-heldin$sfx"
$S report --title "Granularity ablation at the trainer issue's size (seed $seed)" \
  --eval "base=$o/eval-q8/base" --eval "sft=$o/eval-q8/sft" \
  --eval "instance=$o/eval-q8/full-instance$sfx" --eval "both=$o/eval-q8/full-both$sfx" \
  --rl "both=$o/full-both$sfx" --rl "instance=$o/full-instance$sfx" --heatmaps 4 \
  --out "$o/full-ablation$sfx"
st done
