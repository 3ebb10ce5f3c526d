#!/usr/bin/env python3
"""GPU proof of the shipped ensemble: does the CUDA provider really run every member, does it agree with the CPU
provider, how fast is it, and do fp16 members pass the parity gate. Run through benchmarks/device_check.sh
(which installs onnxruntime-gpu on the device machine first); ``--provider cpu`` is the dry mode that runs the
same checks with the CPU provider on both sides, so the script can be tested on a machine without a GPU.

Needs only numpy, scipy, onnx and onnxruntime(-gpu): no SimpleITK (the device machine has none), so the sample
case is read by a minimal MetaImage reader and the synthetic cases are made here.

Checks, each recorded in the JSON written to --out:
  placement  every member's session runs on the provider, and ORT's profile shows every Conv / ConvTranspose
             (also fused) node on it (no silent CPU fallback per node)
  parity     masks identical and fused probability within 1e-4 of the CPU provider, on the sample and synthetic
             cases (also with TF32 off, to tell TF32 from a real difference)
  timing     session load, first case, median of repeated cases
  fp16       members converted to float16 (I/O kept float32): masks identical, probability within 1e-3
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARITY_FP32, PARITY_FP16 = 1e-4, 1e-3
# Compute nodes, also after ORT's fusions (FusedConv, FusedMatMul, ...).
COMPUTE_OPS = re.compile(r"Conv|MatMul|Gemm")
log = logging.getLogger("device_check")


# ------------------------------------------------------------------------------------------------- cases


def read_mha(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(z, y, x) float32 array and (z, y, x) spacing of a single-file MetaImage (raw or zlib-compressed)."""
    raw = path.read_bytes()
    end = raw.index(b"ElementDataFile = LOCAL") + len(b"ElementDataFile = LOCAL")
    end = raw.index(b"\n", end) + 1
    header = dict(line.split(" = ", 1) for line in raw[:end].decode().splitlines() if " = " in line)
    dims = [int(v) for v in header["DimSize"].split()]
    spacing = [float(v) for v in header["ElementSpacing"].split()]
    dtype = {"MET_FLOAT": np.float32, "MET_SHORT": np.int16, "MET_UCHAR": np.uint8, "MET_DOUBLE": np.float64}[
        header["ElementType"]]
    data = raw[end:]
    if header.get("CompressedData", "False") == "True":
        data = zlib.decompress(data)
    array = np.frombuffer(data, dtype=dtype).reshape(dims[::-1]).astype(np.float32)
    return array, tuple(spacing[::-1])


def sample_case() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    root = REPO / "test" / "input" / "images"
    adc, spacing = read_mha(next((root / "skull-stripped-adc-brain-mri").glob("*.mha")))
    zadc, _ = read_mha(next((root / "z-score-adc").glob("*.mha")))
    return adc, zadc, spacing


