"""python -m training [--quick] [STAGE ...]: tarball -> split -> cross-validation -> OOF tuning -> ONNX -> model/.

Stages (default ``all``): ``cv`` (train every member on every fold, resuming, then out-of-fold predictions),
``oof`` (not in ``all``: recompute the OOF predictions with ONNX Runtime from the exported fold networks in the
model folder), ``tune`` (fusion and TTA flips on the OOF predictions available), ``export`` (ONNX + parity +
manifest for the folds finished), ``report`` (RESULTS.md + learning curve). Re-running a stage skips what is already done.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import config
from .data import REPO, SPLITS, TARBALL, ensure_data, load_cases, load_split, make_split

QUICK_CASES = ["MGHNICU_438", "MGHNICU_447"]


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Run:
    def __init__(self, args):
        import torch

        torch.set_num_threads(args.threads)
        self.args = args
        self.quick = args.quick
        self.workdir = Path(args.workdir or (REPO / "training" / "runs" / ("quick" if args.quick else "cv")))
        self.model_dir = Path(args.model_dir or (self.workdir / "model" if args.quick else REPO / "model"))
        self.members = config.quick(config.MEMBERS) if args.quick else config.MEMBERS
        if args.members:  # variant comparisons on one member
            self.members = {n: m for n, m in self.members.items() if n in args.members}
        if args.gpu and not args.quick:  # networks trained on a lent GPU (training/device_cv.py): its schedule, unpacked into workdir
            self.members = {n: {**m, **config.GPU_SCHEDULE[n]} for n, m in self.members.items()}
        if args.iterations:  # a longer (or shorter) schedule for some members, in a workdir of its own
            unknown = set(args.iterations) - set(self.members)
            if unknown:
                raise SystemExit(f"--iterations: unknown member(s) {sorted(unknown)}")
            self.members = {n: {**m, "iterations": args.iterations.get(n, m["iterations"])}
                            for n, m in self.members.items()}
        self.root = ensure_data()
        ids = QUICK_CASES if args.quick else None
        self.cases = load_cases(self.root, ids)
        if args.quick:
            self.split = make_split({c: self.cases[c].burden for c in QUICK_CASES}, n_folds=2)
        else:
            if not SPLITS.is_file():
                SPLITS.write_text(json.dumps(make_split({c: v.burden for c, v in self.cases.items()}), indent=1) + "\n")
            self.split = load_split()
        self.folds = self.split["folds"]
        # intensity statistics over all brain voxels of the cases (unsupervised; no labels involved)
        self.stats = config.brain_stats(list(self.cases.values()))
        fresh = not args.stages or "all" in args.stages or "cv" in args.stages
        if self.quick and fresh and self.workdir.is_dir() and not args.workdir:
            import shutil

            shutil.rmtree(self.workdir)  # a smoke run always starts from scratch
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {"loss": args.loss, "intensity": args.intensity}
        if args.iterations:
            settings["iterations"] = args.iterations
        if args.gpu:
            settings["schedule"] = "gpu"
        sfile = self.workdir / "settings.json"
        if sfile.is_file():
            old = json.loads(sfile.read_text())
            if old != settings:
                raise SystemExit(f"{self.workdir} was started with {old}; use another --workdir for {settings}")
        else:
            sfile.write_text(json.dumps(settings) + "\n")

    def channels(self, name: str) -> list[dict]:
        return config.channel_specs(self.members[name]["sources"], self.args.intensity, self.stats)

    def samples(self, name: str, ids: list[str]):
        from .train import prepare_case

        spec = self.members[name]
        return [prepare_case(self.cases[c], self.channels(name), spec["target_spacing_zyx"]) for c in ids]

    def fold_dir(self, name: str, k: int) -> Path:
        return self.workdir / name / f"fold{k}"

    def oof_path(self, name: str, case_id: str) -> Path:
        return self.workdir / "oof" / name / f"{case_id}.npz"

    def fold_done(self, k: int) -> bool:
        """Fold k's OOF predictions exist for every member (from its checkpoints, or from its exported networks
        by the ``oof`` stage): the fold can be tuned, and ``cv`` does not train it again."""
        return all(self.oof_path(n, c).is_file() for n in self.members for c in self.folds[k])

    # ------------------------------------------------------------ stages

    def cv(self) -> None:
        from hieseg import preprocess

        from .train import member_probability, train_member

        for k, val_ids in enumerate(self.folds):
            if self.args.folds is not None and k not in self.args.folds:
                continue
            if self.fold_done(k):
                log(f"fold {k}: done")
                continue
            train_ids = [c for f, ids in enumerate(self.folds) if f != k for c in ids]
            for name, spec in self.members.items():
                log(f"fold {k} {name}: {len(train_ids)} train / {len(val_ids)} val cases")
                val = self.samples(name, val_ids)
                net = train_member(spec, self.samples(name, train_ids), val, self.fold_dir(name, k),
                                   self.args.loss, seed=1000 * k + (1 if spec["kind"] == "3d" else 2), log=log)
                for s in val:
                    if not self.oof_path(name, s.case_id).is_file():
                        self.save_oof(name, s.case_id, [preprocess.restore(member_probability(net, s.image, spec, [f]),
                                                                           s.prepared) for f in config.TTA_FLIPS])
                log(f"fold {k} {name}: OOF predictions written")

    def save_oof(self, name: str, case_id: str, per_flip: list[np.ndarray]) -> None:
        """One case's OOF probabilities on the native grid, one per TTA flip (config.TTA_FLIPS order), so the
        tuning can choose the flips; ``prob`` is their mean."""
        path = self.oof_path(name, case_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        stack = np.stack(per_flip)
        np.savez_compressed(path.with_suffix(".tmp.npz"), prob=stack.mean(0).astype(np.float16),
                            per_flip=stack.astype(np.float16))
        os.replace(path.with_suffix(".tmp.npz"), path)

    def oof(self) -> None:
        """Out-of-fold probabilities recomputed by ONNX Runtime from the exported fold networks in the model
        folder (``<member>_f<k>.onnx`` predicts fold k's validation cases), through the runtime's own sessions,
        preprocessing, tiling and restoring: the tuning then sees exactly what the shipped networks compute,
        and the folds stay tunable when the torch checkpoints are gone."""
        from dataclasses import replace

        from hieseg import preprocess
        from hieseg.ensemble import LoadedMember, member_probability
        from hieseg.manifest import load_manifest
        from hieseg.sessions import create_session

        manifest = load_manifest(self.model_dir)
        for m in manifest.members:
            name, k = m.name.rsplit("_f", 1)
            if name not in self.members:
                continue
            session, provider = create_session(m.path, m.sha256, "cpu", None, self.args.threads)
            # one loaded member per flip: the runtime's member_probability then gives each flip's map alone
            per_flip = [LoadedMember(replace(m, tta_flips=(tuple(f),)), session, provider) for f in config.TTA_FLIPS]
            t0 = time.time()
            for cid in self.folds[int(k)]:
                c = self.cases[cid]
                crop = preprocess.crop_to_brain(c.adc, c.spacing_zyx, manifest.crop_margin_mm)
                prep = preprocess.prepare(c.adc, c.zadc, c.spacing_zyx, m.channels, m.target_spacing_zyx, crop)
                self.save_oof(name, cid, [preprocess.restore(member_probability(lm, prep), prep) for lm in per_flip])
            log(f"  {m.name}: OOF probabilities of fold {k} ({len(self.folds[int(k)])} cases, "
                f"{len(config.TTA_FLIPS)} flips) in {time.time() - t0:.0f}s")

    def finished_folds(self) -> list[int]:
        return [k for k in range(len(self.folds)) if self.fold_done(k)]

    def pool_sources(self) -> dict[str, Path]:
        """Workdirs whose OOF predictions compete in the tuning: this run's and each ``--compare`` workdir, by
        folder name (pool members are named ``<member>@<folder>``)."""
        out = {self.workdir.name: self.workdir}
        for d in self.args.compare or []:
            out[Path(d).name] = Path(d)
        return out

    def oof_cases(self, folds: list[int]):
        """OOF cases as tune.CaseData, with every pool member's per-flip probabilities."""
        from .tune import CaseData

        out = []
        for k in folds:
            for cid in self.folds[k]:
                c = self.cases[cid]
                per_flip = {}
                for label, wd in self.pool_sources().items():
                    for n in self.members:
                        path = wd / "oof" / n / f"{cid}.npz"
                        if not path.is_file():
                            continue
                        saved = np.load(path)
                        if "per_flip" not in saved:
                            raise SystemExit(f"{path}: no per-flip probabilities; rerun the oof stage")
                        per_flip[f"{n}@{label}"] = saved["per_flip"]
                out.append(CaseData.from_arrays(cid, k, per_flip, c.label, c.brain, c.spacing_zyx, c.burden))
        return out

    def tune(self) -> dict:
        """The shipped choice (made on all OOF cases; its score there is optimistic) and the honest estimate:
        nested cross-validation of the whole choice, for the full pool and for each member set alone."""
        from hieseg.baseline import baseline_mask
        from hieseg.metrics import STRATA, case_metrics

        from . import tune as T

        folds = [k for k in self.finished_folds() if self.args.folds is None or k in self.args.folds]
        if not folds:
            raise SystemExit("no finished fold to tune on: run the cv stage first")
        cases = self.oof_cases(folds)
        pool = sorted(cases[0].per_flip)
        log(f"tuning on {len(cases)} OOF cases of folds {folds}; pool {pool}")
        grid = T.score_grid(cases, config.TTA_FLIPS, log=log)
        nsd_cache: dict = {}
        shipped = T.select(grid, range(len(cases)), nsd_cache, log=log)
        choice = shipped["choice"]
        in_sample = T.case_rows(grid, lambda c: choice)
        nest = T.nested(grid, nsd_cache, log=log) if len(folds) > 1 else None
        by_rule = {rule: T.summarise(T.nested(grid, nsd_cache, log=lambda *_: None, rule=rule)["rows"])
                   for rule in T.RULES if rule != T.DEFAULT_RULE and len(folds) > 1}
        by_set = {}
        for members in T.candidates(pool) if len(folds) > 1 else []:
            sub = T.restrict(grid, members)
            by_set["+".join(members)] = T.summarise(T.nested(sub, nsd_cache, log=lambda *_: None)["rows"])
        baseline = []
        for c in cases:
            raw = self.cases[c.case_id]
            baseline.append({"case_id": c.case_id, "fold": c.fold, **case_metrics(
                raw.label, baseline_mask(raw.adc, raw.zadc), raw.spacing_zyx)})

        def scores(rows):
            return {"overall": T.summarise(rows),
                    "per_fold": {str(k): T.summarise([r for r, c in zip(rows, cases) if c.fold == k]) for k in folds},
                    "per_stratum": {s: T.summarise([r for r, c in zip(rows, in_sample) if c["stratum"] == s])
                                    for s in STRATA}}

        per_case = [{"case_id": r["case_id"], "fold": r["fold"], "stratum": r["stratum"], "burden": r["burden"],
                     "nested": ({k: nest["rows"][i][k] for k in ("dice", "masd", "nsd")} if nest else None),
                     "in_sample": {k: r[k] for k in ("dice", "masd", "nsd")},
                     "baseline": {k: baseline[i][k] for k in ("dice", "masd", "nsd")}}
                    for i, r in enumerate(in_sample)]
        fusion = {**choice.describe(grid.flip_axes), "mean_dice": shipped["mean_dice"],
                  "mean_nsd": shipped["mean_nsd"], "n_cases": len(cases), "tta_min_gain": T.TTA_MIN_GAIN,
                  "groups": shipped["groups"]}
        result = {"folds": folds, "n_folds_total": len(self.folds), "pool": pool,
                  "sources": {k: str(v.relative_to(REPO) if v.is_relative_to(REPO) else v)
                              for k, v in self.pool_sources().items()},
                  "fusion": fusion,
                  "scores": {"nested": scores(nest["rows"]) if nest else None, "in_sample": scores(in_sample),
                             "baseline": scores(baseline)},
                  "nested_per_fold_choice": nest["per_fold_choice"] if nest else None,
                  "nested_by_member_set": by_set, "selection_rule": T.DEFAULT_RULE,
                  "nested_by_other_rule": by_rule, "per_case": per_case}
        (self.workdir / "tuning.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        b = result["scores"]["baseline"]["overall"]
        head = result["scores"]["nested" if nest else "in_sample"]["overall"]
        log(f"{'nested' if nest else 'in-sample (one fold: no nesting)'} OOF dice {head['dice']:.4f} "
            f"masd {head['masd']:.2f} nsd {head['nsd']:.4f} | Z-ADC<-2 dice {b['dice']:.4f} masd {b['masd']:.2f} "
            f"nsd {b['nsd']:.4f} | shipped choice {fusion['weights']} thr {fusion['threshold']}")
        for name, sc in by_set.items():
            log(f"  nested, {name} alone: dice {sc['dice']:.4f} masd {sc['masd']:.2f} nsd {sc['nsd']:.4f}")
        return result

    def export(self) -> None:
        from .export import export_all

        tuning = json.loads((self.workdir / "tuning.json").read_text())
        export_all(self, tuning, log=log)

    def report(self) -> None:
        from .report import write_report

        write_report(self, log=log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="*", default=[], help="all (default: cv tune export report), cv, oof, tune, "
                   "export, report")
    p.add_argument("--quick", action="store_true", help="2 cases, 2 folds, a few iterations (CI): same code path")
    p.add_argument("--workdir", help="checkpoints, OOF predictions and logs (default training/runs/cv or /quick)")
    p.add_argument("--model-dir", help="where the ONNX members and manifest go (default model/, quick: workdir/model)")
    p.add_argument("--loss", default=config.DEFAULT_LOSS, choices=config.LOSSES)
    p.add_argument("--intensity", default=config.DEFAULT_INTENSITY, choices=config.INTENSITIES)
    p.add_argument("--folds", type=lambda s: [int(v) for v in s.split(",")],
                   help="cv and tune: only these folds (variant comparisons)")
    p.add_argument("--ship-folds", type=lambda s: [int(v) for v in s.split(",")],
                   help="export: ship only these finished folds' networks (inference-time budget); "
                        "fusion is still tuned on every finished fold's OOF predictions")
    p.add_argument("--members", type=lambda s: s.split(","),
                   help="train / tune only these members (variant comparisons), e.g. unetpp2d")
    p.add_argument("--iterations", type=lambda s: {k: int(v) for k, v in (kv.split("=") for kv in s.split(","))},
                   help="MEMBER=N[,...]: training iterations instead of config.MEMBERS' (use an own --workdir), "
                        "e.g. unet3d=2000")
    p.add_argument("--gpu", action="store_true",
                   help="the workdir holds networks trained on a lent GPU (python -m training.device_cv unpack): "
                        "config.GPU_SCHEDULE, OOF/tune/export/report run here as usual")
    p.add_argument("--compare", action="append", metavar="WORKDIR",
                   help="tune: OOF predictions of another workdir compete as other variants of the same members "
                        "(e.g. training/runs/cv, whose networks are the exported ones in the model folder)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="export: allow uncommitted changes under training/ or hieseg/ (recorded in the manifest)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    bad = [s for s in args.stages if s not in ("all", "cv", "oof", "tune", "export", "report")]
    if bad:
        p.error(f"unknown stage(s) {bad}")
    stages = ["cv", "tune", "export", "report"] if not args.stages or "all" in args.stages else args.stages
    t0 = time.time()
    run = Run(args)
    for stage in stages:
        log(f"== {stage}")
        getattr(run, stage)()
    log(f"done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
