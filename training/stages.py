"""The training stages as functions of a Study: ``cv`` (train every member on every fold, then its out-of-fold
predictions), ``oof`` (the same predictions recomputed by ONNX Runtime from the exported networks), ``tune``
(every OOF choice, scored by nested cross-validation), ``export`` (ONNX + manifest) and ``report``. Each re-run
skips what is already done; the split is its own stage (study.write_split)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .data import REPO, RawCase
from .study import Study, TrainingError

if TYPE_CHECKING:
    from hieseg.engine.ensemble import Predictor
    from hieseg.engine.manifest import Member

log = logging.getLogger("training")


def oof_maps(member: Member, predict: Predictor, batch_size: int, case: RawCase, crop_margin_mm: float
             ) -> list[np.ndarray]:
    """One case's probability maps on the native grid, one per TTA flip (config.TTA_FLIPS order), through the
    runtime's own ensemble loop (hieseg.engine.ensemble.run_ensemble) with ``predict`` as the member's predictor."""
    from hieseg.engine import preprocess
    from hieseg.engine.ensemble import Runner, run_ensemble

    member = replace(member, tta_flips=tuple(tuple(f) for f in config.TTA_FLIPS), weight=1.0)
    crop = preprocess.crop_to_brain(case.adc, case.spacing_zyx, crop_margin_mm)
    out = run_ensemble([Runner(member, predict, batch_size)], case.adc, case.zadc, case.spacing_zyx, crop,
                       keep_flips=True)
    return out.per_flip[member.name]


def save_oof(path: Path, per_flip: list[np.ndarray]) -> None:
    """One case's OOF probabilities, one map per TTA flip, so the tuning can choose the flips; ``prob`` is
    their mean."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack(per_flip)
    np.savez_compressed(path.with_suffix(".tmp.npz"), prob=stack.mean(0).astype(np.float16),
                        per_flip=stack.astype(np.float16))
    os.replace(path.with_suffix(".tmp.npz"), path)


def cv(study: Study) -> None:
    """Train every member on every selected fold (resuming from checkpoints), then write its OOF maps."""
    from .train import as_member, torch_predictor, train_member

    cfg = study.config
    for k in study.selected_folds():
        val_ids = study.folds[k]
        if study.fold_done(k):
            log.info(f"fold {k}: done")
            continue
        train_ids = study.training_ids(k)
        for name, spec in study.members.items():
            log.info(f"fold {k} {name}: {len(train_ids)} train / {len(val_ids)} val cases")
            val = study.samples(name, val_ids)
            net = train_member(spec, study.samples(name, train_ids), val, study.fold_dir(name, k), cfg.loss,
                               seed=study.train_seed(k, spec["kind"]), log=log.info, amp=cfg.bf16,
                               channels_last=cfg.bf16)
            member = as_member(name, spec, study.channels(name))
            for cid in val_ids:
                path = study.oof_path(name, cid)
                if not path.is_file():
                    save_oof(path, oof_maps(member, torch_predictor(net), spec["infer_batch"], study.cases[cid],
                                            cfg.crop_margin_mm))
            log.info(f"fold {k} {name}: OOF predictions written")


def oof(study: Study) -> None:
    """Out-of-fold probabilities recomputed by ONNX Runtime from the exported fold networks in the model folder
    (``<member>_f<k>.onnx`` predicts fold k's validation cases), through the runtime's sessions and ensemble
    loop: the tuning then sees exactly what the shipped networks compute, and the folds stay tunable when the
    torch checkpoints are gone."""
    from hieseg.engine.ensemble import plain_runner
    from hieseg.engine.manifest import load_manifest
    from hieseg.engine.providers import provider_plan
    from hieseg.engine.sessions import create_session

    manifest = load_manifest(study.config.model_dir)
    plan = provider_plan("cpu", threads=study.config.threads)  # the OOF maps: ONNX Runtime's CPU provider, f32
    for m in manifest.members:
        name, k = m.name.rsplit("_f", 1)
        if name not in study.members:
            continue
        session, _ = create_session(m.path, m.sha256, plan)
        t0 = time.time()
        for cid in study.folds[int(k)]:
            # the manifest's crop margin: the one these networks were trained and shipped with
            save_oof(study.oof_path(name, cid), oof_maps(m, plain_runner(session, m.name), m.batch_size,
                                                        study.cases[cid], manifest.crop_margin_mm))
        log.info(f"  {m.name}: OOF probabilities of fold {k} ({len(study.folds[int(k)])} cases, "
                 f"{len(config.TTA_FLIPS)} flips) in {time.time() - t0:.0f}s")


