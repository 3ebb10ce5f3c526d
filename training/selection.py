"""Choosing the model on all three challenge metrics among a pre-registered candidate pool, nested.

The pool (``training/pool.json``, committed before any candidate was scored) declares every candidate: fusion
weights over the members (a zero weight: that member is not shipped), TTA (identity only, or identity + the
left-right flip for every member), threshold, minimum component and one optional component filter. Every
candidate's per-case Dice, MASD and NSD are computed once with the runtime's own post-processing and the
challenge's metrics (``score_table``); a choice on any subset of the cases is then a few array operations.

Objectives (``objective_values``, lower is better):

- ``rank3``: each candidate's mean rank over the three metrics across the candidates (Dice and NSD: higher is
  better; MASD: lower; ties share their mean rank), as the leaderboard ranks teams. MASD's mean skips the NaN
  cases (an empty mask on a lesion case, a mask on a lesion-free case) exactly as the scorer's means do; such a
  case costs that candidate Dice 0 and NSD 0.
- ``dice``: mean Dice alone, reported as the alternative.

Ties go to the higher mean Dice, then to fewer forward passes (no TTA), then to the earlier pool entry.
``nested`` chooses on the other folds' cases and scores the choice on each held-out fold: the honest figure.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hieseg.engine.manifest import ComponentFilter, MaskRule

POOL_FILE = Path(__file__).with_name("pool.json")
OBJECTIVES = ("rank3", "dice")
METRICS = ("dice", "masd", "nsd")


@dataclass(frozen=True)
class Candidate:
    """One pre-registered configuration: which members ship with which weights, TTA, and the mask rule."""

    index: int  # position in the pool's enumeration: the last tie-break
    members: tuple[str, ...]  # pool names (``<member>@<source>``) with a non-zero weight, in config.MEMBERS order
    weights: tuple[float, ...]
    tta: bool
    threshold: float
    min_component_mm3: float
    component_filter: ComponentFilter | None

    @property
    def flips(self) -> tuple[tuple[int, ...], ...]:
        """Per member: indices into its saved per-flip stack (config.TTA_FLIPS: 0 identity, 1 left-right)."""
        return tuple((0, 1) if self.tta else (0,) for _ in self.members)

    @property
    def passes(self) -> int:
        return sum(len(f) for f in self.flips)

    def mask_rule(self) -> MaskRule:
        return MaskRule(self.threshold, self.min_component_mm3, component_filter=self.component_filter)

    def describe(self, flip_axes: Sequence[Sequence[int]]) -> dict[str, Any]:
        """The fusion entry the tuning record, the export and the report read."""
        return {"members": list(self.members), "weights": dict(zip(self.members, self.weights)),
                "tta_flips": {m: [list(flip_axes[i]) for i in f] for m, f in zip(self.members, self.flips)},
                "threshold": self.threshold, "min_component_mm3": self.min_component_mm3,
                "component_filter": None if self.component_filter is None else self.component_filter.to_json(),
                "empty_max_probability_below": 0.0, "empty_min_lesion_mm3": 0.0, "pool_index": self.index}

    def label(self) -> str:
        w = "+".join(f"{m}:{w:g}" for m, w in zip(self.members, self.weights))
        f = "" if self.component_filter is None else f" {self.component_filter.type}<{self.component_filter.value:g}>"
        return f"{w} {'tta' if self.tta else 'id'} t{self.threshold:g} min{self.min_component_mm3:g}{f}"


def load_pool(path: Path = POOL_FILE) -> dict[str, Any]:
    pool = json.loads(Path(path).read_text())
    if pool.get("objective") not in OBJECTIVES:
        raise ValueError(f"{path}: objective must be one of {OBJECTIVES}")
    return pool


def enumerate_candidates(pool: dict[str, Any], names: Sequence[str], kinds: Sequence[str]) -> list[Candidate]:
    """The pool's candidates over the networks at hand. ``names``: the OOF pool names (``<member>@<source>``);
    ``kinds``: the members in config.MEMBERS order, which ``member_weights`` vectors follow. A kind with several
    sources gives one candidate per source combination; a weight vector needing a member that is not at hand is
    skipped; the same candidate reached twice is kept once."""
    by_kind = {k: sorted(n for n in names if n.split("@", 1)[0] == k) for k in kinds}
    present = [k for k in kinds if by_kind[k]]
    filters = [None if f is None else ComponentFilter(f["type"], float(f["value"])) for f in pool["component_filters"]]
    out, seen = [], set()
    for weights in pool["member_weights"]:
        if len(weights) != len(kinds):
            raise ValueError(f"pool: weight vector {weights} does not match the members {list(kinds)}")
        used = [(k, float(w)) for k, w in zip(kinds, weights) if w > 0]
        if not used or any(k not in present for k, _ in used):
            continue
        total = sum(w for _, w in used)
        for sources in itertools.product(*(by_kind[k] for k, _ in used)):
            for tta, thr, min_mm3, flt in itertools.product(pool["tta"], pool["thresholds"], pool["min_component_mm3"],
                                                            filters):
                key = (sources, tuple(round(w / total, 6) for _, w in used), bool(tta), float(thr), float(min_mm3), flt)
                if key in seen:
                    continue
                seen.add(key)
                out.append(Candidate(len(out), *key))
    return out


# ---------------------------------------------------------------- the metric table


_CASES: list = []  # the worker processes' cases (inherited by fork: no pickling of the probability maps)


def _case_scores(args: tuple[int, list[Candidate]]) -> tuple[np.ndarray, int]:
    """Dice, MASD, NSD of every candidate on one case; candidates giving the same mask share one computation."""
    from hieseg.engine.postprocess import postprocess
    from hieseg.evaluation.metrics import case_metrics

    i, candidates = args
    case = _CASES[i]
    out = np.empty((len(candidates), 3))
    by_mask: dict[bytes, tuple] = {}
    for j, cand in enumerate(candidates):
        prob = case.fused(cand.members, cand.flips, cand.weights)
        crop = postprocess(prob, case.brain, case.spacing_zyx, cand.mask_rule())
        key = hashlib.blake2b(np.packbits(crop).tobytes(), digest_size=16).digest()
        if key not in by_mask:
            m = case_metrics(case.truth, case.full(crop), case.spacing_zyx)
            by_mask[key] = tuple(m[k] for k in METRICS)
        out[j] = by_mask[key]
    case._means = None  # the per-flip means cached for this case: not needed again
    return out, len(by_mask)


def score_table(cases: list, candidates: list[Candidate], workers: int = 1, log: Callable = print) -> np.ndarray:
    """Per-case (dice, masd, nsd) of every candidate: shape (candidates, cases, 3), MASD NaN where undefined."""
    global _CASES
    _CASES = cases
    jobs = [(i, candidates) for i in range(len(cases))]
    table = np.empty((len(candidates), len(cases), 3))
    masks = 0
    try:
        if workers > 1 and os.name == "posix":
            import multiprocessing

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
                results = list(ex.map(_case_scores, jobs))
        else:
            results = [_case_scores(j) for j in jobs]
    finally:
        _CASES = []
    for i, (scores, n_masks) in enumerate(results):
        table[:, i] = scores
        masks += n_masks
    log(f"  scored {len(candidates)} candidates on {len(cases)} cases ({masks} distinct masks)")
    return table


# ---------------------------------------------------------------- choosing


def means(table: np.ndarray, on: Sequence[int]) -> np.ndarray:
    """(candidates, 3): mean Dice, NaN-skipping mean MASD (NaN when every case is NaN), mean NSD over ``on``."""
    sub = table[:, list(on)]
    masd = sub[..., 1]
    finite = ~np.isnan(masd)
    count = finite.sum(1)
    masd_mean = np.where(count > 0, np.where(finite, masd, 0).sum(1) / np.maximum(count, 1), np.nan)
    return np.stack([sub[..., 0].mean(1), masd_mean, sub[..., 2].mean(1)], axis=1)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank 1 = the lowest value, ties share their mean rank, NaN ranks last."""
    from scipy.stats import rankdata

    return rankdata(np.where(np.isnan(values), np.inf, values), method="average")


