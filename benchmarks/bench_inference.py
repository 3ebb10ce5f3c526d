#!/usr/bin/env python3
"""Benchmark of the shipped ensemble: seconds per stage, total per case, peak RSS, throughput, cold start,
the ORT/torch-eager speed ratio on identical weights, and the container. Prints figures and writes one JSON file
that can be compared across commits (default ``.cache/bench/bench-<commit>.json``).

    .venv/bin/python benchmarks/bench_inference.py                      # ORT pipeline + cold start
    .venv/bin/python benchmarks/bench_inference.py --torch training/.venv/bin/python --container

Each measurement runs in its own process, so peak RSS is the pipeline's alone. Cases: a fixed subset of real
BONBID-HIE cases from ../shared/data covering both grid families (128x128x~50 at 2 mm, 160x160x~20 at
1.375x1.375x6 mm). Figures, not pass/fail: targets are printed beside them.
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


def worker_ort(args: argparse.Namespace, naive: bool = False) -> dict:
    """The real pipeline, sessions reused across cases, outputs written to a temporary folder.

    ``naive`` is the "before" of the optimisations: sessions built again for every case, each with its own
    memory arena (ONNX Runtime's defaults).
    """
    import resource

    from hieseg import sessions
    from hieseg.cases import find_cases
    from hieseg.pipeline import Segmenter, write_case_outputs

    if naive:
        sessions._shared_arena = False
    cases = [c for c in find_cases(args.data) if c.case_id in set(args.cases)]
    t0 = time.perf_counter()
    segmenter = Segmenter(args.model, args.device, threads=args.threads)
    load_s = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="hieseg-bench-"))
    per_case, wall = [], []
    try:
        for case in cases:
            t = time.perf_counter()
            if naive:
                segmenter = Segmenter(args.model, args.device, threads=args.threads)
            result = segmenter.segment_case(case)
            report = write_case_outputs(result, out / f"{case.output_stem}.mha", out / f"{case.case_id}.json")
            wall.append(time.perf_counter() - t)
            per_case.append({"case_id": case.case_id, "shape_zyx": list(result.geometry.shape_zyx),
                             "seconds": report["seconds"]})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"load_s": load_s, "cases": per_case, "wall_s": wall,
            "providers": segmenter.providers,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_torch(args: argparse.Namespace) -> dict:
    """The same ensemble in torch eager (training package, same weights), same preprocessing and stitching."""
    import numpy as np
    import torch

    from hieseg import preprocess
    from hieseg.cases import find_cases
    from hieseg.inferers import predict_volume, with_flips
    from hieseg.manifest import load_manifest
    from hieseg.validate import load_pair
    from hieseg.ensemble import prep_key
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

    cases = [c for c in find_cases(args.data) if c.case_id in set(args.cases)]
    total_weight = sum(m.weight for m in manifest.members)
    wall, parity = [], None
    for case in cases:
        adc, zadc, geometry = load_pair(case.adc, case.zadc)
        t = time.perf_counter()
        crop = preprocess.crop_to_brain(adc, geometry.spacing_zyx, manifest.crop_margin_mm)
        fused = np.zeros(adc.shape, np.float32)
        cache = {}  # as the runtime: the folds of one network share a preprocessed input
        for m in manifest.members:
            key = prep_key(m)
            if key not in cache:
                cache[key] = preprocess.prepare(adc, zadc, geometry.spacing_zyx, m.channels, m.target_spacing_zyx,
                                                crop)
            prepared = cache[key]
            fn = torch_fn(nets[m.name])
            prob = with_flips(prepared.image, lambda img: predict_volume(img, fn, m.kind, m.patch_size,
                                                                         m.divisible_by, m.batch_size), m.tta_flips)
            fused += (m.weight / total_weight) * preprocess.restore(prob, prepared)
        wall.append(time.perf_counter() - t)
        if parity is None:
            from hieseg.pipeline import Segmenter

            _, ort_prob = Segmenter(args.model, "cpu").segment(adc, zadc, geometry)
            parity = float(np.abs(ort_prob - fused).max())
    return {"wall_s": wall, "torch": torch.__version__, "weights": sorted(sources),
            "max_abs_diff_fused_probability": parity}


# ------------------------------------------------------------------------------------------ orchestration


def run_worker(python: str, kind: str, args: argparse.Namespace, model: Path | None = None) -> dict:
    cmd = [python, __file__, "--worker", kind, "--data", str(args.data), "--threads", str(args.threads or 0),
           "--device", args.device, "--cases", *args.cases]
    if model or args.model:
        cmd += ["--model", str(model or args.model)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cold_start(args: argparse.Namespace) -> dict:
    """Launch of ``inference.py`` on the bundled sample case, minus the case's own seconds."""
    out = Path(tempfile.mkdtemp(prefix="hieseg-cold-"))
    try:
        cmd = [sys.executable, str(REPO / "inference.py"), "--input", str(REPO / "test/input"), "--output", str(out),
               "--device", args.device, "-q"]
        if args.model:
            cmd += ["--model", str(args.model)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
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


def summarise(ort: dict, torch_res: dict | None) -> dict:
    stages: dict[str, list[float]] = {}
    for case in ort["cases"]:
        seconds = dict(case["seconds"])
        seconds["members (all, TTA incl.)"] = sum(v for k, v in seconds.items() if k.startswith("member:"))
        for stage, value in seconds.items():
            stages.setdefault(stage, []).append(value)
    out = {"stages": {k: stats(v) for k, v in stages.items()},
           "total": stats(ort["wall_s"]),
           "throughput_cases_per_min": round(60 * len(ort["wall_s"]) / sum(ort["wall_s"]), 2),
           "peak_rss_gib": round(ort["peak_rss_mib"] / 1024, 3),
           "session_load_s": round(ort["load_s"], 3), "providers": ort["providers"]}
    if torch_res and "wall_s" in torch_res:
        n = min(len(torch_res["wall_s"]), len(ort["wall_s"]))
        out["torch_total"] = stats(torch_res["wall_s"])
        out["ort_over_torch_speedup"] = round(sum(torch_res["wall_s"][:n]) / sum(ort["wall_s"][:n]), 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("ort", "ort-naive", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help="BONBID layout folder (default: extracted cache)")
    parser.add_argument("--cases", nargs="+", default=CASES)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--torch", metavar="PYTHON", help="python of the training venv, for the torch-eager run")
    parser.add_argument("--container", action="store_true", help="also measure the image (size, test_run.sh)")
    parser.add_argument("--image", default=None, help="image tag (default hieseg:<version>)")
    parser.add_argument("--before-model", type=Path, default=None,
                        help="model folder for the 'before' run (default: the same model), e.g. the manifest "
                             "before the TTA flips were chosen by cost")
    parser.add_argument("--label", default="", help="free text stored with the results (e.g. 'before')")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.threads = args.threads or None
    if args.worker:
        result = worker_torch(args) if args.worker == "torch" else worker_ort(args, args.worker == "ort-naive")
        print(json.dumps(result))
        return 0

    if args.data is None:
        from realdata import real_cases_dir

        args.data = real_cases_dir()
    from hieseg import __version__

    args.image = args.image or f"hieseg:{__version__}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip() or "unknown"
    print(f"hieseg {__version__} @ {commit}; {len(args.cases)} cases; device {args.device}; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})", flush=True)
    ort_res = run_worker(sys.executable, "ort", args)
    if "error" in ort_res:
        print(f"ORT run failed: {ort_res['error']}")
        return 1
    naive_res = run_worker(sys.executable, "ort-naive", args, args.before_model)
    torch_res = run_worker(args.torch, "torch", args) if args.torch else None
    results = {"commit": commit, "label": args.label, "device": args.device, "cases": args.cases,
               "before_model": str(args.before_model or args.model or "bundled"),
               "summary": summarise(ort_res, torch_res), "cold_start": cold_start(args),
               "before_optimisations": summarise(naive_res, None) if "error" not in naive_res else naive_res,
               "container": container(args) if args.container else {"skipped": "not requested (--container)"},
               "torch": {k: v for k, v in (torch_res or {"skipped": "not requested (--torch)"}).items()
                         if k != "wall_s"},
               "raw": {"ort": ort_res, "ort_naive": naive_res, "torch": torch_res}}
    report(results)
    out = args.out or REPO / ".cache" / "bench" / f"bench-{commit}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")
    return 0


def report(results: dict) -> None:
    s = results["summary"]
    print(f"\n{'stage':<28}{'median s':>10}{'p90 s':>10}")
    for stage, v in s["stages"].items():
        print(f"{stage:<28}{v['median']:>10.3f}{v['p90']:>10.3f}")
    print(f"{'total per case (wall)':<28}{s['total']['median']:>10.3f}{s['total']['p90']:>10.3f}"
          f"   target <= {TARGETS['median_total_s']} s")
    print(f"throughput: {s['throughput_cases_per_min']} cases/min (sessions reused); "
          f"session load {s['session_load_s']} s; providers {sorted(set(s['providers'].values()))}")
    print(f"peak RSS: {s['peak_rss_gib']} GiB   target <= {TARGETS['peak_rss_gib']} GiB")
    before = results["before_optimisations"]
    if "total" in before:
        print(f"before the optimisations (sessions per case, an arena per session, model "
              f"{results['before_model']}): total median "
              f"{before['total']['median']} s, p90 {before['total']['p90']} s, peak RSS {before['peak_rss_gib']} GiB, "
              f"{before['throughput_cases_per_min']} cases/min")
    cold = results["cold_start"]
    print(f"cold start to first case (excl. the case): {cold.get('cold_start_s', cold)} s   "
          f"target <= {TARGETS['cold_start_s']} s")
    if "ort_over_torch_speedup" in s:
        print(f"torch eager total median {s['torch_total']['median']} s; ORT is {s['ort_over_torch_speedup']}x "
              f"faster   target >= {TARGETS['ort_over_torch_speedup']}x")
    else:
        print(f"torch eager: {results['torch']}")
    print(f"container: {results['container']}")


if __name__ == "__main__":
    raise SystemExit(main())
