"""Fusion tuning on out-of-fold probabilities: member weights, threshold, minimum component size and the
case-level empty rule, maximising mean Dice (challenge rules) with mean NSD as the tie-break."""

from __future__ import annotations

import itertools
import math

import numpy as np

WEIGHTS_3D = (0.05, 0.1, 0.15, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)  # both members always ship; single members are reported
THRESHOLDS = (0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
MIN_COMPONENT_MM3 = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)
EMPTY_MAX_PROB = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EMPTY_MIN_MM3 = (0.0, 10.0, 25.0, 50.0, 100.0)


def _case_table(prob: np.ndarray, truth: np.ndarray, brain: np.ndarray, vox: float, thr: float):
    from hieseg.postprocess import label_components

    inside = np.where(brain, prob, 0.0)
    maxp = float(inside.max(initial=0.0))
    labels, sizes = label_components(inside >= thr)
    overlaps = np.bincount(labels[truth], minlength=len(sizes)) if truth.any() else np.zeros(len(sizes), int)
    return maxp, sizes[1:], overlaps[1:], int(truth.sum()), vox


def _dice_of(table, min_mm3: float, e_p: float, e_v: float) -> float:
    maxp, sizes, overlaps, n_truth, vox = table
    if e_p > 0 and maxp < e_p:
        pred = inter = 0
    else:
        min_vox = min_mm3 / vox
        keep = sizes >= min_vox if min_vox > 1 else np.ones(len(sizes), bool)
        pred, inter = int(sizes[keep].sum()), int(overlaps[keep].sum())
        if e_v > 0 and pred * vox < e_v:
            pred = inter = 0
    if n_truth + pred == 0:
        return 1.0
    return 2.0 * inter / (n_truth + pred)


def fuse(probs: dict[str, np.ndarray], w3d: float) -> np.ndarray:
    names = sorted(probs)
    if len(names) == 1:
        return probs[names[0]]
    p3 = next(p for n, p in probs.items() if n.startswith("unet3d"))
    p2 = next(p for n, p in probs.items() if not n.startswith("unet3d"))
    return w3d * p3 + (1.0 - w3d) * p2


def tune(cases: list[dict], log=print, top_k_nsd: int = 5) -> dict:
    """``cases``: dicts with probs {member: prob}, truth, brain, spacing_zyx. Returns the best fusion and ranking."""
    from hieseg.manifest import Fusion
    from hieseg.metrics import case_metrics
    from hieseg.postprocess import postprocess

    one_member = len(cases[0]["probs"]) == 1
    results = []
    for w in ((1.0,) if one_member else WEIGHTS_3D):
        fused = [fuse(c["probs"], w) for c in cases]
        for thr in THRESHOLDS:
            tables = [_case_table(f, c["truth"], c["brain"], float(np.prod(c["spacing_zyx"])), thr)
                      for f, c in zip(fused, cases)]
            for mc, ep, ev in itertools.product(MIN_COMPONENT_MM3, EMPTY_MAX_PROB, EMPTY_MIN_MM3):
                if ep and ep <= thr:  # a peak below the threshold already gives an empty mask
                    continue
                d = float(np.mean([_dice_of(t, mc, ep, ev) for t in tables]))
                results.append((d, w, thr, mc, ep, ev))
    results.sort(key=lambda r: -r[0])
    # NSD tie-break among the top configurations (within 0.005 Dice of the best)
    best_d = results[0][0]
    finalists = [r for r in results if r[0] >= best_d - 0.005][:top_k_nsd]
    scored = []
    for d, w, thr, mc, ep, ev in finalists:
        fusion = Fusion(thr, mc, ep, ev)
        nsd = []
        for c in cases:
            mask = postprocess(fuse(c["probs"], w), c["brain"], c["spacing_zyx"], fusion)
            nsd.append(case_metrics(c["truth"], mask, c["spacing_zyx"])["nsd"])
        scored.append((d, float(np.mean(nsd)), w, thr, mc, ep, ev))
        log(f"  finalist dice {d:.4f} nsd {scored[-1][1]:.4f} w3d {w} thr {thr} min {mc} empty p<{ep} v<{ev}")
    scored.sort(key=lambda r: (-round(r[0], 3), -r[1]))
    d, nsd, w, thr, mc, ep, ev = scored[0]
    return {"w3d": w, "threshold": thr, "min_component_mm3": mc, "empty_max_probability_below": ep,
            "empty_min_lesion_mm3": ev, "mean_dice": d, "mean_nsd": nsd, "n_cases": len(cases),
            "grid": {"w3d": WEIGHTS_3D, "threshold": THRESHOLDS, "min_component_mm3": MIN_COMPONENT_MM3,
                     "empty_max_probability_below": EMPTY_MAX_PROB, "empty_min_lesion_mm3": EMPTY_MIN_MM3}}


