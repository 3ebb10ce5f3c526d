"""The whole cross-validation on a lent GPU machine, in one prepared command, and its import back here.

The GPU machine has torch (CUDA), numpy and scipy but neither SimpleITK nor MONAI, reaches no network, takes at most
64 MiB per call and returns at most 8 files of 16 MiB. So:

1. here (CPU):   ``python -m training.device_cv pack``  -> ``.gpu/cases.npz`` (git-ignored): every case cropped to
   its brain as the runtime crops it (ADC, Z-ADC, label, spacing), the brain intensity statistics and the split;
   ``training/device_cv.sh wheels`` puts the MONAI wheel in ``.gpu/``.
2. there (GPU):  ``training/device_cv.sh run --seeds K`` -> a pool of worker processes (one CUDA context and one CPU
   thread each) claims member x fold x seed jobs seed-major and trains each with the CPU schedule (or
   ``--schedule gpu``: config.GPU_SCHEDULE) in bfloat16 autocast, then computes that network's OOF maps there;
   the seed-0 networks and every finished seed's maps come back under ``$OUT`` as parts of one compressed bundle,
   with the curves and the log.
3. here (CPU):   ``python -m training.device_cv unpack DIR`` -> ``training/runs/seeds`` (the seed-0 networks, the
   OOF maps averaged over the full-schedule seeds) and ``training/runs/seeds-single`` (the same networks, seed 0's
   maps alone); then ``python -m training --workdir training/runs/seeds --gpu-seeds K tune export report`` tunes
   (nested), exports ONNX with the parity gate and writes the report, exactly as for a CPU run.

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
from .study import TrainingError, load_study, make_config

PACK = REPO / ".gpu" / "cases.npz"
GPU_WORKDIR = REPO / "training" / "runs" / "seeds"
BUNDLE = "gpu_cv_weights.pt"
PART_BYTES = 15 * 2**20  # the device returns files of at most 16 MiB


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------- 1. pack (here)


def pack(out: Path = PACK, quick: bool = False) -> Path:
    """Every case cropped to its brain (the crop the runtime and training take: a second crop of the cropped arrays
    is the identity), as float32 / uint8 arrays in one compressed npz, with the statistics and the split."""
    from hieseg.engine import preprocess

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


def device_members(quick: bool, schedule: str) -> dict:
    """The members with the schedule the device trains: ``cpu`` (config.MEMBERS, the schedule the shipped networks
    were tuned with; the device's minutes then buy several networks per fold) or ``gpu`` (config.GPU_SCHEDULE)."""
    return make_config(quick=quick, gpu=schedule == "gpu").members


def job_order(names: list[str], specs: dict, n_folds: int, seeds: int) -> list[tuple[int, str, int]]:
    """(seed, member, fold) in the order the workers claim them: seed-major, so that every member x fold has its
    first network before any has a second (a cut-off run still covers every fold); within a seed the slower 2D
    member first, so the longest jobs do not start last."""
    by_cost = sorted(names, key=lambda n: specs[n]["kind"] != "2d")
    return [(s, n, k) for s in range(seeds) for n in by_cost for k in range(n_folds)]


def job_name(seed: int, name: str, fold: int) -> str:
    return f"{name}_f{fold}_s{seed}"


def job_seed(seed: int, name: str, fold: int, kind: str) -> int:
    """The training seed: seed 0 is the CPU run's (1000 * fold + 1 for 3D, + 2 for 2D), others step by 10."""
    return 1000 * fold + (1 if kind == "3d" else 2) + 10 * seed


def oof_file(workdir: Path, name: str, seed: int, case_id: str) -> Path:
    return workdir / "oof" / name / f"seed{seed}" / f"{case_id}.npy"


OOF_RESERVE_S = 45.0  # a job's OOF pass (8 cases x 2 flips) and final save come out of the deadline too
SMALL = 1e-3  # OOF probabilities below this are stored as 0 (far below the lowest tuned threshold, 0.03): they compress


def pool_worker(data: Path, workdir: Path, slot: int, device: str, deadline: float, loss: str, intensity: str,
                schedule: str, seeds: int, members: list[str] | None) -> None:
    """One worker process (its own CUDA context and CPU thread): claims jobs in job_order until none is left or
    the next one would not finish before ``deadline``; for each, trains the network and writes its out-of-fold
    probabilities (one map per TTA flip, on the packed crop) as the runtime's ensemble loop computes them."""
    import traceback

    import torch

    from .stages import oof_maps
    from .train import as_member, prepare_case, torch_predictor, train_member

    torch.set_num_threads(1)
    cuda = device.startswith("cuda")
    if cuda:
        # the OOF maps must match the exported float32 ONNX on a CPU: no TF32 in the inference convolutions
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    meta, cases = load_pack(data)
    specs = device_members(meta["quick"], schedule)
    names = [n for n in specs if not members or n in members]
    folds = meta["split"]["folds"]
    margin = meta.get("crop_margin_mm", config.CROP_MARGIN_MM)
    stats = {k: tuple(v) for k, v in meta["stats"].items()}
    prepared: dict[str, dict] = {}
    claims, done = workdir / "claims", workdir / "done"
    reserve = min(OOF_RESERVE_S, (deadline - time.time()) / 4)  # a --quick run's budget is a minute or two
    for seed, name, fold in job_order(names, specs, len(folds), seeds):
        job = job_name(seed, name, fold)
        try:
            os.close(os.open(claims / job, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        left = deadline - time.time()
        took = [json.loads(f.read_text())["seconds"] for f in done.glob(f"{name}_f*_s*.json")]
        if took and left < 1.1 * max(took):  # no estimate yet: start it (its own budget stops it in time)
            log(f"[{slot}] {job}: skipped ({left:.0f} s left, a {name} job takes {max(took):.0f} s)")
            continue
        if left < 2 * reserve:
            log(f"[{slot}] {job}: skipped ({left:.0f} s left)")
            continue
        t0 = time.time()
        try:
            spec = specs[name]
            if name not in prepared:
                channels = config.channel_specs(spec["sources"], intensity, stats)
                prepared[name] = {cid: prepare_case(c, channels, spec["target_spacing_zyx"], margin)
                                  for cid, c in cases.items()}
            train = [prepared[name][c] for f, ids in enumerate(folds) if f != fold for c in ids]
            val = [prepared[name][c] for c in folds[fold]]
            if cuda:
                torch.backends.cudnn.benchmark = True  # fixed training patch shapes
            net = train_member(spec, train, val, workdir / name / f"fold{fold}" / f"seed{seed}", loss,
                               seed=job_seed(seed, name, fold, spec["kind"]), log=lambda m: log(f"[{slot}] {m}"),
                               device=device, amp=cuda, eval_every=max(int(spec["iterations"]) // 4, 1),
                               time_budget_s=left - reserve)
            if cuda:
                torch.backends.cudnn.benchmark = False  # every case has its own shape: no autotuning per case
            member = as_member(name, spec, config.channel_specs(spec["sources"], intensity, stats))
            for cid in folds[fold]:
                maps = oof_maps(member, torch_predictor(net, device), spec["infer_batch"], cases[cid], margin)
                f = oof_file(workdir, name, seed, cid)
                f.parent.mkdir(parents=True, exist_ok=True)
                np.save(f, np.stack(maps).astype(np.float16))
            (done / f"{job}.json").write_text(json.dumps({"seconds": time.time() - t0, "slot": slot}) + "\n")
            log(f"[{slot}] {job}: trained and OOF written in {time.time() - t0:.0f} s")
        except Exception:  # noqa: BLE001 -- one failed job must not take the worker's remaining jobs with it
            log(f"[{slot}] {job}: FAILED\n{traceback.format_exc()}")


def run(data: Path, out: Path, workdir: Path, device: str, budget_s: float, members: list[str] | None,
        loss: str, intensity: str, seeds: int = 1, schedule: str = "cpu", n_workers: int = 12) -> int:
    """``n_workers`` worker processes share the member x fold x seed jobs until ``budget_s`` is spent, then the
    seed-0 networks and the OOF maps of every seed finished on all folds go under ``out`` as parts of one
    compressed bundle (bundle_results), with the curves and the log."""
    meta, _ = load_pack(data)
    specs = device_members(meta["quick"], schedule)
    names = [n for n in specs if not members or n in members]
    n_folds = len(meta["split"]["folds"])
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("claims", "done", "logs"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
        (workdir / sub).mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    deadline = t0 + budget_s
    procs = []
    for slot in range(n_workers):
        cmd = [sys.executable, "-m", "training.device_cv", "worker", "--data", str(data), "--workdir", str(workdir),
               "--slot", str(slot), "--device", device, "--deadline", f"{deadline:.1f}", "--loss", loss,
               "--intensity", intensity, "--schedule", schedule, "--seeds", str(seeds)]
        if members:
            cmd += ["--members", ",".join(members)]
        logf = workdir / "logs" / f"worker{slot}.log"
        with open(logf, "w") as fh:
            procs.append((slot, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT), logf))
    n_jobs = len(job_order(names, specs, n_folds, seeds))
    log(f"{n_workers} workers on {n_jobs} jobs ({len(names)} members x {n_folds} folds x {seeds} seeds, {schedule} "
        f"schedule, {device}, {budget_s:.0f} s)")
    hard_stop = deadline + 30  # a job's own budget ends before the deadline; past this, whatever finished ships
    while any(p.poll() is None for _, p, _ in procs):
        time.sleep(2 if meta["quick"] else 30)
        if time.time() > hard_stop:
            for slot, p, _ in procs:
                if p.poll() is None:
                    log(f"worker {slot}: past the hard stop, killed")
                    p.kill()
        last = [f"[{slot}] " + (lf.read_text().strip().splitlines() or ["-"])[-1][-100:] for slot, _, lf in procs]
        log(f"{time.time() - t0:.0f}s, {len(list((workdir / 'done').iterdir()))}/{n_jobs} jobs done\n  "
            + "\n  ".join(last))
    (out / "workers.log").write_text("\n".join(f"==== worker {slot}\n{lf.read_text()}" for slot, _, lf in procs))
    failed = [line for _, _, lf in procs for line in lf.read_text().splitlines() if line.endswith("FAILED")]
    log(f"workers done in {time.time() - t0:.0f}s; failed: {failed or 'none'}")
    bundle_results(workdir, meta, specs, names, n_folds, seeds, out)
    return 1 if failed else 0


def seeds_done(workdir: Path, meta: dict, names: list[str], seeds: int) -> dict[str, int]:
    """Per member, the number K of seeds 0..K-1 whose networks finished on every fold (their OOF maps complete):
    the member's OOF maps average exactly these, the same count on every fold."""
    folds = meta["split"]["folds"]
    out = {}
    for n in names:
        k = 0
        while k < seeds and all((workdir / "done" / f"{job_name(k, n, f)}.json").is_file() for f in range(len(folds))):
            k += 1
        out[n] = k
    return out


def bundle_results(workdir: Path, meta: dict, specs: dict, names: list[str], n_folds: int, seeds: int,
                   out: Path) -> None:
    """Seed-0 networks (what ships) and every member's OOF maps of each seed that finished on every fold (unpack
    chooses which to average: they compress to ~1 MiB per seed, the networks take the rest), in one
    zlib-compressed torch file split into parts the device may return; curves and job times beside it."""
    import io
    import zlib

    import torch

    k_done = seeds_done(workdir, meta, names, seeds)
    k_all = min(k_done.values())  # seeds with a network on every member x fold
    bundle: dict = {"nets": {}, "oof": {}, "seeds": k_done, "k": k_all, "n_folds": n_folds, "jobs": {},
                    "curves": {}, "planned": {n: int(specs[n]["iterations"]) for n in names}}
    for n in names:
        for k in range(n_folds):
            for s in range(seeds):
                d = workdir / n / f"fold{k}" / f"seed{s}"
                if (d / "final.pt").is_file():
                    state = torch.load(d / "final.pt", map_location="cpu", weights_only=False)
                    bundle["curves"][f"{n}/fold{k}/seed{s}"] = {"curve": state.get("curve"),
                                                                 "iterations": state["spec"]["iterations"]}
                    if s == 0:
                        bundle["nets"][f"{n}/fold{k}"] = state
        if k_all == 0:
            log(f"{n}: no seed finished on every fold, no OOF maps bundled")
            continue
        bundle["oof"][n] = {}
        for cid in meta["case_ids"]:
            maps = np.stack([np.load(oof_file(workdir, n, s, cid)) for s in range(k_all)])
            bundle["oof"][n][cid] = np.where(maps < SMALL, 0, maps).astype(np.float16)
    for f in (workdir / "done").glob("*.json"):
        bundle["jobs"][f.stem] = json.loads(f.read_text())
    buf = io.BytesIO()
    torch.save(bundle, buf)
    raw = zlib.compress(buf.getvalue(), 6)
    for i in range(0, len(raw), PART_BYTES):
        (out / f"{BUNDLE}.part{i // PART_BYTES}").write_bytes(raw[i:i + PART_BYTES])
    (out / "gpu_cv_curves.json").write_text(json.dumps({"seeds": k_done, "jobs": bundle["jobs"],
                                                        "curves": bundle["curves"]}) + "\n")
    log(f"bundled {len(bundle['nets'])} networks and the OOF maps of {k_all} seed(s) (finished per member: "
        f"{k_done}; {len(raw) / 2**20:.1f} MiB) into {out}")


def full_schedule_seeds(bundle: dict) -> list[int]:
    """The bundled seeds whose networks ran their whole planned schedule on every member x fold. A job cut by the
    deadline stops mid-cosine, at a high learning rate: its maps would weaken the mean, so they are left out."""
    k = bundle["k"]
    return [s for s in range(k) if all(bundle["curves"][f"{n}/fold{f}/seed{s}"]["iterations"] >= planned
                                       for n, planned in bundle["planned"].items() for f in range(bundle["n_folds"]))]


# ---------------------------------------------------------------- 3. unpack (here)


def unpack(src: Path, workdir: Path = GPU_WORKDIR, loss: str = config.DEFAULT_LOSS,
           intensity: str = config.DEFAULT_INTENSITY, schedule: str = "cpu") -> int:
    """The returned parts joined. Into ``workdir``: each seed-0 network as ``<member>/fold<k>/final.pt`` (+ curve),
    the OOF maps averaged over the full-schedule seeds (full_schedule_seeds) as the oof stage writes them (on the
    native grid), and settings.json as the training CLI expects them (``--gpu-seeds K``). Seed 0's own OOF maps go
    to ``<workdir>-single`` with the same networks (scored one at a time, like every CPU run's OOF maps: the
like-for-like variant in a ``--compare`` pool). Returns K."""
    import io
    import zlib

    import torch

    from hieseg.engine import preprocess

    from .stages import save_oof

    parts = sorted(src.glob(f"{BUNDLE}.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if not parts:
        raise TrainingError(f"{src}: no {BUNDLE}.part* files")
    bundle = torch.load(io.BytesIO(zlib.decompress(b"".join(p.read_bytes() for p in parts))), map_location="cpu",
                        weights_only=False)
    if bundle["k"] == 0:
        raise TrainingError(f"{src}: no seed has a network on every member x fold (finished: {bundle['seeds']})")
    used = full_schedule_seeds(bundle)
    if not used:
        log(f"warning: no seed ran its full schedule on every fold; averaging all {bundle['k']} finished seeds")
        used = list(range(bundle["k"]))
    quick = any(v["spec"]["iterations"] <= 8 for v in bundle["nets"].values())
    single = workdir.with_name(workdir.name + "-single")
    for wd, k in ((workdir, len(used)), (single, 1)):
        cfg = make_config(quick=quick, workdir=wd, loss=loss, intensity=intensity, gpu_seeds=k, gpu=schedule == "gpu")
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "settings.json").write_text(json.dumps(cfg.settings()) + "\n")
    for key, state in bundle["nets"].items():  # both workdirs ship the same seed-0 networks
        for wd in (workdir, single):
            d = wd / key
            d.mkdir(parents=True, exist_ok=True)
            torch.save(state, d / "final.pt")
            (d / "curve.json").write_text(json.dumps(state.get("curve")) + "\n")
    study = load_study(make_config(quick=quick))
    margin = study.config.crop_margin_mm
    for name, per_case in bundle["oof"].items():
        for cid, maps in per_case.items():  # maps: (seed, flip, z, y, x) on the packed crop
            c = study.cases[cid]
            crop = preprocess.crop_to_brain(c.adc, c.spacing_zyx, margin)
            for wd, seed_maps in ((workdir, maps[used]), (single, maps[:1])):
                full = np.zeros((maps.shape[1], *c.adc.shape), np.float32)
                full[(slice(None), *crop)] = seed_maps.astype(np.float32).mean(axis=0)
                save_oof(study.oof_path(name, cid, wd), list(full))
    (workdir / "device_jobs.json").write_text(json.dumps({"seeds_finished": bundle["seeds"], "seeds_averaged": used,
                                                          "jobs": bundle["jobs"], "curves": bundle["curves"]}) + "\n")
    log(f"unpacked {len(bundle['nets'])} networks into {workdir}, OOF maps averaged over seeds {used} (of "
        f"{bundle['k']} finished); seed 0's alone in {single}")
    return len(used)


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
        a.add_argument("--workdir", type=Path, default=REPO / ".gpu" / "work")
        a.add_argument("--device", default="cuda")
        a.add_argument("--loss", default=config.DEFAULT_LOSS, choices=config.LOSSES)
        a.add_argument("--intensity", default=config.DEFAULT_INTENSITY, choices=config.INTENSITIES)
        a.add_argument("--schedule", default="cpu", choices=("cpu", "gpu"),
                       help="cpu: config.MEMBERS' schedule, several networks per fold; gpu: config.GPU_SCHEDULE")
        a.add_argument("--seeds", type=int, default=5, help="networks per member and fold (different seeds); the "
                       "OOF maps average them as the runtime averages its 5 fold networks")
        a.add_argument("--members", type=lambda v: v.split(","))
        if name == "run":
            a.add_argument("--budget", type=float, default=420.0, help="seconds of training for the whole pool")
            a.add_argument("--workers", type=int, default=12, help="worker processes sharing the device")
            a.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / ".gpu" / "out")))
        else:
            a.add_argument("--slot", type=int, required=True)
            a.add_argument("--deadline", type=float, required=True, help="epoch seconds")
    a = sub.add_parser("unpack")
    a.add_argument("src", type=Path)
    a.add_argument("--workdir", type=Path, default=GPU_WORKDIR)
    a.add_argument("--loss", default=config.DEFAULT_LOSS, choices=config.LOSSES)
    a.add_argument("--intensity", default=config.DEFAULT_INTENSITY, choices=config.INTENSITIES)
    a.add_argument("--schedule", default="cpu", choices=("cpu", "gpu"))
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.out, args.quick)
        return 0
    if args.cmd == "worker":
        pool_worker(args.data, args.workdir, args.slot, args.device, args.deadline, args.loss, args.intensity,
                    args.schedule, args.seeds, args.members)
        return 0
    if args.cmd == "run":
        return run(args.data, args.out, args.workdir, args.device, args.budget, args.members, args.loss,
                   args.intensity, args.seeds, args.schedule, args.workers)
    try:
        unpack(args.src, args.workdir, args.loss, args.intensity, args.schedule)
    except TrainingError as exc:
        log(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
