"""This machine's matrix-multiply peak through OpenVINO's CPU plugin, in float32 and in bfloat16 (AMX / AVX512_BF16
where the CPU has them), on a given number of threads: the ceiling a network's FLOP rate is compared against.

    .venv/bin/python benchmarks/gemm_peak.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def gemm_peak(precision: str, threads: int, n: int = 2048, repeats: int = 8) -> dict:
    """Best GFLOP/s of an n x n x n MatMul (2 n^3 FLOPs) compiled by OpenVINO with that inference precision."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], ov.Type.f32, name="a")
    b = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a], "gemm")
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                      "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    request.infer({0: x})  # warm-up: kernels, thread pool, page faults
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        request.infer({0: x})
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {"precision": precision, "compiled_precision": str(got), "threads": threads, "n": n,
            "gflops": round(max(rates), 1), "ov": ov.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(json.dumps({p: gemm_peak(p, args.threads) for p in ("f32", "bf16")}, indent=1))


if __name__ == "__main__":
    main()
