#!/usr/bin/env python3
"""Benchmark of the shipped ensemble: seconds per stage, total per case, peak RSS, throughput, cold start,
the ORT/torch-eager speed ratio on identical weights, and the container; with the execution provider as a
dimension (ONNX Runtime's CPU provider, OpenVINO, CUDA) and the distance to the machine's limit (each network's
FLOPs per case, counted from its ONNX graph, over its time, against a float32 GEMM's rate on the same threads).
Prints figures and writes one JSON file that can be compared across commits (default
``.cache/bench/bench-<commit>.json``); ``--doc docs/benchmark.md`` also renders the tables into that page.

    .venv/bin/python benchmarks/bench_inference.py                      # ORT CPU pipeline + cold start
    .venv/bin/python benchmarks/bench_inference.py --provider cpu --provider openvino=.venv-ov/bin/python \
        --torch training/.venv/bin/python --container --doc docs/benchmark.md

A provider is DEVICE[=PYTHON]: the python of an environment whose onnxruntime offers it (onnxruntime,
onnxruntime-openvino and onnxruntime-gpu cannot share one). Each measurement runs in its own process, so peak RSS
is that pipeline's alone. Cases: a fixed subset of real BONBID-HIE cases from ../shared/data covering both grid
families (128x128x~50 at 2 mm, 160x160x~20 at 1.375x1.375x6 mm). Figures, not pass/fail: targets are printed
beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# Fixed subset: 6 of the 2 mm family, 6 of the 1.375 x 1.375 x 6 mm family, spanning lesion burden.
CASES = ["MGHNICU_231", "MGHNICU_264", "MGHNICU_299", "MGHNICU_310", "MGHNICU_346", "MGHNICU_403",
         "MGHNICU_378", "MGHNICU_379", "MGHNICU_432", "MGHNICU_441", "MGHNICU_449", "MGHNICU_456"]
TARGETS = {"median_total_s": 10.0, "peak_rss_gib": 2.0, "ort_over_torch_speedup": 2.0, "cold_start_s": 3.0}
# Issue 15, on 2 cores: OpenVINO end to end >= 1.5x the CPU provider and >= 2x torch eager, median <= 3 s per
# case, peak RSS <= 1 GiB (bar 2 GiB).
OPENVINO_TARGETS = {"over_cpu_provider": 1.5, "over_torch": 2.0, "median_total_s": 3.0, "peak_rss_gib": 1.0,
                    "peak_rss_bar_gib": 2.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "p90": round(percentile(values, 0.9), 4),
            "n": len(values)}


# --------------------------------------------------------------------------------------- workers (subprocess)


def worker_ort(args: argparse.Namespace, naive: bool = False, share: bool | None = None) -> dict:
    """The real pipeline, sessions reused across cases, outputs written to a temporary folder.

    ``naive`` is the "before" of the optimisations: sessions built again for every case, each with its own
    memory arena (ONNX Runtime's defaults). ``share=False`` keeps one session per member where the provider
    would fuse the folds of a network (OpenVINO), to measure what the fusion saves. The first case runs once
    more at the end: its input shapes are known by then, so the difference is the first-use cost of new shapes.
    """
    import resource

    from hieseg.app.pipeline import Segmenter
    from hieseg.engine import sessions
    from hieseg.inputs.cases import find_cases
    from hieseg.outputs.paths import case_outputs

    if naive:
        sessions.use_shared_cpu_arena(False)
    cases = [c for c in find_cases(args.data) if c.case_id in set(args.cases)]
    t0 = time.perf_counter()
    segmenter = Segmenter(args.model, args.worker_device, threads=args.threads, share=share)
    load_s = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="hieseg-bench-"))
    per_case, wall = [], []
    try:
        for case in cases:
            t = time.perf_counter()
            if naive:
                segmenter = Segmenter(args.model, args.worker_device, threads=args.threads)
            result = segmenter.segment_case(case)
            report = segmenter.write_outputs(result, case_outputs(case, out))
            wall.append(time.perf_counter() - t)
            per_case.append({"case_id": case.case_id, "shape_zyx": list(result.geometry.shape_zyx),
                             "seconds": report["seconds"]})
        repeat = None
        if cases and not naive:
            t = time.perf_counter()
            result = segmenter.segment_case(cases[0])
            segmenter.write_outputs(result, case_outputs(cases[0], out))
            repeat = {"case_id": cases[0].case_id, "wall_s": time.perf_counter() - t}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"load_s": load_s, "cases": per_case, "wall_s": wall, "first_case_repeat": repeat,
            "sessions": len(segmenter.members), "providers": segmenter.providers,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "onnxruntime": _ort_version()}


def _ort_version() -> str:
    import importlib.metadata as md

    for dist in ("onnxruntime-openvino", "onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{dist} {md.version(dist)}"
        except md.PackageNotFoundError:
            continue
    return "unknown"


def worker_torch(args: argparse.Namespace) -> dict:
    """The same ensemble in torch eager (training package, same weights), same preprocessing and stitching."""
    import numpy as np
    import torch

    from hieseg.engine import preprocess
    from hieseg.engine.ensemble import Runner, run_ensemble
    from hieseg.engine.manifest import load_manifest
    from hieseg.inputs.cases import find_cases
    from hieseg.inputs.validate import load_pair
    from training.export import load_net, net_from_onnx

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    manifest = load_manifest(args.model)
    raw = json.loads((manifest.directory / "manifest.json").read_text())
    # Same weights as the ONNX files: the worker reports max |ORT - torch| of the fused probabilities on a case.
    trained = raw.get("provenance", {}).get("training", {}).get("members", {})
    nets, sources = {}, set()
    for member in manifest.members:
        # Members are named <network>_f<fold>; training keeps their weights in training/runs/cv/<network>/fold<k>.
        # Without the checkpoint (a new machine), the training architecture takes the ONNX file's weights.
        network, _, fold = member.name.rpartition("_f")
        if network not in trained:
            return {"skipped": f"{member.name}: no training record of network {network!r} in the manifest"}
        ckpt = REPO / "training" / "runs" / "cv" / network / f"fold{fold}" / "final.pt"
        arch = trained[network]["arch"]
        if ckpt.is_file():
            nets[member.name] = load_net(ckpt, member.kind, len(member.channels), arch)
            sources.add("training checkpoints")
        else:
            nets[member.name] = net_from_onnx(member.path, member.kind, len(member.channels), arch)
            sources.add("training architecture with the ONNX files' weights (batch norm folded)")

    def torch_fn(net):
        def run(batch):
            with torch.inference_mode():
                return torch.sigmoid(net(torch.from_numpy(batch))).numpy()
        return run

    # the runtime's own ensemble loop, with torch modules as the members' predictors
    runners = [Runner(m, torch_fn(nets[m.name]), m.batch_size, "torch") for m in manifest.members]
    cases = [c for c in find_cases(args.data) if c.case_id in set(args.cases)]
    wall, per_member, parity = [], [], None
    for case in cases:
        adc, zadc, geometry = load_pair(case.adc, case.zadc)
        t = time.perf_counter()
        crop = preprocess.crop_to_brain(adc, geometry.spacing_zyx, manifest.crop_margin_mm)
        out = run_ensemble(runners, adc, zadc, geometry.spacing_zyx, crop)
        fused = out.probability
        seconds = {k: v for k, v in out.timings.items() if k.startswith("member:")}
        wall.append(time.perf_counter() - t)
        per_member.append(seconds)
        if parity is None:
            from hieseg.app.pipeline import Segmenter

            _, ort_prob = Segmenter(args.model, "cpu").segment(adc, zadc, geometry)
            parity = float(np.abs(ort_prob - fused).max())
    return {"wall_s": wall, "member_s": per_member, "torch": torch.__version__, "weights": sorted(sources),
            "max_abs_diff_fused_probability": parity}


def worker_gemm(args: argparse.Namespace) -> dict:
    """The machine's float32 limit on these threads: the best of a few large numpy GEMMs (the BLAS's threads are
    set by the orchestrator through the environment, before numpy loads)."""
    import numpy as np

    n = 3072
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool, page faults
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return {"gflops": round(max(rates), 2), "all_gflops": [round(r, 2) for r in rates], "n": n,
            "numpy": np.__version__}


# ------------------------------------------------------------------------------------------ orchestration


def run_worker(python: str, kind: str, args: argparse.Namespace, model: Path | None = None,
               device: str = "cpu") -> dict:
    cmd = [python, __file__, "--worker", kind, "--data", str(args.data), "--threads", str(args.threads or 0),
           "--worker-device", device, "--cases", *args.cases]
    if model or args.model:
        cmd += ["--model", str(model or args.model)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if kind == "gemm":
        threads = str(args.threads or len(os.sched_getaffinity(0)))
        env.update(OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cold_start(args: argparse.Namespace, python: str = sys.executable, device: str = "cpu") -> dict:
    """Launch of ``inference.py`` on the bundled sample case, minus the case's own seconds."""
    out = Path(tempfile.mkdtemp(prefix="hieseg-cold-"))
    try:
        cmd = [python, str(REPO / "inference.py"), "--input", str(REPO / "test/input"), "--output", str(out),
               "--device", device, "-q"]
        if args.model:
            cmd += ["--model", str(args.model)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-300:]}
        case_s = json.loads((out / "hieseg-report.json").read_text())["seconds"]["total"]
        return {"wall_s": round(wall, 3), "case_s": case_s, "cold_start_s": round(wall - case_s, 3)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def container(args: argparse.Namespace) -> dict:
    image = args.image
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return {"skipped": "no container engine (eval \"$(../shared/tools/container-engine.sh)\" first)"}
    proc = subprocess.run(["docker", "image", "inspect", image, "--format", "{{.Size}}"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return {"skipped": f"image {image} not built (./build.sh)"}
    size = int(proc.stdout.strip())
    t = time.perf_counter()
    run = subprocess.run(["bash", str(REPO / "test_run.sh"), image], capture_output=True, text=True, cwd=REPO)
    result = {"image": image, "size_mb": round(size / 1e6, 1), "test_run_s": round(time.perf_counter() - t, 2),
              "test_run_ok": run.returncode == 0}
    if run.returncode != 0:
        result["test_run_error"] = (run.stderr.strip() or run.stdout.strip())[-300:]
    return result


def network_of(key: str) -> str:
    """'member:unet3d_f0' or 'member:unet3d_f0+unet3d_f1+...' (folds in one session) -> 'unet3d'."""
    names = key.split(":", 1)[1].split("+")
    return "+".join(sorted({name.rpartition("_f")[0] or name for name in names}))


def network_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """A case's member timings summed per network (all its folds, TTA included): comparable across providers,
    since OpenVINO runs a network's folds in one session."""
    out: dict[str, float] = {}
    for key, value in seconds.items():
        if key.startswith("member:"):
            out[network_of(key)] = out.get(network_of(key), 0.0) + value
    return out


def summarise(ort: dict, torch_res: dict | None) -> dict:
    stages: dict[str, list[float]] = {}
    networks: dict[str, list[float]] = {}
    for case in ort["cases"]:
        seconds = dict(case["seconds"])
        seconds["members (all, TTA incl.)"] = sum(v for k, v in seconds.items() if k.startswith("member:"))
        for stage, value in seconds.items():
            stages.setdefault(stage, []).append(value)
        for network, value in network_seconds(case["seconds"]).items():
            networks.setdefault(network, []).append(value)
    wall = ort["wall_s"]
    repeat = ort.get("first_case_repeat")
    out = {"stages": {k: stats(v) for k, v in stages.items()},
           "networks": {k: stats(v) for k, v in networks.items()},
           "total": stats(wall),
           "first_case_s": round(wall[0], 3) if wall else None,
           "first_case_again_s": round(repeat["wall_s"], 3) if repeat else None,
           "sessions": ort.get("sessions"),
           "after_first": stats(wall[1:]) if len(wall) > 1 else None,
           "throughput_cases_per_min": round(60 * len(wall) / sum(wall), 2),
           "peak_rss_gib": round(ort["peak_rss_mib"] / 1024, 3),
           "session_load_s": round(ort["load_s"], 3), "providers": ort["providers"],
           "onnxruntime": ort.get("onnxruntime")}
    if torch_res and "wall_s" in torch_res:
        n = min(len(torch_res["wall_s"]), len(wall))
        out["torch_total"] = stats(torch_res["wall_s"])
        out["ort_over_torch_speedup"] = round(sum(torch_res["wall_s"][:n]) / sum(wall[:n]), 2)
        torch_net: dict[str, float] = {}
        for seconds in torch_res.get("member_s", [])[:n]:
            for network, value in network_seconds(seconds).items():
                torch_net[network] = torch_net.get(network, 0.0) + value
        out["ort_over_torch_per_network"] = {
            network: round(torch_net[network] / sum(values[:n]), 2)
            for network, values in networks.items() if network in torch_net and sum(values[:n]) > 0}
    return out


# ----------------------------------------------------------------------------------- distance to the limit


def forward_items(member, image) -> list[tuple[tuple[int, ...], int]]:
    """(network input shape for one item, how many such items run) of one TTA pass of ``member`` over a prepared
    image (C, z, y, x), following the runtime's padding, tiling and blank-slice sharing (hieseg.engine.inferers)."""
    from hieseg.engine.inferers import padded_shape, tile_starts

    channels, spatial = image.shape[0], tuple(image.shape[1:])
    items = 1
    if member.kind == "2d":
        blank = ~image.reshape(channels, spatial[0], -1).any(axis=(0, 2))
        items, spatial = int((~blank).sum()) + int(blank.any()), spatial[1:]
    patch = tuple(member.patch_size) if member.patch_size and all(member.patch_size) else spatial
    if all(n <= p for n, p in zip(spatial, patch)):
        return [((1, channels) + padded_shape(spatial, member.divisible_by), items)]
    full = padded_shape(spatial, member.divisible_by, patch)
    tiles = 1
    for n, p in zip(full, patch):
        tiles *= len(tile_starts(n, p, 0.5))
    return [((1, channels) + patch, items * tiles)]


def case_flops(args: argparse.Namespace) -> dict:
    """FLOPs (2 x MACs of Conv/ConvTranspose/MatMul/Gemm, from each ONNX graph at the case's real input shapes)
    per case and network, TTA passes included, counting the forward passes the runtime really makes."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import onnx
    from graph_flops import flops

    from hieseg.engine import preprocess
    from hieseg.engine.ensemble import prepared_inputs
    from hieseg.engine.manifest import load_manifest
    from hieseg.inputs.cases import find_cases
    from hieseg.inputs.validate import load_pair

    manifest = load_manifest(args.model)
    # Folds of one architecture have the same weight shapes, hence the same FLOPs at a given input shape.
    signature = {m.name: tuple(tuple(i.dims) for i in onnx.load(str(m.path)).graph.initializer)
                 for m in manifest.members}
    cache: dict[tuple, int] = {}
    per_case = {}
    for case in [c for c in find_cases(args.data) if c.case_id in set(args.cases)]:
        adc, zadc, geometry = load_pair(case.adc, case.zadc)
        crop = preprocess.crop_to_brain(adc, geometry.spacing_zyx, manifest.crop_margin_mm)
        totals: dict[str, int] = {}
        for m, prepared, _ in prepared_inputs(manifest.members, adc, zadc, geometry.spacing_zyx, crop):
            for item_shape, count in forward_items(m, prepared.image):
                key = (signature[m.name], item_shape)
                if key not in cache:
                    cache[key] = flops(m.path, item_shape)
                network = network_of(f"member:{m.name}")
                totals[network] = totals.get(network, 0) + cache[key] * count * max(len(m.tta_flips), 1)
        per_case[case.case_id] = totals
    return per_case


def distance_to_limit(ort: dict, flops_per_case: dict, peak_gflops: float) -> dict:
    """Per network: median over cases of FLOPs / seconds, and that rate as a fraction of the GEMM peak."""
    rates: dict[str, list[float]] = {}
    gflop: dict[str, list[float]] = {}
    for case in ort["cases"]:
        for network, seconds in network_seconds(case["seconds"]).items():
            f = flops_per_case.get(case["case_id"], {}).get(network)
            if f and seconds > 0:
                rates.setdefault(network, []).append(f / seconds / 1e9)
                gflop.setdefault(network, []).append(f / 1e9)
    return {network: {"gflop_per_case_median": round(statistics.median(gflop[network]), 1),
                      "gflops_median": round(statistics.median(r), 2),
                      "fraction_of_peak": round(statistics.median(r) / peak_gflops, 3) if peak_gflops else None}
            for network, r in rates.items()}


# ------------------------------------------------------------------------------------------------------ main


def parse_provider(text: str) -> tuple[str, str]:
    device, _, python = text.partition("=")
    if device not in ("cpu", "openvino", "cuda", "auto"):
        raise argparse.ArgumentTypeError(f"unknown device {device!r} (cpu, openvino, cuda, auto)")
    return device, python or sys.executable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("ort", "ort-naive", "ort-unshared", "torch", "gemm"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--worker-device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help="BONBID layout folder (default: extracted cache)")
    parser.add_argument("--cases", nargs="+", default=CASES)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--provider", type=parse_provider, action="append", metavar="DEVICE[=PYTHON]",
                        help="a provider to measure, with the python of an environment that offers it "
                             "(repeatable; default: cpu with this python)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--torch", metavar="PYTHON", help="python of the training venv, for the torch-eager run")
    parser.add_argument("--no-naive", action="store_true", help="skip the 'before the optimisations' run")
    parser.add_argument("--unshared", action="store_true",
                        help="also run OpenVINO with one session per member (what fusing the folds saves)")
    parser.add_argument("--container", action="store_true", help="also measure the image (size, test_run.sh)")
    parser.add_argument("--image", default=None, help="image tag (default hieseg:<version>)")
    parser.add_argument("--before-model", type=Path, default=None,
                        help="model folder for the 'before' run (default: the same model), e.g. the manifest "
                             "before the TTA flips were chosen by cost")
    parser.add_argument("--label", default="", help="free text stored with the results (e.g. 'before')")
    parser.add_argument("--note", default="", help="free text for the doc (e.g. other work on the machine)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None, help="render the tables into this markdown page")
    args = parser.parse_args()
    args.threads = args.threads or None
    if args.worker:
        workers = {"torch": worker_torch, "gemm": worker_gemm,
                   "ort": worker_ort, "ort-naive": lambda a: worker_ort(a, naive=True),
                   "ort-unshared": lambda a: worker_ort(a, share=False)}
        print(json.dumps(workers[args.worker](args)))
        return 0

    if args.data is None:
        from realdata import real_cases_dir

        args.data = real_cases_dir()
    from hieseg import __version__

    providers = args.provider or [("cpu", sys.executable)]
    args.image = args.image or f"hieseg:{__version__}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip() or "unknown"
    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"hieseg {__version__} @ {commit}; {len(args.cases)} cases; providers "
          f"{', '.join(d for d, _ in providers)}; {threads} threads of {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()})", flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    gemm_before = run_worker(sys.executable, "gemm", args)
    runs, colds = {}, {}
    for device, python in providers:
        print(f"  {device}: pipeline on {len(args.cases)} cases ({python})", flush=True)
        runs[device] = run_worker(python, "ort", args, device=device)
        if "error" in runs[device]:
            print(f"  {device} run failed: {runs[device]['error']}")
            return 1
        colds[device] = cold_start(args, python, device)
    if args.unshared and "openvino" in dict(providers):
        print("  openvino, one session per member", flush=True)
        runs["openvino (one session per member)"] = run_worker(dict(providers)["openvino"], "ort-unshared", args,
                                                               device="openvino")
        colds["openvino (one session per member)"] = {"skipped": "same launch as openvino"}
    first_device, first_python = providers[0]
    naive_res = ({"skipped": "--no-naive"} if args.no_naive
                 else run_worker(first_python, "ort-naive", args, args.before_model, device=first_device))
    print("  torch eager" if args.torch else "  (no torch run)", flush=True)
    torch_res = run_worker(args.torch, "torch", args) if args.torch else None
    gemm_after = run_worker(sys.executable, "gemm", args)
    print("  FLOPs from the ONNX graphs", flush=True)
    flops_per_case = case_flops(args)
    peak = max(g.get("gflops", 0.0) for g in (gemm_before, gemm_after))
    summaries = {device: summarise(run, torch_res) for device, run in runs.items()}
    for device, summary in summaries.items():
        summary["cold_start"] = colds[device]
        summary["distance_to_limit"] = distance_to_limit(runs[device], flops_per_case, peak)
    comparison = compare_providers(runs, summaries)
    results = {"commit": commit, "label": args.label, "note": args.note, "started_utc": started,
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "threads": threads, "cpus": os.cpu_count(), "cpu": cpu_model(), "cases": args.cases,
               "before_model": str(args.before_model or args.model or "bundled"),
               "providers": summaries, "comparison": comparison,
               "machine_peak": {"gflops": peak, "before": gemm_before, "after": gemm_after},
               "flops_per_case": flops_per_case,
               # Back-compatible keys: the first provider's figures, as before the provider dimension.
               "device": first_device, "summary": summaries[first_device], "cold_start": colds[first_device],
               "before_optimisations": summarise(naive_res, None) if "cases" in naive_res else naive_res,
               "container": container(args) if args.container else {"skipped": "not requested (--container)"},
               "torch": {k: v for k, v in (torch_res or {"skipped": "not requested (--torch)"}).items()
                         if k not in ("wall_s", "member_s")},
               "raw": {"ort": runs, "ort_naive": naive_res, "torch": torch_res}}
    report(results)
    out = args.out or REPO / ".cache" / "bench" / f"bench-{commit}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")
    if args.doc:
        write_doc(args.doc, results, out)
        print(f"tables written into {args.doc}")
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare_providers(runs: dict, summaries: dict) -> dict:
    """Every provider against the CPU provider, on the same cases in the same run: total seconds ratio."""
    if "cpu" not in runs:
        return {}
    base = runs["cpu"]["wall_s"]
    out = {}
    for device, run in runs.items():
        n = min(len(base), len(run["wall_s"]))
        out[device] = {"over_cpu_provider": round(sum(base[:n]) / sum(run["wall_s"][:n]), 2),
                       "over_torch": summaries[device].get("ort_over_torch_speedup")}
    return out


def report(results: dict) -> None:
    for device, s in results["providers"].items():
        print(f"\n=== {device} ({s.get('onnxruntime')}; providers {sorted(set(s['providers'].values()))})")
        print(f"{'stage':<28}{'median s':>10}{'p90 s':>10}")
        for stage, v in s["stages"].items():
            if not stage.startswith("member:"):
                print(f"{stage:<28}{v['median']:>10.3f}{v['p90']:>10.3f}")
        for network, v in s["networks"].items():
            print(f"{'network ' + network:<28}{v['median']:>10.3f}{v['p90']:>10.3f}")
        print(f"{'total per case (wall)':<28}{s['total']['median']:>10.3f}{s['total']['p90']:>10.3f}"
              f"   target <= {TARGETS['median_total_s']} s")
        print(f"first case {s['first_case_s']} s (again at the end: {s['first_case_again_s']} s); "
              f"throughput {s['throughput_cases_per_min']} cases/min; "
              f"session load {s['session_load_s']} s; peak RSS {s['peak_rss_gib']} GiB")
        cold = s["cold_start"]
        print(f"cold start to first case (excl. the case): {cold.get('cold_start_s', cold)} s   "
              f"target <= {TARGETS['cold_start_s']} s")
        if "ort_over_torch_speedup" in s:
            print(f"torch eager total median {s['torch_total']['median']} s; ORT is {s['ort_over_torch_speedup']}x "
                  f"faster; per network {s['ort_over_torch_per_network']}")
        for network, d in s["distance_to_limit"].items():
            print(f"  {network}: {d['gflop_per_case_median']} GFLOP/case, {d['gflops_median']} GFLOP/s = "
                  f"{d['fraction_of_peak']} of the GEMM peak")
    print(f"\nmachine peak (numpy float32 GEMM, {results['threads']} threads): {results['machine_peak']['gflops']} "
          "GFLOP/s")
    for device, c in results["comparison"].items():
        print(f"{device}: {c['over_cpu_provider']}x the CPU provider, {c['over_torch'] or '–'}x torch eager")
    before = results["before_optimisations"]
    if "total" in before:
        print(f"before the optimisations (sessions per case, an arena per session, model "
              f"{results['before_model']}): total median {before['total']['median']} s, p90 "
              f"{before['total']['p90']} s, peak RSS {before['peak_rss_gib']} GiB")
    print(f"container: {results['container']}")


DOC_BEGIN, DOC_END = "<!-- bench:begin (written by benchmarks/bench_inference.py --doc) -->", "<!-- bench:end -->"


def render_markdown(results: dict, json_path: Path) -> str:
    """The measured tables, from the results alone (no figure typed by hand)."""
    p = results["providers"]
    shown = json_path.resolve().relative_to(REPO) if json_path.resolve().is_relative_to(REPO) else json_path
    lines = [f"Run {results['started_utc']} – {results['finished_utc']}, commit `{results['commit']}`, "
             f"{len(results['cases'])} real cases, {results['threads']} threads on {results['cpus']} CPUs "
             f"({results['cpu']}). Results: `{shown}`.", ""]
    if results.get("note"):
        lines += [f"**Note:** {results['note']}", ""]
    lines += ["| provider | onnxruntime | sessions | median s/case | p90 s/case | first case s (again) "
              "| cold start s | peak RSS GiB | × CPU provider | × torch eager |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for device, s in p.items():
        c = results["comparison"].get(device, {})
        lines.append(f"| {device} | {s.get('onnxruntime')} | {s.get('sessions')} | {s['total']['median']} | "
                     f"{s['total']['p90']} | {s['first_case_s']} ({s.get('first_case_again_s')}) | "
                     f"{s['cold_start'].get('cold_start_s', '–')} | {s['peak_rss_gib']} | "
                     f"{c.get('over_cpu_provider', '–')} | {s.get('ort_over_torch_speedup', '–')} |")
    if "torch_total" in next(iter(p.values())):
        t = next(iter(p.values()))["torch_total"]
        lines.append(f"| torch eager ({results['torch'].get('torch')}) | – | – | {t['median']} | {t['p90']} "
                     "| – | – | – | – | 1.0 |")
    lines += ["", targets_line(results)]
    lines += ["", f"Distance to the limit: machine peak {results['machine_peak']['gflops']} GFLOP/s (best numpy "
              f"float32 GEMM, n = {results['machine_peak']['before'].get('n')}, {results['threads']} threads, "
              "before and after the runs). FLOPs = 2 × MACs of Conv/ConvTranspose/MatMul/Gemm counted from each "
              "ONNX graph at the case's real input shapes, all folds, TTA passes and the forward passes the "
              "runtime makes (blank slices once); time = the network's member seconds in the pipeline (medians "
              "over cases).", "",
              "| network | provider | GFLOP/case | median s/case | GFLOP/s | fraction of peak | × torch eager |",
              "|---|---|---|---|---|---|---|"]
    for device, s in p.items():
        for network, d in s["distance_to_limit"].items():
            lines.append(f"| {network} | {device} | {d['gflop_per_case_median']} | "
                         f"{s['networks'][network]['median']} | {d['gflops_median']} | {d['fraction_of_peak']} | "
                         f"{s.get('ort_over_torch_per_network', {}).get(network, '–')} |")
    return "\n".join(lines)


def targets_line(results: dict) -> str:
    """Issue 15's OpenVINO targets against this run's figures, each marked met or not."""
    ov, comparison = results["providers"].get("openvino"), results["comparison"].get("openvino", {})
    if not ov:
        return "OpenVINO targets: no OpenVINO run."
    t = OPENVINO_TARGETS

    def mark(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "not met")

    over_cpu, over_torch = comparison.get("over_cpu_provider"), ov.get("ort_over_torch_speedup")
    median, rss = ov["total"]["median"], ov["peak_rss_gib"]
    parts = [f"{over_cpu}× the CPU provider (≥ {t['over_cpu_provider']}×: "
             f"{mark(None if over_cpu is None else over_cpu >= t['over_cpu_provider'])})",
             f"{over_torch or '–'}× torch eager (≥ {t['over_torch']}×: "
             f"{mark(None if over_torch is None else over_torch >= t['over_torch'])})",
             f"median {median} s/case (≤ {t['median_total_s']} s: {mark(median <= t['median_total_s'])})",
             f"peak RSS {rss} GiB (≤ {t['peak_rss_gib']} GiB: {mark(rss <= t['peak_rss_gib'])}; "
             f"bar {t['peak_rss_bar_gib']} GiB: {mark(rss <= t['peak_rss_bar_gib'])})"]
    return "OpenVINO against the targets (2 cores): " + "; ".join(parts) + "."


def write_doc(path: Path, results: dict, json_path: Path) -> None:
    text = path.read_text() if path.exists() else f"# Benchmark\n\n{DOC_BEGIN}\n{DOC_END}\n"
    if DOC_BEGIN not in text or DOC_END not in text:
        text = text.rstrip() + f"\n\n{DOC_BEGIN}\n{DOC_END}\n"
    before, rest = text.split(DOC_BEGIN, 1)
    after = rest.split(DOC_END, 1)[1]
    path.write_text(f"{before}{DOC_BEGIN}\n{render_markdown(results, json_path)}\n{DOC_END}{after}")


if __name__ == "__main__":
    raise SystemExit(main())