def oof_cases(study: Study, folds: list[int]) -> list:
    """OOF cases as tune.CaseData, with every pool member's per-flip probabilities."""
    from .tune import CaseData

    out = []
    for k in folds:
        for cid in study.folds[k]:
            c = study.cases[cid]
            per_flip = {}
            for label, wd in study.pool_sources().items():
                for n in study.members:
                    path = study.oof_path(n, cid, wd)
                    if not path.is_file():
                        continue
                    saved = np.load(path)
                    if "per_flip" not in saved:
                        raise TrainingError(f"{path}: no per-flip probabilities; rerun the oof stage")
                    per_flip[f"{n}@{label}"] = saved["per_flip"]
            out.append(CaseData.from_arrays(cid, k, per_flip, c.label, c.brain, c.spacing_zyx, c.burden))
    return out


def tune(study: Study) -> dict[str, Any]:
    """The shipped choice (made on all OOF cases; its score there is optimistic) and the honest estimate:
    nested cross-validation of the whole choice, for the full pool and for each member set alone. Writes
    tuning.json in the workdir and returns it."""
    from hieseg.evaluation.baseline import baseline_mask
    from hieseg.lesions import STRATA
    from hieseg.evaluation.metrics import case_metrics

    from . import tune as T

    folds = [k for k in study.finished_folds() if k in study.selected_folds()]
    if not folds:
        raise TrainingError("no finished fold to tune on: run the cv (or oof) stage first")
    cases = oof_cases(study, folds)
    pool = sorted(cases[0].per_flip)
    log.info(f"tuning on {len(cases)} OOF cases of folds {folds}; pool {pool}")
    grid = T.score_grid(cases, config.TTA_FLIPS, log=log.info)
    nsd_cache: dict = {}
    shipped = T.select(grid, range(len(cases)), nsd_cache, log=log.info)
    choice = shipped["choice"]
    in_sample = T.case_rows(grid, lambda c: choice)
    nest = T.nested(grid, nsd_cache, log=log.info) if len(folds) > 1 else None
    quiet = lambda *_: None  # noqa: E731
    by_rule = {rule: T.summarise(T.nested(grid, nsd_cache, log=quiet, rule=rule)["rows"])
               for rule in T.RULES if rule != T.DEFAULT_RULE and len(folds) > 1}
    by_set = {}
    for members in T.candidates(pool) if len(folds) > 1 else []:
        sub = T.restrict(grid, members)
        by_set["+".join(members)] = T.summarise(T.nested(sub, nsd_cache, log=quiet)["rows"])
    baseline = []
    for c in cases:
        raw = study.cases[c.case_id]
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
    result = {"folds": folds, "n_folds_total": len(study.folds), "pool": pool,
              "sources": {k: str(v.relative_to(REPO) if v.is_relative_to(REPO) else v)
                          for k, v in study.pool_sources().items()},
              "fusion": fusion,
              "scores": {"nested": scores(nest["rows"]) if nest else None, "in_sample": scores(in_sample),
                         "baseline": scores(baseline)},
              "nested_per_fold_choice": nest["per_fold_choice"] if nest else None,
              "nested_by_member_set": by_set, "selection_rule": T.DEFAULT_RULE,
              "nested_by_other_rule": by_rule, "per_case": per_case}
    (study.workdir / "tuning.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    b = result["scores"]["baseline"]["overall"]
    head = result["scores"]["nested" if nest else "in_sample"]["overall"]
    log.info(f"{'nested' if nest else 'in-sample (one fold: no nesting)'} OOF dice {head['dice']:.4f} "
             f"masd {head['masd']:.2f} nsd {head['nsd']:.4f} | Z-ADC<-2 dice {b['dice']:.4f} masd {b['masd']:.2f} "
             f"nsd {b['nsd']:.4f} | shipped choice {fusion['weights']} thr {fusion['threshold']}")
    for name, sc in by_set.items():
        log.info(f"  nested, {name} alone: dice {sc['dice']:.4f} masd {sc['masd']:.2f} nsd {sc['nsd']:.4f}")
    return result


def read_tuning(study: Study) -> dict[str, Any]:
    path = study.workdir / "tuning.json"
    if not path.is_file():
        raise TrainingError(f"{path} missing: run the tune stage first")
    return json.loads(path.read_text())


def export(study: Study) -> dict[str, Any]:
    from .export import export_all

    return export_all(study, read_tuning(study), log=log.info)


def report(study: Study) -> None:
    from .report import write_report

    write_report(study, log=log.info)


STAGES = {"cv": cv, "oof": oof, "tune": tune, "export": export, "report": report}
DEFAULT_STAGES = ["cv", "tune", "export", "report"]