def objective_values(table: np.ndarray, on: Sequence[int], objective: str) -> np.ndarray:
    """Each candidate's objective on the cases ``on`` (lower is better)."""
    m = means(table, on)
    if objective == "dice":
        return -m[:, 0]
    if objective == "rank3":
        return (_ranks(-m[:, 0]) + _ranks(m[:, 1]) + _ranks(-m[:, 2])) / 3.0
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def choose(table: np.ndarray, on: Sequence[int], candidates: Sequence[Candidate], objective: str,
           allowed: Sequence[int] | None = None) -> int:
    """The index of the candidate the objective picks on ``on`` (among ``allowed``, default all)."""
    allowed = list(range(len(candidates))) if allowed is None else list(allowed)
    values = objective_values(table[allowed], on, objective)
    dice = means(table[allowed], on)[:, 0]
    best = min(range(len(allowed)), key=lambda j: (round(float(values[j]), 9), -round(float(dice[j]), 9),
                                                   candidates[allowed[j]].passes, candidates[allowed[j]].index))
    return allowed[best]


def nested(table: np.ndarray, folds: Sequence[int], candidates: Sequence[Candidate], objective: str,
           allowed: Sequence[int] | None = None) -> dict[int, int]:
    """Fold -> the candidate chosen on the other folds' cases (``folds``: each case's fold)."""
    folds = list(folds)
    return {k: choose(table, [i for i, f in enumerate(folds) if f != k], candidates, objective, allowed)
            for k in sorted(set(folds))}


def nested_rows(table: np.ndarray, folds: Sequence[int], chosen: dict[int, int]) -> np.ndarray:
    """(cases, 3): each case's metrics under its fold's nested choice."""
    return np.stack([table[chosen[f], i] for i, f in enumerate(folds)])


def spread(chosen: dict[int, int], candidates: Sequence[Candidate]) -> dict[str, Any]:
    """How much the choice moved across the outer folds: distinct choices, and the values each part took."""
    picks = [candidates[c] for c in chosen.values()]

    def values(f):
        out: dict[str, int] = {}
        for c in picks:
            out[f(c)] = out.get(f(c), 0) + 1
        return out

    return {"distinct_choices": len({c.index for c in picks}), "outer_folds": len(picks),
            "weights": values(lambda c: "+".join(f"{m}:{w:g}" for m, w in zip(c.members, c.weights))),
            "tta": values(lambda c: "identity + left-right" if c.tta else "identity"),
            "threshold": values(lambda c: f"{c.threshold:g}"),
            "min_component_mm3": values(lambda c: f"{c.min_component_mm3:g}"),
            "component_filter": values(lambda c: "none" if c.component_filter is None else
                                       f"{c.component_filter.type} {c.component_filter.value:g}")}


def margins(model: dict[str, Any], rule: dict[str, Any]) -> dict[str, float]:
    """The three margins over the Z-ADC rule on the same cases: ΔDice, MASD ratio (model / rule), ΔNSD."""
    ratio = model["masd"] / rule["masd"] if rule.get("masd") and not math.isnan(rule["masd"]) else math.nan
    return {"delta_dice": model["dice"] - rule["dice"], "masd_ratio": ratio, "delta_nsd": model["nsd"] - rule["nsd"]}
