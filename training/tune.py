"""The earlier Dice-only fusion grid and its nested cross-validation, kept for the research probes
(training/probes/), whose committed records were made with it. The pipeline's ``tune`` stage no longer uses it:
since issue 26 every OOF choice is made among the pre-registered candidates of training/pool.json on the mean rank
over Dice, MASD and NSD (training/selection.py). ``CaseData`` (one OOF case cropped to its brain) and
``summarise`` serve both.

Here, ``select`` chose which trained variant of each member ships (pool names ``<member>@<source>``), each
member's TTA flips, the fusion weights, the threshold, the minimum component size and the case-level empty rule,
on mean Dice under the challenge's rules; a flip had to earn ``TTA_MIN_GAIN`` per extra forward pass, and mean
NSD broke near-ties.

``score_grid`` computes every case's Dice for every point of the grid once (components are labelled once per
fused map and threshold; the component filter and empty rules are vectorised), so choosing on any subset of the
cases is cheap. ``nested`` then chooses on the other folds and scores the choice on each held-out fold: the
honest estimate. ``select`` on all cases gave what shipped; its own score on those cases is in-sample (optimistic).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

WEIGHT_STEPS = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)  # the first member's share when two members fuse
THRESHOLDS = (0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
MIN_COMPONENT_MM3 = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)
EMPTY_MAX_PROB = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EMPTY_MIN_MM3 = (0.0, 10.0, 25.0, 50.0, 100.0)
TTA_MIN_GAIN = 0.005  # mean OOF Dice that one more forward pass per member must add to be worth its time
DICE_TIE = 0.005  # configurations this close to the best Dice are compared on NSD
NSD_FINALISTS = 5


def kind_of(pool_name: str) -> str:
    """The member a pool name trains ('<member>@gpu' -> '<member>')."""
    return pool_name.split("@", 1)[0]


def weight_grid(n_members: int) -> list[tuple[float, ...]]:
    """Fusion weight vectors: the first member's share for two members; tenths of the simplex (none zero) else."""
    if n_members == 1:
        return [(1.0,)]
    if n_members == 2:
        return [(w, round(1.0 - w, 6)) for w in WEIGHT_STEPS]
    return [tuple(v / 10 for v in c) for c in itertools.product(range(1, 10), repeat=n_members) if sum(c) == 10]


def candidates(pool: Sequence[str]) -> list[tuple[str, ...]]:
    """Member sets to choose from: one pool entry of each member kind (every source combination)."""
    kinds = sorted({kind_of(p) for p in pool})
    return list(itertools.product(*([p for p in sorted(pool) if kind_of(p) == k] for k in kinds)))


def tta_choices(n_flips: int) -> list[tuple[int, ...]]:
    """Flip subsets that always keep the identity (index 0), cheapest first."""
    return [(0, *extra) for r in range(n_flips) for extra in itertools.combinations(range(1, n_flips), r)]


@dataclass(frozen=True)
class Choice:
    """One point of the grid: what ships and how its probabilities become a mask."""

    members: tuple[str, ...]
    flips: tuple[tuple[int, ...], ...]  # per member: indices into its saved per-flip stack
    weights: tuple[float, ...]
    threshold: float
    min_component_mm3: float
    empty_max_probability_below: float
    empty_min_lesion_mm3: float

    @property
    def extra_passes(self) -> int:
        return sum(len(f) - 1 for f in self.flips)

    def mask_rule(self):
        from hieseg.engine.manifest import MaskRule

        return MaskRule(self.threshold, self.min_component_mm3, self.empty_max_probability_below,
                        self.empty_min_lesion_mm3)

    def describe(self, flip_axes: Sequence[Sequence[int]]) -> dict:
        return {"members": list(self.members), "weights": dict(zip(self.members, self.weights)),
                "tta_flips": {m: [list(flip_axes[i]) for i in f] for m, f in zip(self.members, self.flips)},
                "threshold": self.threshold, "min_component_mm3": self.min_component_mm3,
                "empty_max_probability_below": self.empty_max_probability_below,
                "empty_min_lesion_mm3": self.empty_min_lesion_mm3}


# ---------------------------------------------------------------- per-case arrays


