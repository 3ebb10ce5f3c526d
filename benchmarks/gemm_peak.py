"""This machine's matrix-multiply peak through OpenVINO's CPU plugin, in float32 and in bfloat16 (AMX / AVX512_BF16
where the CPU has them), on a given number of threads: the ceiling a network's FLOP rate is compared against.

    .venv/bin/python benchmarks/gemm_peak.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def gemm_peak(precision: str, threads: int, n: int = 2048, chain: int = 4, repeats: int = 10) -> dict:
    """Best GFLOP/s of ``chain`` chained n x n MatMuls (2 n^3 FLOPs each) compiled by OpenVINO with that inference
    precision. A chain keeps the activations in the plugin's own layout and precision between the products, as a
    network does; the best of several runs, because this machine's neighbours make single runs noisy."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], ov.Type.f32, name="a")
    x = a
    for _ in range(chain):  # scaled so that values stay O(1) through the chain
        x = ops.matmul(x, ops.constant((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)), False, False)
    compiled = ov.Core().compile_model(ov.Model([x], [a], "gemm"), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                                         "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    inp = rng.standard_normal((n, n)).astype(np.float32)
    request.infer({0: inp})  # warm-up: kernels, thread pool, page faults
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        request.infer({0: inp})
        rates.append(2 * n**3 * chain / (time.perf_counter() - t) / 1e9)
    return {"precision": precision, "compiled_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "threads": threads, "n": n, "chain": chain, "gflops": round(max(rates), 1),
            "median_gflops": round(float(np.median(rates)), 1), "ov": ov.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from hieseg.engine.openvino_engine import cpu_has_native_bf16

    # bf16 only where the CPU runs it natively: elsewhere OpenVINO would time an f32 fallback under a bf16 name
    precisions = ("f32", "bf16") if cpu_has_native_bf16() else ("f32",)
    print(json.dumps({p: gemm_peak(p, args.threads) for p in precisions}, indent=1))


if __name__ == "__main__":
    main()