TTA_MIN_GAIN = 0.005  # mean OOF Dice that one more forward pass per member must add to be worth its time


def tta_probs(case: dict, choice: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Each member's probability averaged over the chosen flips (indices into its saved ``per_flip`` stack)."""
    return {n: case["per_flip"][n][list(idx)].astype(np.float32).mean(0) for n, idx in choice.items()}


def tta_choices(n_flips: int) -> list[tuple[int, ...]]:
    """Flip subsets that always keep the identity (index 0), cheapest first."""
    return [(0, *extra) for r in range(n_flips) for extra in itertools.combinations(range(1, n_flips), r)]


def pick_tta(scored: list[tuple[float, int]]) -> int:
    """Index of the (mean Dice, extra forward passes) pair that wins once each extra pass costs TTA_MIN_GAIN."""
    return max(range(len(scored)), key=lambda i: (scored[i][0] - TTA_MIN_GAIN * scored[i][1], -scored[i][1]))


def tune_with_flips(cases: list[dict], flips: list[list[int]], log=print) -> dict:
    """``tune`` for every combination of per-member TTA flip subsets; a flip is kept only if it earns its time
    (``pick_tta``). Sets each case's ``probs`` to the chosen flips' mean and returns the best fusion with
    ``tta_flips`` (member -> flip axes) and the comparison."""
    names = sorted(cases[0]["per_flip"])
    combos = list(itertools.product(*(tta_choices(len(cases[0]["per_flip"][n])) for n in names)))
    runs = []
    for combo in combos:
        choice = dict(zip(names, combo))
        for c in cases:
            c["probs"] = tta_probs(c, choice)
        best = tune(cases, log=lambda *_: None)
        label = {n: [flips[i] for i in idx] for n, idx in choice.items()}
        log(f"  TTA {label}: dice {best['mean_dice']:.4f} nsd {best['mean_nsd']:.4f} "
            f"(w3d {best['w3d']}, thr {best['threshold']})")
        runs.append((choice, label, best))
    win = pick_tta([(b["mean_dice"], sum(len(i) - 1 for i in ch.values())) for ch, _, b in runs])
    choice, label, best = runs[win]
    for c in cases:
        c["probs"] = tta_probs(c, choice)
    return {**best, "tta_flips": label, "tta_min_gain": TTA_MIN_GAIN,
            "tta_comparison": [{"tta_flips": lb, "mean_dice": b["mean_dice"], "mean_nsd": b["mean_nsd"]}
                               for _, lb, b in runs]}


def summarise(rows: list[dict]) -> dict:
    """Mean Dice / MASD (NaN-skipping, as the leaderboard) / NSD of per-case rows."""
    from hieseg.metrics import nanmean

    if not rows:
        return {"n": 0}
    return {"n": len(rows), "dice": float(np.mean([r["dice"] for r in rows])),
            "masd": nanmean(r["masd"] for r in rows), "nsd": float(np.mean([r["nsd"] for r in rows])),
            "masd_n": sum(1 for r in rows if not math.isnan(r["masd"]))}