def synthetic_case(shape, spacing, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """An ellipsoidal 'brain' with ADC ~1200 and a few low-ADC lesions (Z-ADC below -2 there), on a given grid."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    radii = np.array([0.42, 0.40, 0.36]) * np.array(shape) * np.array(spacing)
    brain = (z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2 <= 1
    adc = np.where(brain, 1200 + 150 * rng.standard_normal(shape), 0).astype(np.float32)
    lesions = np.zeros(shape, bool)
    for _ in range(3):
        c = rng.uniform(-0.4, 0.4, 3) * radii
        r = rng.uniform(5, 14)
        lesions |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r ** 2) & brain
    adc[lesions] *= 0.45
    zadc = np.where(brain, (adc - 1200) / 150, 0).astype(np.float32)
    return np.clip(adc, 0, None), zadc, tuple(spacing)


def cases() -> dict[str, tuple]:
    return {"sample": sample_case(),
            "synthetic_2mm": synthetic_case((52, 128, 128), (2.0, 2.0, 2.0), 1),
            "synthetic_6mm": synthetic_case((20, 160, 160), (6.0, 1.375, 1.375), 2),
            "synthetic_4mm_odd": synthetic_case((23, 131, 117), (4.0, 1.5, 1.6), 3)}


# --------------------------------------------------------------------------------------------- pipeline


def segment(members, manifest, adc, zadc, spacing) -> tuple[np.ndarray, np.ndarray]:
    """The runtime's ensemble and postprocessing (hieseg.app.pipeline.Segmenter.segment without the file I/O)."""
    from hieseg.engine import preprocess
    from hieseg.engine.ensemble import run_ensemble
    from hieseg.engine.postprocess import postprocess

    crop = preprocess.crop_to_brain(adc, spacing, manifest.crop_margin_mm)
    prob = run_ensemble([m.runner() for m in members], adc, zadc, spacing, crop).probability
    mask = postprocess(prob, preprocess.brain_mask(adc), spacing, manifest.mask_rule).astype(np.uint8)
    return mask, prob


def compare(got, ref, tolerance: float) -> dict:
    (mask, prob), (ref_mask, ref_prob) = got, ref
    diff = float(np.abs(prob - ref_prob).max())
    differing = int((mask != ref_mask).sum())
    return {"max_abs_probability_diff": diff, "mask_voxels_differing": differing,
            "ok": differing == 0 and diff <= tolerance}


# ---------------------------------------------------------------------------------------------- placement


def placement(member, provider_list, threads) -> dict:
    """Run one member once with ORT profiling and count its compute nodes per provider that executed them."""
    import onnxruntime as ort

    from hieseg.engine.sessions import session_options
    from hieseg.files import read_verified

    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="hieseg-profile-")) / member.name)
    session = ort.InferenceSession(read_verified(member.path, member.sha256), sess_options=opts,
                                   providers=provider_list)
    inp = session.get_inputs()[0]
    shape = [1, len(member.channels)] + ([20, 96, 80] if member.kind == "3d" else [96, 80])
    session.run(None, {inp.name: np.zeros(shape, np.float32)})
    events = json.loads(Path(session.end_profiling()).read_text())
    counts: dict[str, dict[str, int]] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args and COMPUTE_OPS.search(args.get("op_name", "")):
            if event["name"].endswith("_kernel_time"):
                counts.setdefault(args["op_name"], {}).setdefault(args["provider"], 0)
                counts[args["op_name"]][args["provider"]] += 1
    return {"session_providers": session.get_providers(), "compute_nodes": counts}


# -------------------------------------------------------------------------------------------------- fp16


