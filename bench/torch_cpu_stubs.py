#!/usr/bin/env python3
"""Make PyPI's CUDA build of torch importable on a CPU-only machine without
downloading the ~3 GB of nvidia-* / cuda-toolkit wheels it depends on.

PyPI only hosts CUDA builds of torch for linux/x86_64 (the CPU-only wheels live
on the PyTorch download server, which this project's machines cannot reach).
`pip install --no-deps torch` installs fine, but `import torch` then fails:
libtorch_cuda.so, libtorch_cpu.so (via CUPTI), libtorch_python.so, ... have
DT_NEEDED entries on libcudart, libcublas, libcudnn, libnccl, ... and Python
loads extension modules with RTLD_NOW, so every referenced symbol must resolve.

This script reads the dynamic symbol tables of torch's own shared objects with
binutils' `nm`/`readelf` and, for every CUDA library torch links against,
compiles a tiny stub shared object with the right SONAME, the right symbol
version nodes and every symbol torch imports from it. Every stub function
returns 100 (cudaErrorNoDevice for the CUDA runtime; a non-zero error for the
other libraries), except *GetErrorString/*GetErrorName style functions, which
return a pointer to a static message. So torch sees "CUDA present but zero
devices" (torch.cuda.is_available() -> False, device_count() -> 0), and all CPU
code paths (libtorch_cpu.so: MKL/oneDNN/OpenMP kernels) are the real ones.

The stubs are written into torch/lib (which is `$ORIGIN` in torch's RUNPATH),
together with a marker file CPU_STUBS.txt. Weak undefined symbols are left
alone (torch probes them at run time). Needs gcc and binutils.

Usage: python torch_cpu_stubs.py            # in the venv that has torch
"""
from __future__ import annotations

import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

# Libraries we are willing to stub: CUDA toolkit / NVIDIA libraries only.
CUDA_LIB_RE = re.compile(
    r"^lib(cudart|cublas|cublasLt|cudnn|cufft|cufile|cupti|curand|cusolver|cusparse|"
    r"cusparseLt|nccl|nvrtc|nvJitLink|nvshmem_host|nvToolsExt|nvperf_host|cuda)\.so(\.\d+)*$"
)
# Unversioned symbols: which library provides them, by prefix.
PREFIX_TO_LIB_STEM = [
    ("cusparseLt", "libcusparseLt"),
    ("cuFile", "libcufile"),
    ("nccl", "libnccl"),
    ("nvshmem", "libnvshmem_host"),
]
# Version node names that are not the library's SONAME.
VERSION_TO_LIB_STEM = {"NVSHMEM": "libnvshmem_host"}

ERR = 100  # cudaErrorNoDevice


def torch_dir() -> str:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torch is not installed in this interpreter")
    return list(spec.submodule_search_locations)[0]


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def needed(path: str) -> list[str]:
    out = run(["readelf", "-d", path])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def undefined(path: str) -> list[tuple[str, str]]:
    """(binding, symbol[@version]) of undefined dynamic symbols."""
    res = []
    for line in run(["nm", "-D", "--undefined-only", path]).splitlines():
        parts = line.split()
        if len(parts) >= 2:
            res.append((parts[-2], parts[-1]))
    return res


def main() -> None:
    tdir = torch_dir()
    libdir = os.path.join(tdir, "lib")
    objs = [os.path.join(libdir, f) for f in sorted(os.listdir(libdir)) if ".so" in f]
    objs += [os.path.join(tdir, f) for f in os.listdir(tdir) if f.startswith("_C") and f.endswith(".so")]
    own = set(os.listdir(libdir))
    marker = os.path.join(libdir, "CPU_STUBS.txt")
    stubbed_before = set()
    if os.path.exists(marker):
        stubbed_before = set(open(marker).read().split())
    # Leave our own previous stubs out of the scan.
    objs = [o for o in objs if os.path.basename(o) not in stubbed_before]

    # SONAMEs to stub, keyed by stem ("libcublas" -> "libcublas.so.13").
    sonames: dict[str, str] = {}
    # libcaffe2_nvrtc.so (needs libcuda.so.1, the driver) is dlopen()ed lazily
    # by torch only when NVRTC is used; it is not scanned.
    lazy = {"libcaffe2_nvrtc.so"}
    scan = [o for o in objs if os.path.basename(o) not in lazy]
    for o in scan:
        for n in needed(o):
            if n in own and n not in stubbed_before:
                continue
            if CUDA_LIB_RE.match(n):
                sonames[n.split(".so")[0]] = n

    syms: dict[str, dict[str, set[str]]] = collections.defaultdict(lambda: collections.defaultdict(set))
    for o in scan:
        for bind, s in undefined(o):
            if bind in ("w", "v"):
                continue  # weak: torch checks for presence at run time
            if "@" in s:
                name, ver = s.split("@", 1)
                ver = ver.lstrip("@")
                stem = VERSION_TO_LIB_STEM.get(ver, ver.split(".so")[0])
                if stem in sonames:
                    syms[stem][ver].add(name)
            else:
                for prefix, stem in PREFIX_TO_LIB_STEM:
                    if s.startswith(prefix) and stem in sonames:
                        syms[stem][""].add(s)
                        break

    if not sonames:
        print("torch links no CUDA libraries; nothing to stub")
        return

    made = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem, soname in sorted(sonames.items()):
            by_ver = syms.get(stem, {})
            names = sorted(set().union(*by_ver.values())) if by_ver else []
            c = [
                "/* CPU-only stub generated by bench/torch_cpu_stubs.py */",
                'static const char msg[] = "CUDA is not available (CPU-only stub library)";',
            ]
            for n in names:
                if re.search(r"(ErrorString|ErrorName|GetStatusString|GetStatusName|GetErrorStr)$", n):
                    c.append(f"const char *{n}(void) {{ return msg; }}")
                else:
                    c.append(f"long {n}(void) {{ return {ERR}; }}")
            src = os.path.join(tmp, stem + ".c")
            open(src, "w").write("\n".join(c) + "\n")
            cmd = ["gcc", "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{soname}", "-o",
                   os.path.join(libdir, soname), src]
            versions = [v for v in by_ver if v]
            if versions:
                vs = os.path.join(tmp, stem + ".map")
                with open(vs, "w") as f:
                    for v in versions:
                        f.write(f"{v} {{ global: {'; '.join(sorted(by_ver[v]))}; }};\n")
                cmd.insert(1, f"-Wl,--version-script={vs}")
            subprocess.run(cmd, check=True)
            made.append(soname)
            print(f"stub {soname}: {len(names)} symbols")
    with open(marker, "w") as f:
        f.write("\n".join(sorted(set(made) | stubbed_before)) + "\n")
    print(f"wrote {len(made)} stubs into {libdir}")


if __name__ == "__main__":
    main()