@dataclass
class CaseData:
    """One OOF case cropped to its brain's bounding box (nothing outside the brain is ever predicted)."""

    case_id: str
    fold: int
    per_flip: dict[str, np.ndarray]  # pool name -> (flips, z, y, x) in the crop
    truth: np.ndarray  # full grid, bool
    brain: np.ndarray  # crop
    crop: tuple[slice, ...]
    spacing_zyx: tuple[float, float, float]
    burden: float
    _means: dict | None = None

    @classmethod
    def from_arrays(cls, case_id: str, fold: int, per_flip: dict[str, np.ndarray], truth: np.ndarray,
                    brain: np.ndarray, spacing_zyx, burden: float) -> "CaseData":
        idx = np.argwhere(brain)
        crop = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0))) if len(idx) else \
            tuple(slice(0, 0) for _ in brain.shape)
        return cls(case_id, fold, {n: np.asarray(p[(slice(None),) + crop], dtype=np.float32)
                                   for n, p in per_flip.items()},
                   np.asarray(truth, bool), brain[crop], crop, tuple(float(s) for s in spacing_zyx), burden)

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing_zyx))

    def member_prob(self, member: str, flips: tuple[int, ...]) -> np.ndarray:
        if self._means is None:
            self._means = {}
        key = (member, flips)
        if key not in self._means:
            self._means[key] = self.per_flip[member][list(flips)].mean(0)
        return self._means[key]

    def fused(self, choice_members, flips, weights) -> np.ndarray:
        return sum(w * self.member_prob(m, f) for m, f, w in zip(choice_members, flips, weights))

    def full(self, crop_mask: np.ndarray) -> np.ndarray:
        out = np.zeros(self.truth.shape, bool)
        out[self.crop] = crop_mask
        return out


def mask_of(case: CaseData, choice: Choice) -> np.ndarray:
    """The runtime's post-processing of the chosen fusion, on the full grid."""
    from hieseg.engine.postprocess import postprocess

    prob = case.fused(choice.members, choice.flips, choice.weights)
    return case.full(postprocess(prob, case.brain, case.spacing_zyx, choice.mask_rule()))


# ---------------------------------------------------------------- the Dice table


def component_table(prob: np.ndarray, truth_in_crop: np.ndarray, brain: np.ndarray, thr: float):
    """Peak probability in the brain, and the voxel count and truth overlap of each component >= thr."""
    from hieseg.lesions import label_components

    inside = np.where(brain, prob, 0.0)
    maxp = float(inside.max(initial=0.0))
    labels, sizes = label_components(inside >= thr)
    overlaps = np.bincount(labels[truth_in_crop], minlength=len(sizes)) if truth_in_crop.any() else \
        np.zeros(len(sizes), int)
    return maxp, sizes[1:], overlaps[1:]


def post_dice(maxp: float, sizes: np.ndarray, overlaps: np.ndarray, n_truth: int, vox: float) -> np.ndarray:
    """Dice for every (min component, empty peak, empty volume) of the grid, shape (6, 9, 5): the runtime's rule
    (``hieseg.engine.postprocess.keep_components``, broadcast over the grid) followed by the challenge's Dice."""
    from hieseg.engine.postprocess import keep_components

    keep = keep_components(sizes, maxp, vox, np.asarray(MIN_COMPONENT_MM3)[:, None, None],
                           np.asarray(EMPTY_MAX_PROB)[None, :, None], np.asarray(EMPTY_MIN_MM3)[None, None, :])
    pred = (keep * sizes).sum(-1).astype(float)
    inter = (keep * overlaps).sum(-1).astype(float)
    den = n_truth + pred
    return np.where(den == 0, 1.0, 2.0 * inter / np.maximum(den, 1))


@dataclass
class Grid:
    prefixes: list[tuple]  # (members, flips, weights, threshold)
    dice: np.ndarray  # (prefix, min component, empty peak, empty volume, case); NaN where a rule is redundant
    cases: list[CaseData]
    flip_axes: list[list[int]]

    def choice(self, p: int, a: int, b: int, c: int) -> Choice:
        members, flips, weights, thr = self.prefixes[p]
        return Choice(members, flips, weights, thr, MIN_COMPONENT_MM3[a], EMPTY_MAX_PROB[b], EMPTY_MIN_MM3[c])


def restrict(grid: Grid, members: Sequence[str]) -> Grid:
    """The grid limited to one member set (its own nested figure)."""
    keep = [i for i, p in enumerate(grid.prefixes) if p[0] == tuple(members)]
    return Grid([grid.prefixes[i] for i in keep], grid.dice[keep], grid.cases, grid.flip_axes)


