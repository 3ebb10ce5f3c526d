"""The three-metric selection (training/selection.py): its table holds what the runtime's post-processing and
the challenge's metrics give, its objective is the mean rank over Dice, MASD and NSD by definition, and its
nested choice never sees the fold it scores."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hieseg.engine.postprocess import postprocess  # noqa: E402
from hieseg.evaluation.metrics import case_metrics  # noqa: E402
from training import selection as S  # noqa: E402
from training.tune import CaseData  # noqa: E402

SPACING = (3.0, 1.5, 1.5)
KINDS = ["unet3d", "unetpp2d"]
NAMES = ["unet3d@a", "unetpp2d@b"]


def _case(seed: int, fold: int, empty: bool = False) -> CaseData:
    rng = np.random.default_rng(seed)
    shape = (10, 24, 24)
    truth = np.zeros(shape, bool) if empty else ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.56
    brain = np.ones(shape, bool)
    brain[:, :2] = False
    per_flip = {}
    for name in NAMES:  # each network: the truth blurred, plus its own noise; the flip a little different
        maps = [np.clip(ndimage.gaussian_filter(truth.astype(float), 1.0) + 0.35 * ndimage.gaussian_filter(
            rng.random(shape), 1.2) - 0.1, 0, 1) for _ in range(2)]
        per_flip[name] = np.stack(maps).astype(np.float32)
    return CaseData.from_arrays(f"c{seed}", fold, per_flip, truth, brain, SPACING, float(truth.mean()))


def _pool(**over) -> dict:
    pool = {"member_weights": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], "tta": [False, True], "thresholds": [0.3, 0.5],
            "min_component_mm3": [0.0, 20.0], "component_filters": [None, {"type": "peak", "value": 0.7},
                                                                   {"type": "edge", "value": 2.0}],
            "objective": "rank3", "alternative_objectives": ["dice"]}
    return {**pool, **over}


def test_the_committed_pool_enumerates_as_declared():
    pool = S.load_pool()
    n = (len(pool["member_weights"]) * len(pool["tta"]) * len(pool["thresholds"]) * len(pool["min_component_mm3"])
         * len(pool["component_filters"]))
    assert len(S.enumerate_candidates(pool, NAMES, KINDS)) == n
    only_3d = S.enumerate_candidates(pool, ["unet3d@a"], KINDS)  # weight vectors needing the 2D member drop out
    n_3d_only = sum(1 for w in pool["member_weights"] if w[0] > 0 and w[1] == 0)
    assert len(only_3d) == n // len(pool["member_weights"]) * n_3d_only
    assert all(c.members == ("unet3d@a",) and c.weights == (1.0,) for c in only_3d)
    assert [c.index for c in only_3d] == list(range(len(only_3d)))


def test_score_table_is_the_runtime_mask_scored_by_the_challenge_metrics():
    cases = [_case(s, s % 2, empty=(s == 3)) for s in range(4)]
    candidates = S.enumerate_candidates(_pool(), NAMES, KINDS)
    table = S.score_table(cases, candidates, log=lambda *_: None)
    for j in (0, 5, len(candidates) // 2, len(candidates) - 1):
        cand = candidates[j]
        for i, case in enumerate(cases):
            fused = sum(w * case.per_flip[m][list(f)].mean(0) for m, f, w in zip(cand.members, cand.flips,
                                                                                 cand.weights))
            full = np.zeros(case.truth.shape, bool)
            full[case.crop] = postprocess(fused, case.brain, SPACING, cand.mask_rule())
            want = case_metrics(case.truth, full, SPACING)
            np.testing.assert_allclose(table[j, i], [want[k] for k in S.METRICS], equal_nan=True)
    # the fork workers give the same table
    np.testing.assert_array_equal(S.score_table(cases, candidates, workers=2, log=lambda *_: None), table)


def _ranks(values, higher_is_better):
    """Competition-free ranks from the definition: 1 + the number better, ties sharing the mean of their places."""
    out = []
    for v in values:
        better = sum(1 for u in values if (u > v if higher_is_better else u < v))
        equal = sum(1 for u in values if u == v)
        out.append(better + (equal + 1) / 2)
    return out


def test_rank3_is_the_mean_rank_over_the_three_metrics():
    # 4 candidates x 3 cases; candidate 3's MASD is NaN on a case (skipped by its mean, as the scorer does)
    table = np.array([
        [[0.6, 2.0, 0.7], [0.5, 4.0, 0.6], [0.7, 1.0, 0.8]],
        [[0.7, 3.0, 0.6], [0.6, 5.0, 0.6], [0.8, 2.0, 0.7]],
        [[0.6, 2.0, 0.7], [0.5, 4.0, 0.6], [0.7, 1.0, 0.8]],  # a copy of candidate 0: ties share their ranks
        [[0.0, math.nan, 0.0], [0.6, 1.0, 0.9], [0.9, 1.0, 0.9]],
    ])
    dice, nsd = table[..., 0].mean(1), table[..., 2].mean(1)
    masd = [float(np.mean([v for v in row if not math.isnan(v)])) for row in table[..., 1]]
    want = (np.array(_ranks(list(dice), True)) + _ranks(masd, False) + _ranks(list(nsd), True)) / 3
    np.testing.assert_allclose(S.objective_values(table, [0, 1, 2], "rank3"), want)
    np.testing.assert_allclose(S.objective_values(table, [0, 1, 2], "dice"), -dice)


def test_ties_go_to_dice_then_fewer_passes_then_the_pool_order():
    cands = [S.Candidate(i, ("unet3d@a",), (1.0,), tta, 0.3, 0.0, None) for i, tta in enumerate([True, False, False])]
    table = np.tile(np.array([[[0.5, 2.0, 0.5]]]), (3, 2, 1))
    assert S.choose(table, [0, 1], cands, "rank3") == 1  # identity only beats TTA at equal scores; 1 before 2


def test_nested_choice_never_sees_the_fold_it_scores():
    cases = [_case(s, s % 3) for s in range(6)]
    candidates = S.enumerate_candidates(_pool(), NAMES, KINDS)
    table = S.score_table(cases, candidates, log=lambda *_: None)
    folds = [c.fold for c in cases]
    chosen = S.nested(table, folds, candidates, "rank3")
    rng = np.random.default_rng(0)
    for k in sorted(set(folds)):
        scrambled = table.copy()
        held = [i for i, f in enumerate(folds) if f == k]
        scrambled[:, held] = rng.random((len(candidates), len(held), 3))
        assert S.nested(scrambled, folds, candidates, "rank3")[k] == chosen[k]
        others = [i for i, f in enumerate(folds) if f != k]
        assert chosen[k] == S.choose(table, others, candidates, "rank3")


def test_candidate_describes_the_manifest_fusion():
    c = S.enumerate_candidates(_pool(), NAMES, KINDS)[-1]
    d = c.describe([[], [2]])
    assert d["weights"] == {"unet3d@a": 0.5, "unetpp2d@b": 0.5}
    assert d["tta_flips"] == {"unet3d@a": [[], [2]], "unetpp2d@b": [[], [2]]}
    assert d["component_filter"] == {"type": "edge", "value": 2.0}
    json.dumps(d)


def test_margins_over_the_rule():
    m = S.margins({"dice": 0.6, "masd": 3.0, "nsd": 0.7}, {"dice": 0.5, "masd": 5.0, "nsd": 0.6})
    assert m == pytest.approx({"delta_dice": 0.1, "masd_ratio": 0.6, "delta_nsd": 0.1})
