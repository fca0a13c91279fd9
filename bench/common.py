"""Small helpers shared by the benchmark scripts (standard library only)."""
from __future__ import annotations

import os
import resource
import statistics
import sys

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROMPT_FILE = os.path.join(BENCH_DIR, "prompt.txt")


def srcode_home() -> str:
    return os.environ.get("SRCODE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "srcode")


def default_model_path() -> str:
    """Where `srcode model fetch` puts the model: $SRCODE_HOME/models/<file>."""
    return os.path.join(srcode_home(), "models", MODEL_FILE)


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        sys.exit(f"error: {what} not found: {path} (pass --{what.split()[0]} PATH, "
                 f"or run `srcode model fetch` for the default model path)")
    return path


def read_prompt(path: str) -> str:
    # Read verbatim: the trailing newline after "assistant" is part of the ChatML prompt.
    with open(path, encoding="utf-8") as f:
        return f.read()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def set_thread_env(n: int) -> None:
    """Pin every thread-pool knob we know of to n (must run before importing torch/llama_cpp)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(n)


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)
