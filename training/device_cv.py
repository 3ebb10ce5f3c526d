"""The whole cross-validation on a lent GPU machine, in one prepared command, and its import back here.

The GPU machine has torch (CUDA), numpy and scipy but neither SimpleITK nor MONAI, reaches no network, takes at most
64 MiB per call and returns at most 8 files of 16 MiB. So:

1. here (CPU):   ``python -m training.device_cv pack``  -> ``.gpu/cases.npz`` (git-ignored): every case cropped to
   its brain as the runtime crops it (ADC, Z-ADC, label, spacing), the brain intensity statistics and the split;
   ``training/device_cv.sh wheels`` puts the MONAI wheel in ``.gpu/``.
2. there (GPU):  ``training/device_cv.sh run`` -> every member x every fold trained at once (one process each,
   bfloat16 autocast, ``config.GPU_SCHEDULE``: 10x the CPU schedule's samples), each fitted to the same time
   budget; the final weights come back under ``$OUT`` as parts of one torch bundle, with the curves and the log.
3. here (CPU):   ``python -m training.device_cv unpack DIR`` -> ``training/runs/gpu/<member>/fold<k>/final.pt``;
   then ``python -m training --workdir training/runs/gpu --gpu cv tune export report`` computes the OOF
   predictions, tunes (nested), exports ONNX with the parity gate and writes the report, exactly as for a CPU run.

``--quick`` runs the same code on the CPU with 2 cases, 2 folds and a few iterations (CI proves the path with it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import config
from .data import REPO, RawCase
from .study import load_study, make_config

PACK = REPO / ".gpu" / "cases.npz"
GPU_WORKDIR = REPO / "training" / "runs" / "gpu"
BUNDLE = "gpu_cv_weights.pt"
PART_BYTES = 15 * 2**20  # the device returns files of at most 16 MiB


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------- 1. pack (here)


def pack(out: Path = PACK, quick: bool = False) -> Path:
    """Every case cropped to its brain (the crop the runtime and training take: a second crop of the cropped arrays
    is the identity), as float32 / uint8 arrays in one compressed npz, with the statistics and the split."""
    from hieseg import preprocess

    study = load_study(make_config(quick=quick))
    cases, margin = study.cases, study.config.crop_margin_mm
    arrays: dict[str, np.ndarray] = {}
    for cid, c in cases.items():
        crop = preprocess.crop_to_brain(c.adc, c.spacing_zyx, margin)
        arrays[f"{cid}__adc"] = c.adc[crop].astype(np.float32)
        arrays[f"{cid}__zadc"] = c.zadc[crop].astype(np.float32)
        arrays[f"{cid}__label"] = c.label[crop].astype(np.uint8)
        arrays[f"{cid}__spacing"] = np.asarray(c.spacing_zyx, dtype=np.float64)
    meta = {"case_ids": sorted(cases), "split": study.split, "stats": study.stats, "quick": quick,
            "crop_margin_mm": margin}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    os.replace(tmp, out)
    log(f"packed {len(cases)} cases into {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return out


def load_pack(path: Path) -> tuple[dict, dict[str, RawCase]]:
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        cases = {cid: RawCase(cid, z[f"{cid}__adc"], z[f"{cid}__zadc"], z[f"{cid}__label"] > 0,
                              tuple(float(v) for v in z[f"{cid}__spacing"])) for cid in meta["case_ids"]}
    return meta, cases


# ---------------------------------------------------------------- 2. run (there)


def gpu_members(quick: bool) -> dict:
    """The members with the GPU schedule (batch, iterations) in place of the CPU one."""
    return make_config(quick=quick, gpu=True).members


def worker(data: Path, workdir: Path, name: str, fold: int, device: str, budget_s: float, loss: str,
           intensity: str, n_workers: int = 1) -> None:
    """One member on one fold (its own process: its own CUDA context and CPU thread)."""
    import torch

    from .train import prepare_case, train_member

    torch.set_num_threads(1)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed training patch shapes
    meta, cases = load_pack(data)
    spec = gpu_members(meta["quick"])[name]
    channels = config.channel_specs(spec["sources"], intensity, {k: tuple(v) for k, v in meta["stats"].items()})
    folds = meta["split"]["folds"]
    train_ids = [c for f, ids in enumerate(folds) if f != fold for c in ids]
    # the pack holds crops already: cropping again with the same margin is the identity
    margin = meta.get("crop_margin_mm", config.CROP_MARGIN_MM)
    train = [prepare_case(cases[c], channels, spec["target_spacing_zyx"], margin) for c in train_ids]
    val = [prepare_case(cases[c], channels, spec["target_spacing_zyx"], margin) for c in folds[fold]]
    eval_every = max(int(spec["iterations"]) // 10, 1)
    # all workers start their clocks together, so each one's timed steps see the whole machine's load
    ready = workdir / "ready"
    ready.mkdir(parents=True, exist_ok=True)
    (ready / f"{name}_f{fold}").touch()
    t_wait = time.time()
    while len(list(ready.iterdir())) < n_workers and time.time() - t_wait < 120:
        time.sleep(0.5)
    train_member(spec, train, val, workdir / name / f"fold{fold}", loss,
                 seed=1000 * fold + (1 if spec["kind"] == "3d" else 2), log=log, device=device,
                 amp=device.startswith("cuda"), eval_every=eval_every, time_budget_s=budget_s)


def run(data: Path, out: Path, workdir: Path, device: str, budget_s: float, members: list[str] | None,
        loss: str, intensity: str) -> int:
    """Every member x fold as parallel worker processes, then the bundle of final weights under ``out``."""
    meta, _ = load_pack(data)
    names = [n for n in gpu_members(meta["quick"]) if not members or n in members]
    jobs = [(n, k) for n in names for k in range(len(meta["split"]["folds"]))]
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    t0 = time.time()
    logs = workdir / "logs"
    shutil.rmtree(workdir / "ready", ignore_errors=True)  # the workers' start barrier (see worker)
    logs.mkdir(parents=True, exist_ok=True)
    for n, k in jobs:
        cmd = [sys.executable, "-m", "training.device_cv", "worker", "--data", str(data), "--workdir", str(workdir),
               "--member", n, "--fold", str(k), "--device", device, "--budget", str(budget_s), "--loss", loss,
               "--intensity", intensity, "--n-workers", str(len(jobs))]
        logf = logs / f"{n}_f{k}.log"
        with open(logf, "w") as fh:
            procs.append((n, k, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT), logf))
    log(f"{len(jobs)} workers started ({device}, budget {budget_s:.0f} s each)")
    hard_stop = t0 + 60 + 1.1 * budget_s  # data preparation + the budget + slack: then whatever finished ships
    while any(p.poll() is None for _, _, p, _ in procs):  # progress, so a cut-off call still shows where it was
        time.sleep(2 if meta["quick"] else 30)
        if time.time() > hard_stop:
            for n, k, p, _ in procs:
                if p.poll() is None:
                    log(f"{n}_f{k}: past the hard stop, killed")
                    p.kill()
        last = [f"{n}_f{k}: " + (lf.read_text().strip().splitlines() or ["-"])[-1][-90:] for n, k, _, lf in procs]
        log(f"{time.time() - t0:.0f}s\n  " + "\n  ".join(last))
    failed = [f"{n}_f{k}" for n, k, p, _ in procs if p.returncode != 0]
    text = "\n".join(f"==== {n} fold {k} (exit {p.returncode})\n{lf.read_text()}" for n, k, p, lf in procs)
    (out / "workers.log").write_text(text)
    for n, k, p, lf in procs:
        if p.returncode != 0:
            print(f"==== {n} fold {k} failed (exit {p.returncode}):\n{lf.read_text()[-3000:]}", flush=True)
    log(f"workers done in {time.time() - t0:.0f}s; failed: {failed or 'none'}")
    bundle_weights(workdir, names, len(meta["split"]["folds"]), out)
    return 1 if failed else 0


def bundle_weights(workdir: Path, names: list[str], n_folds: int, out: Path) -> None:
    """Every finished final.pt in one torch file, split into parts the device may return."""
    import io

    import torch

    bundle = {}
    for n in names:
        for k in range(n_folds):
            f = workdir / n / f"fold{k}" / "final.pt"
            if f.is_file():
                bundle[f"{n}/fold{k}"] = torch.load(f, map_location="cpu", weights_only=False)
    buf = io.BytesIO()
    torch.save(bundle, buf)
    raw = buf.getvalue()
    for i in range(0, len(raw), PART_BYTES):
        (out / f"{BUNDLE}.part{i // PART_BYTES}").write_bytes(raw[i:i + PART_BYTES])
    curves = {key: v.get("curve") for key, v in bundle.items()}
    specs = {key: {"iterations": v["spec"]["iterations"], "batch": v["spec"]["batch"], "device": v.get("device"),
                   "amp": v.get("amp")} for key, v in bundle.items()}
    (out / "gpu_cv_curves.json").write_text(json.dumps({"curves": curves, "specs": specs}) + "\n")
    log(f"bundled {len(bundle)} networks ({len(raw) / 2**20:.1f} MiB) into {out}")


# ---------------------------------------------------------------- 3. unpack (here)


def unpack(src: Path, workdir: Path = GPU_WORKDIR, loss: str = config.DEFAULT_LOSS,
           intensity: str = config.DEFAULT_INTENSITY) -> list[str]:
    """The returned parts joined, each network written as ``<workdir>/<member>/fold<k>/final.pt`` (+ curve.json),
    and the workdir's settings as the training CLI expects them (``--gpu``)."""
    import io

    import torch

    parts = sorted(src.glob(f"{BUNDLE}.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if not parts:
        raise FileNotFoundError(f"{src}: no {BUNDLE}.part* files")
    bundle = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)), map_location="cpu", weights_only=False)
    for key, state in bundle.items():
        d = workdir / key
        d.mkdir(parents=True, exist_ok=True)
        torch.save(state, d / "final.pt")
        (d / "curve.json").write_text(json.dumps(state.get("curve")) + "\n")
    settings = {"loss": loss, "intensity": intensity, "schedule": "gpu"}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "settings.json").write_text(json.dumps(settings) + "\n")
    log(f"unpacked {len(bundle)} networks into {workdir}: {sorted(bundle)}")
    return sorted(bundle)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.device_cv", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--out", type=Path, default=PACK)
    a.add_argument("--quick", action="store_true")
    for name in ("run", "worker"):
        a = sub.add_parser(name)
        a.add_argument("--data", type=Path, default=PACK)
        a.add_argument("--workdir", type=Path, default=GPU_WORKDIR)
        a.add_argument("--device", default="cuda")
        a.add_argument("--budget", type=float, default=420.0, help="seconds per worker, training and validation")
        a.add_argument("--loss", default=config.DEFAULT_LOSS, choices=config.LOSSES)
        a.add_argument("--intensity", default=config.DEFAULT_INTENSITY, choices=config.INTENSITIES)
        if name == "worker":
            a.add_argument("--n-workers", type=int, default=1)
        if name == "run":
            a.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / ".gpu" / "out")))
            a.add_argument("--members", type=lambda s: s.split(","))
        else:
            a.add_argument("--member", required=True)
            a.add_argument("--fold", type=int, required=True)
    a = sub.add_parser("unpack")
    a.add_argument("src", type=Path)
    a.add_argument("--workdir", type=Path, default=GPU_WORKDIR)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.out, args.quick)
        return 0
    if args.cmd == "worker":
        worker(args.data, args.workdir, args.member, args.fold, args.device, args.budget, args.loss, args.intensity,
               args.n_workers)
        return 0
    if args.cmd == "run":
        return run(args.data, args.out, args.workdir, args.device, args.budget, args.members, args.loss,
                   args.intensity)
    unpack(args.src, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
