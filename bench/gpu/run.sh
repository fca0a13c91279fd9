#!/usr/bin/env bash
# srcode's GPU checks, run on a CUDA machine with no Rust toolchain and no network (the device
# tool's H200): the binary is built elsewhere by scripts/build-cuda.sh and carried in .dev/.
#
#   bench/gpu/run.sh smoke   parity CPU vs GPU, decode and training-step throughput (srcode and
#                            PyTorch on the same random-weight models), SFT and RL steps on CUDA
#   bench/gpu/run.sh rl      the reward-granularity ablation on the real SmolLM2 (bench/gpu/rl.toml)
#                            and a held-out evaluation of each arm
# .dev/ (.dev2/ for rl) holds srcode.xz (the stripped binary, xz), smol-hf/ (srcode model export's tokenizer and
# config files), data/ (PrimeVul+ and held-out tasks), and the GGUF in two parts (one per call:
# each call may carry 64 MiB); both calls keep what they carry under $STASH.
set -uo pipefail
phase=${1:?usage: bench/gpu/run.sh smoke|rl}
OUT=${OUT:-/tmp/gpu-out}
STASH=${STASH:-/root/stash}
mkdir -p "$OUT" "$STASH"
# What this call carried: .dev for smoke, .dev2 for rl (a call carries at most 64 MiB).
if [ "$phase" = rl ]; then DEV=${DEV:-.dev2}; else DEV=${DEV:-.dev}; fi
log() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
run() { # run NAME TIMEOUT CMD...: output to $OUT/NAME.txt, JSON lines also to $OUT/results.jsonl
  local name=$1 t=$2; shift 2
  log "$name: $*"
  timeout "$t" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
  local rc=$?
  grep -h '^{' "$OUT/$name.txt" | sed "s/^{/{\"run\":\"$name\",/" >>"$OUT/results.jsonl"
  [ $rc -eq 0 ] || { log "$name: exit $rc"; tail -5 "$OUT/$name.err" | tee -a "$OUT/log.txt"; }
  return 0
}
SP=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
LIBS=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export SRCODE_HOME=$STASH/home RUST_LOG=warn
S=$STASH/srcode
if [ -f $DEV/srcode.xz ]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' $DEV/srcode.xz "$S"
  chmod +x "$S"
fi
[ -d $DEV/data ] && cp -r $DEV/data "$STASH/"
cp $DEV/gguf.part* "$STASH/" 2>/dev/null
GGUF=$STASH/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$GGUF" ] && [ -f "$STASH/gguf.part1" ] && [ -f "$STASH/gguf.part2" ]; then
  cat "$STASH/gguf.part1" "$STASH/gguf.part2" >"$GGUF"
  echo "$(sha256sum "$GGUF")" | tee -a "$OUT/log.txt"
fi
log "host: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader); $(nproc) cores"
"$S" --version >>"$OUT/log.txt" 2>&1 || { log "the binary does not start"; ldd "$S" | tee -a "$OUT/log.txt"; exit 1; }

