#!/usr/bin/env bash
# Packs what bench/gpu/run.sh needs on a GPU machine into two folders of under 64 MiB each (one
# per device call): .dev/ for `run.sh smoke` (the CUDA binary, xz; tokenizer and config files;
# data; the first part of the GGUF) and .dev2/ for `run.sh rl` (the GGUF's second part, the SFT
# adapter, data). Both are git-ignored. Needs scripts/build-cuda.sh's binary and a finished
# `scripts/quickstart.sh --minutes 40 --out runs/quickstart-40` (its PrimeVul+, held-out tasks
# and SFT adapter). Usage: bench/gpu/pack.sh [QUICKSTART_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
q=${1:-runs/quickstart-40}
bin=target-cuda/release/srcode
[ -x $bin ] || { echo "pack: $bin is missing; run scripts/build-cuda.sh" >&2; exit 2; }
for f in "$q/data/primevul_plus.jsonl" "$q/heldout.jsonl" "$q/sft/final/adapter_model.safetensors"; do
  [ -f "$f" ] || { echo "pack: $f is missing; run scripts/quickstart.sh --minutes 40 --out $q" >&2; exit 2; }
done
gguf=$(./target/release/srcode model path)
rm -rf .dev .dev2
mkdir -p .dev/data .dev2/data .dev2/sft
strip -o .dev/srcode $bin
xz -T0 -6 .dev/srcode
./target/release/srcode model export --out .dev/hf-tmp >/dev/null
mkdir -p .dev/smol-hf
for f in config.json tokenizer.json tokenizer_config.json generation_config.json; do
  mv .dev/hf-tmp/$f .dev/smol-hf/
done
rm -rf .dev/hf-tmp
cp "$q/data/primevul_plus.jsonl" "$q/heldout.jsonl" .dev/data/
cp .dev/data/* .dev2/data/
cp "$q"/sft/final/adapter_* .dev2/sft/
head -c 50000000 "$gguf" >.dev/gguf.part1
tail -c +50000001 "$gguf" >.dev2/gguf.part2
du -sh .dev .dev2
echo "device calls: run(carry=[.dev], 'export OUT; bash bench/gpu/run.sh smoke'), then within 30 s"
echo "              run(carry=[.dev2], 'export OUT; bash bench/gpu/run.sh rl')"
