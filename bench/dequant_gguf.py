#!/usr/bin/env python3
"""Write a copy of a GGUF with every tensor dequantised to F32 (same metadata).

  python bench/dequant_gguf.py --model GGUF --out /tmp/model.f32.gguf

Used for correctness checks only: llama.cpp multiplies Q4_1 weights with
activations quantised to 8 bits, so its logits differ from an f32 model's by a
few tenths. Running llama.cpp on the F32 copy (decode_llamacpp.py --model
COPY, or train_torch.py --reference-model COPY) gives a reference that should
agree with a correct f32 implementation (PyTorch here, srcode's f32 path) to
~1e-2 (llama.cpp still keeps its KV cache in f16).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import numpy as np  # noqa: E402
from gguf import GGUFReader, GGUFValueType, GGUFWriter  # noqa: E402
from gguf.quants import dequantize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=common.default_model_path())
    p.add_argument("--out", required=True)
    a = p.parse_args()
    r = GGUFReader(common.require_file(a.model, "model file"))
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(a.out, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            w.add_key_value(key, 0, GGUFValueType.UINT32)  # LLAMA_FTYPE_ALL_F32
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub)
    for t in r.tensors:
        arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w.add_tensor(t.name, arr.reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    common.log(f"wrote {a.out} ({os.path.getsize(a.out) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
