"""The fast fusion tuner scores exactly what the runtime's post-processing + the challenge Dice would give."""

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hieseg.manifest import Fusion  # noqa: E402
from hieseg.metrics import case_metrics  # noqa: E402
from hieseg.postprocess import postprocess  # noqa: E402
from training.tune import _case_table, _dice_of, pick_tta, tta_choices, tune, tune_with_flips  # noqa: E402
from scipy import ndimage  # noqa: E402


def _case(seed, empty=False):
    rng = np.random.default_rng(seed)
    shape = (12, 24, 24)
    prob = ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    truth = np.zeros(shape, bool) if empty else ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.55
    brain = np.ones(shape, bool)
    brain[:, :2] = False
    return prob, truth, brain, (3.0, 1.5, 1.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr,min_mm3,ep,ev", [(0.5, 0.0, 0.0, 0.0), (0.4, 20.0, 0.0, 0.0), (0.6, 10.0, 0.8, 0.0),
                                               (0.45, 5.0, 0.0, 100.0), (0.3, 40.0, 0.9, 50.0)])
def test_fast_dice_matches_postprocess(seed, thr, min_mm3, ep, ev):
    prob, truth, brain, spacing = _case(seed, empty=seed % 3 == 0)
    table = _case_table(prob, truth, brain, float(np.prod(spacing)), thr)
    fast = _dice_of(table, min_mm3, ep, ev)
    mask = postprocess(prob, brain, spacing, Fusion(thr, min_mm3, ep, ev))
    assert fast == pytest.approx(case_metrics(truth, mask, spacing)["dice"], abs=1e-9)


def test_tune_returns_a_configuration_from_the_grid():
    cases = []
    for seed in range(4):
        prob, truth, brain, spacing = _case(seed, empty=seed == 0)
        cases.append({"probs": {"unet3d": prob, "unetpp2d": prob ** 2}, "truth": truth, "brain": brain,
                      "spacing_zyx": spacing})
    best = tune(cases, log=lambda *_: None)
    assert best["threshold"] in best["grid"]["threshold"] and best["w3d"] in best["grid"]["w3d"]
    assert 0.0 <= best["mean_dice"] <= 1.0 and best["n_cases"] == 4


def test_tta_choices_always_keep_the_identity_cheapest_first():
    assert tta_choices(1) == [(0,)]
    assert tta_choices(2) == [(0,), (0, 1)]
    assert tta_choices(3) == [(0,), (0, 1), (0, 2), (0, 1, 2)]


def test_a_flip_ships_only_if_it_earns_its_time():
    assert pick_tta([(0.620, 0), (0.623, 1)]) == 0  # +0.003 Dice for one more pass: not worth it
    assert pick_tta([(0.620, 0), (0.627, 1)]) == 1
    assert pick_tta([(0.620, 0), (0.620, 1)]) == 0  # a tie goes to the cheaper


def test_tune_with_flips_drops_a_flip_that_adds_nothing():
    cases = []
    for seed in range(4):
        prob, truth, brain, spacing = _case(seed, empty=seed == 0)
        same = np.stack([prob, prob])  # the "flipped" prediction equals the plain one
        cases.append({"per_flip": {"unet3d": same, "unetpp2d": same ** 2}, "truth": truth, "brain": brain,
                      "spacing_zyx": spacing})
    best = tune_with_flips(cases, [[], [2]], log=lambda *_: None)
    assert best["tta_flips"] == {"unet3d": [[]], "unetpp2d": [[]]}
    assert len(best["tta_comparison"]) == 4
    np.testing.assert_allclose(cases[1]["probs"]["unetpp2d"], cases[1]["per_flip"]["unetpp2d"][0])
