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

    def oof_cases(self, folds: list[int]) -> list[dict]:
        out = []
        for k in folds:
            for cid in self.folds[k]:
                c = self.cases[cid]
                per_flip = {}
                for n in self.members:
                    saved = np.load(self.oof_path(n, cid))
                    if "per_flip" not in saved:
                        raise SystemExit(f"{self.oof_path(n, cid)}: no per-flip probabilities; rerun the oof stage")
                    per_flip[n] = saved["per_flip"]
                out.append({"case_id": cid, "fold": k, "per_flip": per_flip, "truth": c.label, "brain": c.brain,
                            "spacing_zyx": c.spacing_zyx, "burden": c.burden})
        return out

    def tune(self) -> dict:
        from hieseg.baseline import baseline_mask
        from hieseg.manifest import Fusion
        from hieseg.metrics import burden_stratum, case_metrics
        from hieseg.postprocess import postprocess

        from .tune import fuse, summarise, tune_with_flips

        folds = [k for k in self.finished_folds() if self.args.folds is None or k in self.args.folds]
        if not folds:
            raise SystemExit("no finished fold to tune on: run the cv stage first")
        cases = self.oof_cases(folds)
        log(f"tuning fusion and TTA flips on {len(cases)} OOF cases of folds {folds}")
        best = tune_with_flips(cases, config.TTA_FLIPS, log=log)
        fusion = Fusion(best["threshold"], best["min_component_mm3"], best["empty_max_probability_below"],
                        best["empty_min_lesion_mm3"])
        rows = defaultdict(list)
        per_case = []
        variants = {"ensemble": best["w3d"]}
        if len(self.members) > 1:
            variants.update({"unet3d only": 1.0, "unetpp2d only": 0.0})
        for c in cases:
            row = {"case_id": c["case_id"], "fold": c["fold"], "stratum": burden_stratum(c["burden"]),
                   "burden": c["burden"]}
            for vname, w in variants.items():
                mask = postprocess(fuse(c["probs"], w), c["brain"], c["spacing_zyx"], fusion)
                m = case_metrics(c["truth"], mask, c["spacing_zyx"])
                row[vname] = m
            ad = self.cases[c["case_id"]]
            row["baseline"] = case_metrics(c["truth"], baseline_mask(ad.adc, ad.zadc), c["spacing_zyx"])
            per_case.append(row)
        scores = {}
        for vname in list(variants) + ["baseline"]:
            scores[vname] = {"overall": summarise([r[vname] for r in per_case]),
                             "per_fold": {str(k): summarise([r[vname] for r in per_case if r["fold"] == k])
                                          for k in folds},
                             "per_stratum": {s: summarise([r[vname] for r in per_case if r["stratum"] == s])
                                             for s in ("none", "<1%", "1-5%", ">5%")}}
        result = {"folds": folds, "fusion": best, "scores": scores, "per_case": per_case,
                  "n_folds_total": len(self.folds)}
        (self.workdir / "tuning.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        o, b = scores["ensemble"]["overall"], scores["baseline"]["overall"]
        log(f"OOF ensemble dice {o['dice']:.3f} masd {o['masd']:.2f} nsd {o['nsd']:.3f} | "
            f"baseline dice {b['dice']:.3f} masd {b['masd']:.2f} nsd {b['nsd']:.3f}")
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
