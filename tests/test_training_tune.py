"""The fusion tuner scores exactly what the runtime's post-processing + the challenge Dice give, chooses the true
argmax, and its nested estimate never sees the fold it scores."""

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hieseg.engine.manifest import MaskRule  # noqa: E402
from hieseg.engine.postprocess import postprocess  # noqa: E402
from training import tune as T  # noqa: E402

SPACING = (3.0, 1.5, 1.5)


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """The challenge's Dice from its definition: 2|A∩B| / (|A| + |B|), 1 when both masks are empty."""
    total = int(truth.sum()) + int(pred.sum())
    return 1.0 if total == 0 else 2.0 * int((truth & pred).sum()) / total


def _arrays(seed, empty=False):
    rng = np.random.default_rng(seed)
    shape = (12, 24, 24)
    prob = ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    truth = np.zeros(shape, bool) if empty else ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.55
    brain = np.ones(shape, bool)
    brain[:, :2] = False
    return prob, truth, brain


def _case(seed, fold, empty=False, flipped_equal=True):
    prob, truth, brain = _arrays(seed, empty)
    other = _arrays(seed + 100)[0]
    p3 = np.stack([prob, prob if flipped_equal else 0.5 * (prob + other)])
    p2 = np.stack([prob ** 2, prob ** 2])
    return T.CaseData.from_arrays(f"c{seed}", fold, {"unet3d@a": p3, "unetpp2d@a": p2}, truth, brain, SPACING,
                                  float(truth.mean()))


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_dice_matches_postprocess_everywhere(seed):
    prob, truth, brain = _arrays(seed, empty=seed % 3 == 0)
    vox = float(np.prod(SPACING))
    for thr in ((0.3, 0.45, 0.6)[seed % 3],):
        table = T.component_table(prob, truth, brain, thr)
        fast = T.post_dice(*table, int(truth.sum()), vox)
        for (a, mc), (b, ep), (c, ev) in itertools.product(enumerate(T.MIN_COMPONENT_MM3),
                                                           enumerate(T.EMPTY_MAX_PROB), enumerate(T.EMPTY_MIN_MM3)):
            mask = postprocess(prob, brain, SPACING, MaskRule(thr, mc, ep, ev))
            assert fast[a, b, c] == pytest.approx(dice(truth, mask), abs=1e-9)


def test_select_is_the_brute_force_argmax(monkeypatch):
    # a grid small enough to enumerate by hand: every point scored through postprocess + case_metrics
    monkeypatch.setattr(T, "WEIGHT_STEPS", (0.25, 0.75))
    monkeypatch.setattr(T, "THRESHOLDS", (0.3, 0.5))
    monkeypatch.setattr(T, "MIN_COMPONENT_MM3", (0.0, 40.0))
    monkeypatch.setattr(T, "EMPTY_MAX_PROB", (0.0, 0.9))
    monkeypatch.setattr(T, "EMPTY_MIN_MM3", (0.0, 50.0))
    monkeypatch.setattr(T, "DICE_TIE", 0.0)  # no NSD tie-break: the plain argmax
    cases = [_case(s, s % 2, empty=s == 0) for s in range(5)]
    grid = T.score_grid(cases, [[], [2]], log=lambda *_: None)
    got = T.select(grid, range(5), rule="argmax")["choice"]
    got_se = T.select(grid, range(5), rule="one_se")["choice"]
    best, best_key, table = -1.0, None, []
    for flips3, flips2 in itertools.product([(0,), (0, 1)], [(0,), (0, 1)]):
        for w, thr, mc, ep, ev in itertools.product((0.25, 0.75), (0.3, 0.5), (0.0, 40.0), (0.0, 0.9), (0.0, 50.0)):
            if ep and ep <= thr:
                continue
            ch = T.Choice(("unet3d@a", "unetpp2d@a"), (flips3, flips2), (w, round(1 - w, 6)), thr, mc, ep, ev)
            per_case = [dice(c.truth, T.mask_of(c, ch)) for c in cases]
            d = np.mean(per_case) - T.TTA_MIN_GAIN * ch.extra_passes
            table.append((d, ch, per_case))
            if d > best + 1e-12:
                best, best_key, best_cases = d, ch, per_case
    assert got == best_key
    # one-standard-error rule, from its definition: within one SE of the best, the fewest case-level empty rules,
    # then the smallest component filter, then the fewest passes; then the best score
    se = np.std(best_cases, ddof=1) / np.sqrt(len(cases))
    near = [(d, ch) for d, ch, _ in table if d >= best - se - 1e-12]
    least = min((ch.empty_max_probability_below, ch.empty_min_lesion_mm3, ch.min_component_mm3, ch.extra_passes)
                for _, ch in near)
    near = [(d, ch) for d, ch in near if (ch.empty_max_probability_below, ch.empty_min_lesion_mm3,
                                          ch.min_component_mm3, ch.extra_passes) == least]
    top = max(d for d, _ in near)
    assert got_se in [ch for d, ch in near if d >= top - 1e-12]


def test_a_flip_that_adds_nothing_is_not_chosen():
    cases = [_case(s, s % 2, empty=s == 0) for s in range(4)]  # flipped maps equal the plain ones
    got = T.select(T.score_grid(cases, [[], [2]], log=lambda *_: None), range(4))["choice"]
    assert got.flips == ((0,), (0,))


def test_nested_chooses_without_the_scored_fold(monkeypatch):
    cases = [_case(s, s % 3, empty=s == 0) for s in range(6)]
    grid = T.score_grid(cases, [[], [2]], log=lambda *_: None)
    seen = []
    real = T.select

    def spy(g, on, *a, **k):
        seen.append(sorted(on))
        return real(g, on, *a, **k)

    monkeypatch.setattr(T, "select", spy)
    out = T.nested(grid, log=lambda *_: None)
    assert seen == [[1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 3, 4]]  # fold k = cases with index % 3 == k
    assert [r["case_id"] for r in out["rows"]] == [c.case_id for c in cases]