case $phase in
smoke)
  # Most important first: the call's time limit may cut the tail.
  M=$STASH/smol-rand B=$STASH/big-rand D=$STASH/data/primevul_plus.jsonl
  run make-smol 90 python3 bench/gpu/torch_ref.py make --like $DEV/smol-hf --out "$M" --dtype f32
  P=$(cat bench/prompt.txt)
  for d in cpu cuda; do
    run "parity-$d" 60 "$S" generate --model "$M" --device $d --weights f32 --prompt "$P" \
      --max-new-tokens 24 --temperature 0 --json
  done
  for w in f32 bf16; do for b in 1 8 32; do
    run "decode-smol-$w-b$b" 60 "$S" bench decode --device cuda --model "$M" --weights "$w" \
      --prompt-file bench/prompt.txt --new-tokens 128 --batch "$b" --repeats 2 --json
  done; done
  run rl-gpu 120 "$S" train rl --device cuda --data "$D" --model "$M" --config bench/gpu/rl.toml \
    --steps 2 --out "$STASH/runs/rl-smoke"
  cp "$STASH/runs/rl-smoke/metrics.jsonl" "$OUT/rl-smoke-metrics.jsonl" 2>/dev/null
  run train-smol-f32-b1 60 "$S" bench train --device cuda --model "$M" --dtype f32 --batch 1 --seq-len 256 --steps 3 --json
  run torch-smol-f32-b1 90 python3 bench/gpu/torch_ref.py train --model "$M" --dtype f32 --batch 1 --seq-len 256 --steps 3
  run train-smol-bf16-b8 60 "$S" bench train --device cuda --model "$M" --dtype bf16 --batch 8 --seq-len 256 --steps 3 --json
  run torch-smol-bf16-b8 90 python3 bench/gpu/torch_ref.py train --model "$M" --dtype bf16 --batch 8 --seq-len 256 --steps 3
  run train-smol-lora-f32-b8 60 "$S" bench train --device cuda --model "$M" --dtype f32 --lora-rank 8 --batch 8 --seq-len 256 --steps 3 --json
  run sft-gpu 90 "$S" train sft --device cuda --data "$D" --model "$M" --config configs/quickstart.toml \
    --max-steps 3 --out "$STASH/runs/sft-smoke"
  cp "$STASH/runs/sft-smoke/metrics.jsonl" "$OUT/sft-smoke-metrics.jsonl" 2>/dev/null
  # SmolLM2-1.7B's shape with SmolLM2's vocabulary: what a GPU is for.
  run make-big 120 python3 bench/gpu/torch_ref.py make --like $DEV/smol-hf --out "$B" --dtype bf16 \
    --hidden 2048 --layers 24 --inter 8192 --heads 32 --kv-heads 32
  for b in 1 8; do
    run "decode-big-bf16-b$b" 90 "$S" bench decode --device cuda --model "$B" --weights bf16 \
      --prompt-file bench/prompt.txt --new-tokens 128 --batch "$b" --repeats 2 --json
  done
  run train-big-bf16-b4 120 "$S" bench train --device cuda --model "$B" --dtype bf16 --batch 4 --seq-len 256 --steps 3 --json
  run torch-big-bf16-b4 120 python3 bench/gpu/torch_ref.py train --model "$B" --dtype bf16 --batch 4 --seq-len 256 --steps 3
  ;;
rl)
  [ -f "$GGUF" ] || { log "no model: the smoke call's part 1 is gone (machine given back)"; exit 3; }
  D=$STASH/data/primevul_plus.jsonl
  # Steps that fit RL_SECONDS with three arms sharing the GPU, from the smoke call's s/step.
  sps=$(python3 -c 'import json, sys; print(max(json.loads(l)["seconds"] for l in open(sys.argv[1])))' \
    "$STASH/runs/rl-smoke/metrics.jsonl" 2>/dev/null || echo 20)
  steps=$(python3 -c 'import sys; print(max(3, min(30, int(float(sys.argv[2]) / (float(sys.argv[1]) * 1.8)))))' \
    "$sps" "${RL_SECONDS:-300}")
  log "smoke s/step $sps -> $steps steps per arm"
  for g in token instance both; do
    ( RAYON_NUM_THREADS=5 timeout $(( ${RL_SECONDS:-300} + 60 )) "$S" train rl --steps "$steps" --device cuda --data "$D" --model "$GGUF" \
        --init $DEV/sft --config bench/gpu/rl.toml --reward-granularity "$g" --seed 7 \
        --out "$STASH/runs/rl-$g" >"$OUT/rl-$g.txt" 2>"$OUT/rl-$g.err"
      cp "$STASH/runs/rl-$g/metrics.jsonl" "$OUT/rl-$g-metrics.jsonl" ) &
  done
  wait
  log "rl arms done"
  # Every model decodes the same dense f32 weights with the same seed and sampling.
  for m in base sft token instance both; do
    case $m in base) ad=() ;; sft) ad=(--adapter $DEV/sft) ;; *) ad=(--adapter "$STASH/runs/rl-$m/final") ;; esac
    [ ${#ad[@]} -eq 0 ] || [ -d "${ad[1]}" ] || continue
    ( RAYON_NUM_THREADS=3 timeout "${EVAL_SECONDS:-120}" "$S" eval --bench jsonl --data "$STASH/data/heldout.jsonl" \
        --model "$GGUF" --weights f32 "${ad[@]}" --n 4 --temperature 0.7 --max-new-tokens 256 \
        --seed 1 --out "$STASH/eval/$m" >"$OUT/eval-$m.txt" 2>"$OUT/eval-$m.err"
      cp "$STASH/eval/$m/metrics.json" "$OUT/eval-$m-metrics.json" ) &
  done
  wait
  ;;
esac
log "done"