def score_grid(cases: list[CaseData], flip_axes: list[list[int]], members: Sequence[Sequence[str]] | None = None,
               log: Callable = print, thresholds: Sequence[float] | None = None) -> Grid:
    """Per-case Dice at every grid point, for every candidate member set (default: every source combination);
    ``thresholds``: the threshold axis (default THRESHOLDS; a probe's fusion may need another range)."""
    thresholds = THRESHOLDS if thresholds is None else thresholds
    pool = sorted(cases[0].per_flip)
    sets = [tuple(m) for m in members] if members else candidates(pool)
    redundant = np.asarray(EMPTY_MAX_PROB)[None, :] <= np.asarray(thresholds)[:, None]  # peak < ep <= thr: empty anyway
    redundant &= np.asarray(EMPTY_MAX_PROB)[None, :] > 0
    truths = [c.truth[c.crop] for c in cases]
    n_truth = [int(c.truth.sum()) for c in cases]
    prefixes, blocks = [], []
    for cand in sets:
        for flips in itertools.product(*(tta_choices(cases[0].per_flip[m].shape[0]) for m in cand)):
            for weights in weight_grid(len(cand)):
                fused = [c.fused(cand, flips, weights) for c in cases]
                for ti, thr in enumerate(thresholds):
                    block = np.stack([post_dice(*component_table(f, t, c.brain, thr), n, c.voxel_mm3)
                                      for f, t, c, n in zip(fused, truths, cases, n_truth)], axis=-1)
                    block[:, redundant[ti], :, :] = np.nan
                    prefixes.append((cand, flips, weights, thr))
                    blocks.append(block.astype(np.float32))
        log(f"  grid: {cand} scored")
    return Grid(prefixes, np.stack(blocks), cases, [list(f) for f in flip_axes])


# ---------------------------------------------------------------- choosing


RULES = ("one_se", "argmax")
DEFAULT_RULE = "one_se"


def _conservativeness(choice: Choice) -> tuple:
    """Orders configurations from the least to the most aggressive post-processing and cost: what can erase a
    whole true lesion (case-level empty rules, then the component filter) first, then extra TTA passes."""
    return (choice.empty_max_probability_below, choice.empty_min_lesion_mm3, choice.min_component_mm3,
            choice.extra_passes)


def select(grid: Grid, on: Sequence[int], nsd_cache: dict | None = None, log: Callable = lambda *_: None,
           rule: str = DEFAULT_RULE) -> dict:
    """The choice made on the cases ``on`` (indices into grid.cases).

    Every configuration's score is its mean Dice less TTA_MIN_GAIN per extra forward pass.
    ``argmax``: the best score; NSD decides among those within DICE_TIE of it (Dice rounded to 0.001).
    ``one_se`` (Breiman's one-standard-error rule): among the configurations within one standard error of the best
    score (the standard error of the best configuration's mean Dice over ``on``), the least aggressive
    post-processing (``_conservativeness``), then the best score, then NSD. With ~30 cases and three lesion-free
    ones, a case-level empty rule or a large component filter that wins on the tuning cases by a fraction of its
    noise erases small true lesions of unseen cases; the rule keeps such a rule only when it wins clearly.
    """
    from hieseg.evaluation.metrics import case_metrics

    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    nsd_cache = {} if nsd_cache is None else nsd_cache
    on = list(on)
    with warnings.catch_warnings():  # redundant rules are NaN for every case
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(grid.dice[..., on], axis=-1)
    passes = np.asarray([sum(len(f) - 1 for f in p[1]) for p in grid.prefixes], dtype=float)
    score = np.where(np.isnan(mean), -np.inf, mean - TTA_MIN_GAIN * passes[:, None, None, None])
    flat = score.reshape(len(grid.prefixes), -1)
    best_idx = int(np.argmax(flat))
    best = float(flat.reshape(-1)[best_idx])
    if rule == "argmax":
        band = DICE_TIE
        pool = np.flatnonzero(flat.reshape(-1) >= best - band - 1e-12)
    else:
        p, rest = divmod(best_idx, flat.shape[1])
        a, b, c = np.unravel_index(rest, grid.dice.shape[1:4])
        per_case = grid.dice[p, a, b, c][on]
        band = float(np.std(per_case, ddof=1) / np.sqrt(len(on))) if len(on) > 1 else 0.0
        pool = np.flatnonzero(flat.reshape(-1) >= best - band - 1e-12)

    def choice_at(i):
        p, rest = divmod(int(i), flat.shape[1])
        a, b, c = np.unravel_index(rest, grid.dice.shape[1:4])
        return grid.choice(p, int(a), int(b), int(c))

    chosen_pool = [(float(flat.reshape(-1)[i]), choice_at(i)) for i in pool]
    if rule == "one_se":
        least = min(_conservativeness(ch) for _, ch in chosen_pool)
        chosen_pool = [(d, ch) for d, ch in chosen_pool if _conservativeness(ch) == least]
        top = max(d for d, _ in chosen_pool)
        chosen_pool = [(d, ch) for d, ch in chosen_pool if d >= top - DICE_TIE - 1e-12]
    chosen_pool.sort(key=lambda t: -t[0])
    finalists = []
    for d, choice in chosen_pool[:NSD_FINALISTS]:
        nsds = []
        for i in on:
            key = (choice, i)
            if key not in nsd_cache:
                case = grid.cases[i]
                nsd_cache[key] = case_metrics(case.truth, mask_of(case, choice), case.spacing_zyx)["nsd"]
            nsds.append(nsd_cache[key])
        finalists.append((d, float(np.mean(nsds)), choice))
        log(f"  finalist score {d:.4f} nsd {finalists[-1][1]:.4f} {choice}")
    finalists.sort(key=lambda f: (-round(f[0], 3), -f[1]))
    d, nsd, choice = finalists[0]
    dice = d + TTA_MIN_GAIN * choice.extra_passes
    best_per_prefix = np.max(np.where(np.isnan(mean), -np.inf, mean).reshape(len(grid.prefixes), -1), axis=1)
    groups: dict[tuple, float] = {}  # best mean Dice (no TTA cost) of each member set and flip choice, reported
    for (members, flips, _, _), best_p in zip(grid.prefixes, best_per_prefix):
        groups[(members, flips)] = max(groups.get((members, flips), -np.inf), float(best_p))
    groups_scored = [{"members": list(k[0]), "tta_flips": {m: [grid.flip_axes[i] for i in f] for m, f in zip(*k)},
                      "best_mean_dice": v} for k, v in groups.items()]
    return {"choice": choice, "mean_dice": dice, "mean_nsd": nsd, "n_cases": len(on), "rule": rule,
            "band": band, "groups": groups_scored}


