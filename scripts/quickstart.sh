#!/usr/bin/env bash
# The main job on the embedded default model. Today: build, fetch SmolLM2-135M-Instruct, show what
# it is, and have it answer a coding request. Grows into the full Vul2Safe → SFT → RL → evaluation
# pipeline as those stages land.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p srcode
./target/release/srcode model fetch
./target/release/srcode model info | head -8
./target/release/srcode generate --chat --max-new-tokens 200 \
  --prompt "Write a C function that copies a string into a fixed-size buffer safely."