def test_tta_choices_always_keep_the_identity_cheapest_first():
    assert T.tta_choices(1) == [(0,)]
    assert T.tta_choices(2) == [(0,), (0, 1)]
    assert T.tta_choices(3) == [(0,), (0, 1), (0, 2), (0, 1, 2)]


def test_member_sets_take_one_source_per_member_and_weights_are_vectors():
    assert T.candidates(["unet3d@cv", "unet3d@gpu", "unetpp2d@gpu"]) == [
        ("unet3d@cv", "unetpp2d@gpu"), ("unet3d@gpu", "unetpp2d@gpu")]
    assert T.weight_grid(1) == [(1.0,)]
    assert all(abs(sum(w) - 1) < 1e-9 for n in (2, 3) for w in T.weight_grid(n))
    assert len(T.weight_grid(3)) == 36


def test_error_anatomy_counts_from_their_definitions():
    """probes.errors.anatomy on a hand-built case: two lesions, a prediction that finds one with a one-voxel rim
    of over-segmentation and adds a component far from both (and a diagonal neighbour: 26-connected, one component)."""
    from training.probes.errors import anatomy

    truth = np.zeros((6, 12, 12), bool)
    truth[1:3, 2:4, 2:4] = True  # lesion A: 8 voxels
    truth[4, 9, 9] = True  # lesion B: 1 voxel, missed
    pred = np.zeros_like(truth)
    pred[1:3, 2:5, 2:4] = True  # A found: 8 true + 4 rim voxels (row y = 4)
    pred[4, 2, 8] = pred[5, 3, 9] = True  # far component: 2 voxels touching diagonally
    counts = anatomy(truth, pred)
    assert counts == {"tp": 8, "fp": 6, "fn": 1, "fp_far": 2, "fp_rim": 4, "pred_components": 2,
                      "pred_components_far": 1, "lesions": 2, "lesions_found": 1, "empty_cases_with_prediction": 0}
    assert anatomy(np.zeros_like(truth), pred)["empty_cases_with_prediction"] == 1
    assert anatomy(np.zeros_like(truth), np.zeros_like(pred))["empty_cases_with_prediction"] == 0


def test_the_oracle_drops_only_components_touching_no_lesion():
    from training.probes.errors import without_far

    truth = np.zeros((4, 8, 8), bool)
    truth[1, 1:3, 1:3] = True
    pred = np.zeros_like(truth)
    pred[1, 2:4, 2:4] = True  # touches the lesion, with a rim: kept whole
    pred[3, 6, 6] = True  # far: dropped
    expected = pred.copy()
    expected[3, 6, 6] = False
    assert np.array_equal(without_far(truth, pred), expected)


def test_shared_errors_count_what_the_other_mask_makes_alike():
    from training.probes.errors import shared

    truth = np.zeros((4, 8, 8), bool)
    truth[1, 1:3, 1:3] = True  # 4 lesion voxels
    pred = np.zeros_like(truth)
    pred[1, 2:4, 2:4] = True  # 1 true positive, 3 rim false positives
    pred[3, 5:7, 6] = True  # 2 far false positives
    other = np.zeros_like(truth)
    other[1, 1, 1] = other[1, 2, 2] = True  # the true positive, and the false negative (1, 1, 1) found
    other[1, 3, 3] = True  # one rim voxel
    other[3, 5, 6] = True  # one far voxel
    got = shared(truth, pred, other)
    # false negatives of pred: (1,1,1), (1,1,2), (1,2,1); other misses two of them
    assert got == {"tp": (1, 1), "fp_rim": (3, 1), "fp_far": (2, 1), "fn": (3, 2)}


def test_seed_summary_groups_replicates_and_pairs_cases():
    """Replicates `xs1`, `xs2` of variant `x` group with `x`; the paired difference is each case's seed-mean Dice
    minus the reference variant's, over the same cases."""
    from training.probes.render import seed_summary, variant_of

    assert [variant_of(s) for s in ("tvp3d", "tvp3ds1", "hn3ds12", "cv")] == ["tvp3d", "tvp3d", "hn3d", "cv"]

    def run(dices, masd, nsd):
        rows = [{"case_id": f"c{i}", "dice": d} for i, d in enumerate(dices)]
        return {"mean": {"nested": {"dice": float(np.mean(dices)), "masd": masd, "nsd": nsd}, "nested_rows": rows}}

    sets = {"ref+cv": run([0.5, 0.6, 0.7], 4.0, 0.70), "refs1+cv": run([0.3, 0.6, 0.9], 5.0, 0.60),
            "new+cv": run([0.6, 0.6, 0.8], 3.0, 0.75), "news1+cv": run([0.6, 0.8, 0.8], 3.0, 0.65),
            "ref,refs1+cv": run([0.9, 0.9, 0.9], 1.0, 0.9)}  # an averaged set: not a replicate
    ref, new = seed_summary(sets)
    assert (ref["variant"], ref["seeds"], new["variant"], new["seeds"]) == ("ref", 2, "new", 2)
    assert ref["dice"][0] == pytest.approx(0.6) and ref["masd"] == pytest.approx((4.5, np.sqrt(0.5)))
    # seed means per case: ref 0.4, 0.6, 0.8; new 0.6, 0.7, 0.8 -> differences 0.2, 0.1, 0.0
    d = np.array([0.2, 0.1, 0.0])
    assert new["vs"]["mean"] == pytest.approx(0.1)
    assert new["vs"]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert (new["vs"]["better"], new["vs"]["worse"]) == (2, 0)
    assert "vs" not in ref