def case_rows(grid: Grid, choice_of: Callable[[CaseData], Choice]) -> list[dict]:
    from hieseg.evaluation.metrics import case_metrics
    from hieseg.lesions import burden_stratum

    rows = []
    for case in grid.cases:
        m = case_metrics(case.truth, mask_of(case, choice_of(case)), case.spacing_zyx)
        rows.append({"case_id": case.case_id, "fold": case.fold, "stratum": burden_stratum(case.burden),
                     "burden": case.burden, **m})
    return rows


def nested(grid: Grid, nsd_cache: dict | None = None, log: Callable = print, rule: str = DEFAULT_RULE) -> dict:
    """Each fold's cases scored with the choice made on the other folds' cases."""
    nsd_cache = {} if nsd_cache is None else nsd_cache
    folds = sorted({c.fold for c in grid.cases})
    chosen = {}
    for k in folds:
        on = [i for i, c in enumerate(grid.cases) if c.fold != k]
        chosen[k] = select(grid, on, nsd_cache, rule=rule)
        log(f"  nested: fold {k} scored with the choice made on the other folds: "
            f"{chosen[k]['choice'].describe(grid.flip_axes)}")
    rows = case_rows(grid, lambda c: chosen[c.fold]["choice"])
    per_fold = {str(k): {**chosen[k]["choice"].describe(grid.flip_axes), "inner_mean_dice": chosen[k]["mean_dice"]}
                for k in folds}
    return {"rows": rows, "choices": {k: chosen[k]["choice"] for k in folds}, "per_fold_choice": per_fold}


def evaluate(grid: Grid) -> dict:
    """A grid's two figures: the choice made on all its cases with its score there (in-sample, optimistic: what
    would ship) and the nested procedure's (honest), with the nested per-case rows and per-fold choices."""
    cache: dict = {}
    chosen = select(grid, range(len(grid.cases)), cache)
    nest = nested(grid, cache, log=lambda *_: None)
    return {"in_sample_choice": chosen["choice"], "in_sample": summarise(case_rows(grid, lambda c: chosen["choice"])),
            "nested": summarise(nest["rows"]), "nested_rows": nest["rows"], "per_fold_choice": nest["per_fold_choice"],
            "nested_choices": nest["choices"]}


def summarise(rows: list[dict]) -> dict:
    """Mean Dice / MASD (NaN-skipping, as the leaderboard) / NSD of per-case rows."""
    from hieseg.evaluation.metrics import nanmean

    if not rows:
        return {"n": 0}
    return {"n": len(rows), "dice": float(np.mean([r["dice"] for r in rows])),
            "masd": nanmean(r["masd"] for r in rows), "nsd": float(np.mean([r["nsd"] for r in rows])),
            "masd_n": sum(1 for r in rows if not math.isnan(r["masd"]))}
