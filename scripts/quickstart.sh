#!/usr/bin/env bash
# The main job on the embedded default model. Today: build, fetch SmolLM2-135M-Instruct, show what
# it is, and have it answer two coding requests — one it handles, and the secure-C request whose
# weak answer is what the Vul2Safe → SFT → RL pipeline (landing next) exists to improve. Grows into
# that whole pipeline as its stages land.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p srcode
./target/release/srcode model fetch
./target/release/srcode model info | head -8
echo; echo "== a Python request =="
./target/release/srcode generate --chat --max-new-tokens 160 \
  --prompt "Write a Python function that checks whether a number is prime."
echo; echo "== a secure-C request (the untrained model's baseline) =="
./target/release/srcode generate --chat --max-new-tokens 200 --temperature 0.7 --top-p 0.9 --seed 1 \
  --prompt "Write a C function that copies a string into a fixed-size buffer safely."
