"""Probe (issue 11, item 5): can a learned candidate stage with *new* information drop false-positive components?

A component filter on plain per-component statistics (volume, peak, Z-ADC / ADC statistics, position) did not beat
the tuned rule (the issue's random-forest probe). This one adds what that probe did not have:

- member disagreement: the 3D and the 2D network's own mean and peak probability inside the component, their
  difference, and the share of its voxels where both exceed the threshold;
- contralateral symmetry: the same statistics (Z-ADC, share below -2, fused probability, share predicted) at the
  component's mirror image across the brain's left-right midline (array axis x, the runtime's TTA flip axis;
  the brain's own bounding-box centre, not the grid's).

Everything is nested like the headline: for each outer fold, the fusion rule is the one the nested tuning chose on
the other folds; a logistic regression (standardised features, L2, scipy) is fitted on the other folds' components
(label: the component touches the truth) and its keep-threshold chosen by an inner leave-one-fold-out over those
folds (mean case Dice); then the held-out fold's components are kept or dropped. A case whose components are all
dropped gets an empty mask. It is compared with the plain nested rule on the same cases, under the challenge's
metrics. Inputs: the OOF maps of ``--workdir`` (default: the shipped networks' run, training/runs/cv).

    training/.venv/bin/python -m training.probes.candidates   # -> training/probes/candidates.json

By default it probes three network sets trained alike (the shipped CPU run, the GPU seed-0 networks, the GPU-schedule
run), each with and without the new information: a filter that wins on one set only is not shipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize

from training import tune as T  # the Dice-only grid these records were made with

from .. import config
from ..data import REPO
from ..study import load_study, make_config

log = logging.getLogger("training")
OUT = REPO / "training" / "probes" / "candidates.json"
FEATURES = ("log_volume", "peak", "mean", "p3d_mean", "p2d_mean", "p3d_peak", "p2d_peak", "disagreement",
            "both_share", "zadc_mean", "zadc_min", "below2_share", "adc_mean", "mirror_zadc_mean",
            "mirror_below2_share", "mirror_prob_mean", "mirror_predicted_share", "n_components", "peak_rank")
NEW_INFO = ("p3d_mean", "p2d_mean", "p3d_peak", "p2d_peak", "disagreement", "both_share", "mirror_zadc_mean",
            "mirror_below2_share", "mirror_prob_mean", "mirror_predicted_share")
KEEP_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)  # 0.0: keep all (the plain rule)


def components(case: T.CaseData, raw, choice: T.Choice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rule's kept components of one case: features (n, F), touches-truth labels (n,), voxel counts (n,) and
    truth-overlap counts (n,), all in the case's brain crop."""
    from hieseg.engine.postprocess import postprocess
    from hieseg.lesions import label_components

    fused = case.fused(choice.members, choice.flips, choice.weights)
    mask = postprocess(fused, case.brain, case.spacing_zyx, choice.mask_rule())
    labels, counts = label_components(mask)  # the runtime's connectivity
    n = len(counts) - 1
    if n == 0:
        return np.zeros((0, len(FEATURES))), np.zeros(0, bool), np.zeros(0, int), np.zeros(0, int)
    truth = case.truth[case.crop]
    zadc, adc = raw.zadc[case.crop], raw.adc[case.crop]
    probs = {config.MEMBERS[T.kind_of(m)]["kind"]: case.member_prob(m, f)
             for m, f in zip(choice.members, choice.flips)}
    p3d, p2d = probs.get("3d", fused), probs.get("2d", fused)  # a one-member choice: no disagreement to see
    # mirror across the brain's midline along x: the crop is the brain's bounding box, so its centre is the midline
    m_zadc, m_fused, m_mask = zadc[..., ::-1], fused[..., ::-1], mask[..., ::-1]
    idx = np.arange(1, n + 1)
    size = counts[1:].astype(float)
    peak = ndimage.maximum(fused, labels, idx)
    feats = {
        "log_volume": np.log(size * case.voxel_mm3),
        "peak": peak,
        "mean": ndimage.mean(fused, labels, idx),
        "p3d_mean": ndimage.mean(p3d, labels, idx), "p2d_mean": ndimage.mean(p2d, labels, idx),
        "p3d_peak": ndimage.maximum(p3d, labels, idx), "p2d_peak": ndimage.maximum(p2d, labels, idx),
        "disagreement": ndimage.mean(np.abs(p3d - p2d), labels, idx),
        "both_share": ndimage.mean(((p3d >= choice.threshold) & (p2d >= choice.threshold)).astype(float), labels, idx),
        "zadc_mean": ndimage.mean(zadc, labels, idx), "zadc_min": ndimage.minimum(zadc, labels, idx),
        "below2_share": ndimage.mean((zadc < -2).astype(float), labels, idx),
        "adc_mean": ndimage.mean(adc, labels, idx) / 1000.0,
        "mirror_zadc_mean": ndimage.mean(m_zadc, labels, idx),
        "mirror_below2_share": ndimage.mean((m_zadc < -2).astype(float), labels, idx),
        "mirror_prob_mean": ndimage.mean(m_fused, labels, idx),
        "mirror_predicted_share": ndimage.mean(m_mask.astype(float), labels, idx),
        "n_components": np.full(n, np.log(n)),
        "peak_rank": np.argsort(np.argsort(-peak)) / max(n - 1, 1),
    }
    x = np.stack([np.asarray(feats[f], float) for f in FEATURES], axis=1)
    overlap = ndimage.sum_labels(truth.astype(float), labels, idx).astype(int)
    return x, overlap > 0, size.astype(int), overlap


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0):
    """L2-regularised logistic regression on standardised features; returns a scoring function."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    t = y.astype(float)

    def loss(w):
        s = z @ w
        nll = np.sum(np.logaddexp(0, s) - t * s) + 0.5 * l2 * np.sum(w[:-1] ** 2)
        grad = z.T @ (1 / (1 + np.exp(-s)) - t) + l2 * np.r_[w[:-1], 0]
        return nll, grad

    w = optimize.minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return lambda xs: 1 / (1 + np.exp(-(np.c_[(xs - mu) / sd, np.ones(len(xs))] @ w)))


def case_dice(size: np.ndarray, overlap: np.ndarray, keep: np.ndarray, n_truth: int) -> float:
    pred = int(size[keep].sum())
    if pred + n_truth == 0:
        return 1.0
    return 2.0 * int(overlap[keep].sum()) / (pred + n_truth)


def choose_keep_threshold(table: dict, fold_ids: list[int], n_truth: dict) -> float:
    """Inner leave-one-fold-out over ``fold_ids``: each fold's components scored by a model fitted on the others;
    the keep-threshold with the best mean case Dice (ties: the lower one, closer to the plain rule)."""
    scores = {}
    for k in fold_ids:
        train = [c for c in table if table[c]["fold"] in fold_ids and table[c]["fold"] != k and len(table[c]["y"])]
        model = fit_logistic(np.concatenate([table[c]["x"] for c in train]),
                             np.concatenate([table[c]["y"] for c in train]))
        for c in (c for c in table if table[c]["fold"] == k):
            scores[c] = model(table[c]["x"]) if len(table[c]["x"]) else np.zeros(0)
    means = []
    for tau in KEEP_THRESHOLDS:
        means.append(np.mean([case_dice(table[c]["size"], table[c]["overlap"], scores[c] >= tau, n_truth[c])
                              for c in scores]))
    return KEEP_THRESHOLDS[int(np.argmax(np.round(means, 6)))]


def probe(workdir: Path, drop: tuple[str, ...] = ()) -> dict:
    """The nested comparison on one workdir's OOF maps, with the features less ``drop``."""
    from hieseg.engine.postprocess import postprocess
    from hieseg.evaluation.metrics import case_metrics
    from hieseg.lesions import label_components

    from .. import stages

    use = [i for i, f in enumerate(FEATURES) if f not in drop]
    study = load_study(make_config(workdir=workdir, threads=1))
    folds = study.finished_folds()
    cases = stages.oof_cases(study, folds)
    grid = T.score_grid(cases, config.TTA_FLIPS, log=log.info)
    cache: dict = {}
    nest = T.nested(grid, cache, log=lambda *_: None)
    n_truth = {c.case_id: int(c.truth.sum()) for c in cases}
    rows_probe, kept_log = [], []
    for k in folds:
        choice = T.select(grid, [i for i, c in enumerate(cases) if c.fold != k], cache)["choice"]  # as nested's
        table = {}
        for c in cases:
            x, y, size, overlap = components(c, study.cases[c.case_id], choice)
            table[c.case_id] = {"fold": c.fold, "x": x[:, use], "y": y, "size": size, "overlap": overlap}
        tau = choose_keep_threshold(table, [f for f in folds if f != k], n_truth)
        train = [c for c in table if table[c]["fold"] != k and len(table[c]["y"])]
        model = fit_logistic(np.concatenate([table[c]["x"] for c in train]),
                             np.concatenate([table[c]["y"] for c in train]))
        for c in (c for c in cases if c.fold == k):
            t = table[c.case_id]
            keep = (model(t["x"]) if len(t["x"]) else np.zeros(0)) >= tau
            base = postprocess(c.fused(choice.members, choice.flips, choice.weights), c.brain, c.spacing_zyx,
                               choice.mask_rule())
            labels, _ = label_components(base)
            raw = study.cases[c.case_id]
            rows_probe.append({"case_id": c.case_id, "fold": k, **case_metrics(
                raw.label, c.full(np.isin(labels, np.flatnonzero(keep) + 1)), raw.spacing_zyx)})
            kept_log.append({"keep_threshold": tau, "components": len(keep), "dropped": int((~keep).sum()),
                             "dropped_touching_truth": int((~keep & t["y"]).sum())})
    assert [r["case_id"] for r in rows_probe] == [r["case_id"] for r in nest["rows"]]
    plain, probed = T.summarise(nest["rows"]), T.summarise(rows_probe)
    log.info(f"{workdir.name} without {list(drop) or 'nothing'}: nested plain rule dice {plain['dice']:.4f} nsd "
             f"{plain['nsd']:.4f} | with the candidate stage dice {probed['dice']:.4f} nsd {probed['nsd']:.4f}")
    return {"workdir": str(workdir.relative_to(REPO) if workdir.is_relative_to(REPO) else workdir),
            "features": [FEATURES[i] for i in use], "nested_plain_rule": plain,
            "nested_with_candidate_stage": probed,
            "components_dropped": sum(r["dropped"] for r in kept_log),
            "components_dropped_touching_truth": sum(r["dropped_touching_truth"] for r in kept_log),
            "per_case": [{"case_id": a["case_id"], "fold": a["fold"],
                          "plain": {m: b[m] for m in ("dice", "masd", "nsd")},
                          "probe": {m: a[m] for m in ("dice", "masd", "nsd")}, **kl}
                         for a, b, kl in zip(rows_probe, nest["rows"], kept_log)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.probes.candidates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runs = REPO / "training" / "runs"
    p.add_argument("--workdir", type=Path, nargs="+", default=[runs / "cv", runs / "seeds-single", runs / "gpu"],
                   help="workdirs whose networks are probed one at a time (replicates: networks trained alike)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = {"note": "nested: fusion rule, component model and keep-threshold chosen without the scored fold; "
                      "'ablation' leaves out the new information (member disagreement, contralateral features)",
              "new_information": NEW_INFO, "runs": []}
    for wd in args.workdir:
        result["runs"].append({"ablation": False, **probe(wd)})
        result["runs"].append({"ablation": True, **probe(wd, NEW_INFO)})
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log.info(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