def to_fp16(data: bytes) -> bytes:
    """A float16 copy of a float32 graph with float32 input and output (Cast nodes at both ends)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16),
                                                        attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    inp, out = graph.input[0].name, graph.output[0].name
    for node in graph.node:
        node.input[:] = [f"{inp}_fp16" if n == inp else n for n in node.input]
        node.output[:] = [f"{out}_fp16" if n == out else n for n in node.output]
    graph.node.insert(0, helper.make_node("Cast", [inp], [f"{inp}_fp16"], to=TensorProto.FLOAT16))
    graph.node.append(helper.make_node("Cast", [f"{out}_fp16"], [out], to=TensorProto.FLOAT))
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fp16_members(members, device, threads):
    from hieseg.engine.ensemble import LoadedMember
    from hieseg.engine.providers import provider_plan
    from hieseg.engine.sessions import session_from_bytes
    from hieseg.files import read_verified

    out = []
    for lm in members:
        part = lm.member
        data = to_fp16(read_verified(part.path, part.sha256))
        session, provider = session_from_bytes(data, f"{part.name} (fp16)", provider_plan(device, threads=threads))
        out.append(LoadedMember(part, session, provider))
    return out


# --------------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the real check; cpu: dry run with the CPU provider on both sides")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per case")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    result: dict = {"provider": args.provider, "dry_run": args.provider == "cpu", "checks": {}}
    try:
        import torch  # loads the CUDA 12 / cuDNN 9 libraries that onnxruntime-gpu needs, when torch has them

        result["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    except ImportError:
        result["torch"] = None
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and args.provider == "cuda":
        try:
            ort.preload_dlls()  # CUDA / cuDNN from the nvidia-* wheels torch brought, if any
        except Exception as exc:  # noqa: BLE001 - diagnostic only
            result["preload_dlls_error"] = str(exc)[:300]
    result["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}

    from hieseg.engine.ensemble import load_members
    from hieseg.engine.manifest import load_manifest
    from hieseg.engine.providers import CPU, CUDA, cuda_provider_options

    manifest = load_manifest(args.model)
    target = CUDA if args.provider == "cuda" else CPU
    t = time.perf_counter()
    reference = load_members(manifest, "cpu", threads=args.threads)
    result["cpu_load_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    members = load_members(manifest, args.provider, threads=args.threads)  # --device cuda: raises on fallback
    result["load_s"] = round(time.perf_counter() - t, 3)
    result["member_providers"] = {lm.member.name: lm.provider for lm in members}

    # 1. Placement: every member's session on the target, every compute node executed by it.
    provider_list = ([(CUDA, cuda_provider_options()), CPU] if target == CUDA else [CPU])
    result["placement"] = {m.name: placement(m, provider_list, args.threads) for m in manifest.members}
    placed = all(set(p["session_providers"][:1]) == {target}
                 and all(set(by) == {target} for by in p["compute_nodes"].values()) and p["compute_nodes"]
                 for p in result["placement"].values())
    result["checks"]["every_member_on_provider"] = placed

    # 2. Parity with the CPU provider (and, on CUDA, with TF32 off), 3. timing.
    data = cases()
    refs = {name: segment(reference, manifest, *case) for name, case in data.items()}
    parity, timing = {}, {}
    for name, case in data.items():
        t = time.perf_counter()
        got = segment(members, manifest, *case)
        first = time.perf_counter() - t
        parity[name] = compare(got, refs[name], PARITY_FP32)
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            segment(members, manifest, *case)
            runs.append(time.perf_counter() - t)
        timing[name] = {"first_s": round(first, 4), "median_s": round(statistics.median(runs), 4),
                        "shape_zyx": list(case[0].shape)}
        log.info("%s: parity %s, first %.3f s, median %.3f s", name, parity[name], first, statistics.median(runs))
    result["parity_fp32"], result["timing"] = parity, timing
    result["checks"]["parity_fp32"] = all(p["ok"] for p in parity.values())
    if target == CUDA:
        import hieseg.engine.providers as sessions

        default_options = sessions.cuda_provider_options
        sessions.cuda_provider_options = lambda *a, **k: dict(default_options(*a, **k), use_tf32=0)
        try:
            no_tf32 = load_members(manifest, "cuda", threads=args.threads)
            result["parity_fp32_tf32_off"] = {name: compare(segment(no_tf32, manifest, *case), refs[name],
                                                            PARITY_FP32) for name, case in data.items()}
        finally:
            sessions.cuda_provider_options = default_options

    # 4. fp16 members with the parity gate.
    try:
        half = fp16_members(members, args.provider, args.threads)
        result["fp16_member_providers"] = {lm.member.name: lm.provider for lm in half}
        fp16 = {}
        for name, case in data.items():
            segment(half, manifest, *case)
            t = time.perf_counter()
            got = segment(half, manifest, *case)
            fp16[name] = dict(compare(got, refs[name], PARITY_FP16), seconds=round(time.perf_counter() - t, 4))
        result["fp16"] = fp16
        result["checks"]["fp16_parity"] = all(v["ok"] for v in fp16.values())
    except Exception as exc:  # noqa: BLE001 - e.g. no float16 Conv kernel in the CPU provider (dry run)
        result["fp16"] = {"error": re.sub(r"\s+", " ", str(exc))[:400]}
        result["checks"]["fp16_parity"] = None

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({"checks": result["checks"], "member_providers": result["member_providers"],
                      "timing": timing, "load_s": result["load_s"]}, indent=1))
    required = [result["checks"]["every_member_on_provider"], result["checks"]["parity_fp32"]]
    return 0 if all(required) else 1


if __name__ == "__main__":
    raise SystemExit(main())
