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


def require_native_bf16(cfg: Any) -> None:
    """Refuse (TrainingError, one line) a bf16 workdir on a CPU that only emulates bfloat16 (``cpu_has_native_bf16``),
    before any step: emulated, a run would take about a hundred times as long as in float32."""
    from .train import cpu_has_native_bf16

    if cfg.bf16 and not cpu_has_native_bf16():
        raise TrainingError("this workdir trains in bf16 (--bf16), but this CPU has no native bf16 (AVX512-BF16 or "
                            "AMX): emulated, it runs about 100x slower than float32; train it on such a CPU, or "
                            "without --bf16 in another --workdir")


def cv(study: Study) -> None:
    """Train every member on every selected fold (resuming from checkpoints), then write its OOF maps."""
    from .train import as_member, torch_predictor, train_member

    cfg = study.config
    if not all(study.fold_done(k) for k in study.selected_folds()):
        require_native_bf16(cfg)
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
    """Every OOF choice made among the pre-registered candidates of training/pool.json on the pool's objective
    (training/selection.py): the shipped choice (made on all OOF cases; its score there is optimistic) and the
    honest estimate, nested cross-validation of the whole choice, for the pool's objective, its alternatives and
    each member set alone. Writes tuning.json in the workdir (figures rounded as everywhere) and returns it."""
    from hieseg.evaluation.baseline import baseline_mask
    from hieseg.evaluation.metrics import case_metrics
    from hieseg.lesions import STRATA, burden_stratum

    from . import selection as S
    from . import tune as T
    from .figures import rounded

    folds = [k for k in study.finished_folds() if k in study.selected_folds()]
    if not folds:
        raise TrainingError("no finished fold to tune on: run the cv (or oof) stage first")
    cases = oof_cases(study, folds)
    names = sorted(cases[0].per_flip)
    pool = S.load_pool()
    candidates = S.enumerate_candidates(pool, names, list(config.MEMBERS))
    if not candidates:
        raise TrainingError(f"no candidate of {S.POOL_FILE.name} can be built from the networks {names}")
    log.info(f"tuning on {len(cases)} OOF cases of folds {folds}; networks {names}; {len(candidates)} "
             f"pre-registered candidates ({S.POOL_FILE.name}), objective {pool['objective']}")
    table = S.score_table(cases, candidates, workers=study.config.threads, log=log.info)
    case_folds = [c.fold for c in cases]
    objective = pool["objective"]
    nestable = len(folds) > 1

    def rows(metrics: np.ndarray) -> list[dict[str, Any]]:
        return [{"case_id": c.case_id, "fold": c.fold, "stratum": burden_stratum(c.burden), "burden": c.burden,
                 **dict(zip(S.METRICS, map(float, m)))} for c, m in zip(cases, metrics)]

    def scores(case_rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"overall": T.summarise(case_rows),
                "per_fold": {str(k): T.summarise([r for r in case_rows if r["fold"] == k]) for k in folds},
                "per_stratum": {s: T.summarise([r for r in case_rows if r["stratum"] == s]) for s in STRATA}}

    def choice_entry(i: int, on: list[int]) -> dict[str, Any]:
        m = S.means(table[[i]], on)[0]
        return {**candidates[i].describe(config.TTA_FLIPS), "label": candidates[i].label(),
                "inner": dict(zip(S.METRICS, map(float, m)))}

    everything = list(range(len(cases)))
    shipped = S.choose(table, everything, candidates, objective)
    in_sample = rows(table[shipped])
    nested_choice = S.nested(table, case_folds, candidates, objective) if nestable else None
    nested_rows = rows(S.nested_rows(table, case_folds, nested_choice)) if nestable else None
    baseline = []
    for c in cases:
        raw = study.cases[c.case_id]
        baseline.append({"case_id": c.case_id, "fold": c.fold, "stratum": burden_stratum(c.burden),
                         "burden": c.burden, **case_metrics(raw.label, baseline_mask(raw.adc, raw.zadc),
                                                            raw.spacing_zyx)})
    rule = T.summarise(baseline)
    alternatives = {}
    for alt in (pool.get("alternative_objectives") or []) if nestable else []:
        alt_choice = S.nested(table, case_folds, candidates, alt)
        alt_rows = rows(S.nested_rows(table, case_folds, alt_choice))
        alternatives[alt] = {"overall": T.summarise(alt_rows), "margins": S.margins(T.summarise(alt_rows), rule),
                             "spread": S.spread(alt_choice, candidates),
                             "per_fold_choice": {str(k): candidates[i].label() for k, i in alt_choice.items()},
                             "per_case": {r["case_id"]: {k: r[k] for k in S.METRICS} for r in alt_rows},
                             "in_sample_choice": candidates[S.choose(table, everything, candidates, alt)].label()}
    by_set = {}
    for members in sorted({c.members for c in candidates}) if nestable else []:
        allowed = [c.index for c in candidates if c.members == members]
        chosen = S.nested(table, case_folds, candidates, objective, allowed)
        summary = T.summarise(rows(S.nested_rows(table, case_folds, chosen)))
        by_set["+".join(members)] = {**summary, "margins": S.margins(summary, rule)}
    per_case = [{"case_id": r["case_id"], "fold": r["fold"], "stratum": r["stratum"], "burden": r["burden"],
                 "nested": ({k: nested_rows[i][k] for k in S.METRICS} if nestable else None),
                 "in_sample": {k: r[k] for k in S.METRICS},
                 "baseline": {k: baseline[i][k] for k in S.METRICS}}
                for i, r in enumerate(in_sample)]
    head = T.summarise(nested_rows if nestable else in_sample)
    fusion = {**candidates[shipped].describe(config.TTA_FLIPS), "label": candidates[shipped].label(),
              "objective": objective, "n_candidates": len(candidates), "n_cases": len(cases),
              "in_sample": T.summarise(in_sample), "in_sample_margins": S.margins(T.summarise(in_sample), rule)}
    result = rounded({
        "folds": folds, "n_folds_total": len(study.folds), "pool": names,
        "sources": {k: str(v.relative_to(REPO) if v.is_relative_to(REPO) else v)
                    for k, v in study.pool_sources().items()},
        "candidate_pool": {"file": f"training/{S.POOL_FILE.name}", "n_candidates": len(candidates),
                           "objective": objective, "alternative_objectives": list(alternatives)},
        "fusion": fusion,
        "scores": {"nested": scores(nested_rows) if nestable else None, "in_sample": scores(in_sample),
                   "baseline": scores(baseline)},
        "margins": S.margins(head, rule),
        "nested_per_fold_choice": ({str(k): choice_entry(i, [j for j, f in enumerate(case_folds) if f != k])
                                    for k, i in nested_choice.items()} if nestable else None),
        "nested_choice_spread": S.spread(nested_choice, candidates) if nestable else None,
        "nested_by_objective": alternatives, "nested_by_member_set": by_set, "selection_rule": objective,
        "per_case": per_case})
    (study.workdir / "tuning.json").write_text(json.dumps(result, indent=1) + "\n")
    def num(v, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    b, mg = result["scores"]["baseline"]["overall"], result["margins"]
    e = result["scores"]["nested" if nestable else "in_sample"]["overall"]
    log.info(f"{'nested' if nestable else 'in-sample (one fold: no nesting)'} OOF dice {num(e['dice'], '.4f')} "
             f"masd {num(e['masd'], '.2f')} nsd {num(e['nsd'], '.4f')} | Z-ADC<-2 dice {num(b['dice'], '.4f')} "
             f"masd {num(b['masd'], '.2f')} nsd {num(b['nsd'], '.4f')} | margins dDice {num(mg['delta_dice'], '+.4f')} "
             f"MASD x{num(mg['masd_ratio'], '.3f')} dNSD {num(mg['delta_nsd'], '+.4f')} | shipped {fusion['label']}")
    for name, sc in [*((f"objective {k}", v["overall"]) for k, v in result["nested_by_objective"].items()),
                     *((f"{k} alone", v) for k, v in by_set.items())]:
        log.info(f"  nested, {name}: dice {num(sc['dice'], '.4f')} masd {num(sc.get('masd'), '.2f')} "
                 f"nsd {num(sc['nsd'], '.4f')}")
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
