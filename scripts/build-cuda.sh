#!/usr/bin/env bash
# Builds srcode with candle's CUDA backend on a machine without a GPU or a CUDA install, for
# carrying to a GPU machine: nvcc and the CUDA libraries come from PyPI wheels, libcuda is a
# link-time stub (the real driver is found at run time). Output: $TARGET/release/srcode.
# Usage: scripts/build-cuda.sh [TARGET_DIR]   (default target-cuda/)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-target-cuda}
VENV=${SRCODE_CUDA_VENV:-.venv-cuda}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cublas==13.0.*" "nvidia-curand" "nvidia-cuda-nvrtc==13.0.*"
fi
CU=$(echo "$PWD/$VENV"/lib/python3*/site-packages/nvidia/cu13)
LINK="$PWD/$TARGET/cuda-link"
mkdir -p "$LINK"
if [ ! -e "$LINK/libcuda.so" ]; then
  # Every driver entry point cudarc declares, as an empty function: enough to link against.
  SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -1)
  grep -oP '^\s+fn \Kcu\w+(?=\()' "$SYS" | sort -u | sed 's/.*/void &(void){}/' >"$LINK/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so.1" "$LINK/stub.c"
  ln -sf libcuda.so.1 "$LINK/libcuda.so"
  for l in cublas cublasLt curand nvrtc cudart; do
    ln -sf "$(ls "$CU"/lib/lib$l.so.* | grep -v -e alt -e builtins | head -1)" "$LINK/lib$l.so"
  done
fi
export PATH="$CU/bin:$PATH" CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# Portable x86-64 (AVX2/FMA) rather than this machine's native set: the binary runs elsewhere.
export RUSTFLAGS="-C target-cpu=x86-64-v3 -L native=$LINK"
cargo build --release --locked -p srcode --features cuda --target-dir "$TARGET"
ls -la "$TARGET/release/srcode"
