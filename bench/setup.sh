#!/usr/bin/env bash
# Create bench/.venv with what the Python baselines need:
#   numpy, gguf              GGUF reader (train_torch.py)
#   llama-cpp-python         llama.cpp, built from source for this CPU (decode_llamacpp.py)
#   torch                    PyTorch eager baseline (train_torch.py)
# Idempotent: every step is skipped when its package already imports.
#
# Environment knobs:
#   PYTHON=python3             interpreter the venv is made from
#   VENV=bench/.venv           where the venv goes
#   TORCH_MODE=stub|full       stub (default): `pip install --no-deps torch` (~540 MB wheel) plus the
#                              pure-Python deps, then bench/torch_cpu_stubs.py generates tiny stub
#                              libraries for the CUDA libs torch links against, so `import torch`
#                              works on CPU. full: plain `pip install torch`, which also pulls
#                              ~3 GB of nvidia-*/cuda-toolkit wheels that a CPU never uses.
#   TORCH_VERSION, LLAMA_CPP_PYTHON_VERSION, GGUF_VERSION   pinned versions (below)
#   CMAKE_ARGS                 extra CMake flags for llama.cpp (added after -DGGML_NATIVE=ON)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VENV:-$here/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_MODE="${TORCH_MODE:-stub}"
TORCH_VERSION="${TORCH_VERSION:-2.15.0}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
GGUF_VERSION="${GGUF_VERSION:-0.19.0}"

log() { printf '[setup] %s\n' "$*" >&2; }
py() { "$venv/bin/python" "$@"; }
pipi() { "$venv/bin/python" -m pip install --disable-pip-version-check "$@"; }
imports() { py -c "import $1" >/dev/null 2>&1; }
# `pip show` succeeds when a distribution is installed even if it does not import.
installed() { py -m pip show -q "$1" >/dev/null 2>&1; }
timed() { local t0=$SECONDS; "$@"; log "  took $((SECONDS - t0)) s"; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv $venv from $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$venv"
fi

if imports numpy && imports gguf; then
  log "numpy, gguf: already installed"
else
  log "installing numpy, gguf==$GGUF_VERSION"
  timed pipi -q numpy "gguf==$GGUF_VERSION"
fi

if imports llama_cpp; then
  log "llama-cpp-python: already installed ($(py -c 'import llama_cpp; print(llama_cpp.__version__)'))"
else
  # llama-cpp-python is an sdist: scikit-build-core fetches cmake and ninja from PyPI and
  # compiles the vendored llama.cpp. GGML_NATIVE=ON = -march=native (AVX2/FMA/F16C here).
  # --no-cache-dir: never reuse a wheel that was built natively for some other CPU.
  # LLAVA_BUILD=OFF skips the multimodal library (mtmd), which the benchmark does not use.
  log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from source (several minutes on 2 cores)"
  timed env CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-cache-dir \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi

torch_ok() { py -c "import torch; torch.ones(2, requires_grad=True).sum().backward()" >/dev/null 2>&1; }
if torch_ok; then
  log "torch: already installed ($(py -c 'import torch; print(torch.__version__)'))"
else
  case "$TORCH_MODE" in
    full)
      log "installing torch==$TORCH_VERSION with all its CUDA dependencies (~3.5 GB download)"
      timed pipi -q "torch==$TORCH_VERSION"
      ;;
    stub)
      for tool in gcc nm readelf; do
        command -v "$tool" >/dev/null || { log "TORCH_MODE=stub needs $tool (gcc, binutils)"; exit 1; }
      done
      if ! installed torch; then
        log "installing torch==$TORCH_VERSION without dependencies (~540 MB wheel, ~1.2 GB unpacked)"
        timed pipi -q --no-deps "torch==$TORCH_VERSION"
      fi
      log "installing torch's pure-Python dependencies"
      # pip warns that torch's CUDA requirements are missing: expected in this mode.
      timed pipi -q filelock typing-extensions sympy networkx jinja2 fsspec "setuptools>=77.0.3" 2>&1 \
        | grep -v -E "requires (cuda-|nvidia-|triton)|dependency resolver|dependency conflicts" || true
      log "generating CPU-only stub libraries for torch's CUDA dependencies"
      py "$here/torch_cpu_stubs.py"
      ;;
    *) log "TORCH_MODE must be stub or full"; exit 1 ;;
  esac
fi

# semgrep for the scan comparison (bench/scan_vs_semgrep.py), pinned.
SEMGREP_VERSION="${SEMGREP_VERSION:-1.182.0}"
if [[ -x "$venv/bin/semgrep" ]]; then
  log "semgrep: already installed"
else
  log "installing semgrep==$SEMGREP_VERSION"
  timed pipi -q "semgrep==$SEMGREP_VERSION"
fi

log "checking the installs"
py - <<'EOF'
import importlib.metadata as md
import gguf, llama_cpp, numpy, torch
x = torch.randn(64, 64, requires_grad=True)
(x @ x).sum().backward()
assert x.grad is not None and not torch.cuda.is_available()
print(f"[setup] ok: numpy {numpy.__version__}, gguf {md.version('gguf')}, "
      f"llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__} "
      f"(CPU: {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()})")
print("[setup] llama.cpp:", llama_cpp.llama_print_system_info().decode().strip())
EOF
du -sh "$venv" | sed 's/^/[setup] venv size: /'
