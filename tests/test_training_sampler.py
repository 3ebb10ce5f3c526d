"""Training patch sampling on real cases: lesion-centred, hard-negative-centred (where Z-ADC < -2 fires outside the
lesions) and random patches in the asked shares. Needs the training environment (torch + MONAI)."""

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from realdata import skip_unless_ci

pytest.importorskip("torch", reason="training environment (torch) not installed: see training/setup.sh")
pytest.importorskip("monai", reason="training environment (MONAI) not installed: see training/setup.sh")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
TARBALL = REPO.parent / "shared" / "data" / "bonbid2023-train-40cases.tar.gz"
CASES = ["MGHNICU_438", "MGHNICU_447", "MGHNICU_231"]  # MGHNICU_231: lesion-free


@pytest.fixture(scope="module")
def samples():
    if not TARBALL.is_file() and not (REPO / ".cache" / "data" / "BONBID2023_Train").is_dir():
        skip_unless_ci("real cases not available (../shared/data)")
    from training import config
    from training.data import ensure_data, load_cases
    from training.train import prepare_case

    cases = load_cases(ensure_data(), CASES)
    spec = config.MEMBERS["unetpp2d"]
    channels = config.channel_specs(spec["sources"], "stats", config.brain_stats(list(cases.values())))
    return {c: (cases[c], prepare_case(cases[c], channels, spec["target_spacing_zyx"], config.CROP_MARGIN_MM))
            for c in cases}


def test_confounders_are_the_rule_outside_the_lesions(samples):
    for cid, (case, s) in samples.items():
        # on the native grid of a 2D member: Z-ADC < -2 inside the brain (ADC > 0), minus the label
        expected = ((case.zadc < -2) & (case.adc > 0) & ~case.label)[s.prepared.crop]
        assert np.array_equal(s.confounders, expected), cid
        assert not (s.confounders & s.label).any()
        assert s.confounders.any(), f"{cid}: the rule fires outside the lesions on every real case"


def test_patch_centres_follow_the_asked_shares(samples):
    from training.train import Sampler

    assert [bool(samples[c][0].label.any()) for c in CASES] == [True, True, False]
    items = [s for _, s in samples.values()]
    sampler = Sampler(items, "2d", [80, 80], np.random.default_rng(0), hard_negative_fraction=0.3)
    n = 3000
    counts = Counter()
    for i in range(n):
        img, lab, fg, neg, _ = sampler.items[i % len(items)]
        pool = sampler._centre_pool(fg, neg)
        counts["random" if pool is None else "lesion" if pool is fg else "negative"] += 1
    # two of three cases have lesions: lesion share (2/3) x (1/3); the lesion-free case draws hard negatives
    # in [1/3, 1/3 + 0.3) of its draws too, as the lesion cases do
    expected = {"lesion": 2 / 3 * 1 / 3, "negative": 0.3, "random": 1 - 2 / 9 - 0.3}
    for k, p in expected.items():
        sd = np.sqrt(p * (1 - p) / n)
        assert abs(counts[k] / n - p) < 4 * sd, (k, counts[k] / n, p)


def test_plain_sampler_never_centres_on_negatives(samples):
    from training.train import Sampler

    items = [s for _, s in samples.values()]
    sampler = Sampler(items, "2d", [80, 80], np.random.default_rng(0))
    assert all(len(neg) == 0 for _, _, _, neg, _ in sampler.items)
    x, y = sampler.batch(8)
    assert x.shape == (8, 3, 80, 80) and y.shape == (8, 1, 80, 80)


def test_carvemix_pastes_another_cases_lesion_with_its_values(samples):
    """Lesion copy-paste: the pasted voxels are another case's lesion voxels with their own channel values, the
    label is 1 exactly there, the pasted lesion lies on the recipient's brain, and the stored cases are untouched."""
    from training import carvemix

    items = [samples[c][1] for c in CASES]  # the last one lesion-free
    bank = carvemix.lesion_bank([s.image for s in items], [s.label for s in items], [64, 40, 40])
    assert bank and {les.donor for les in bank} == {0, 1}  # the lesion-free case donates nothing
    for les in bank:
        assert les.mask.sum() >= carvemix.MIN_VOXELS and (les.region >= les.mask).all()
        assert np.abs(les.values[:, les.region]).max(axis=0).min() > 0  # carved from the donor's brain
    rng = np.random.default_rng(1)
    recipient = items[2]  # lesion-free: every label voxel after the paste is a pasted one
    z = recipient.image.shape[1] // 2
    before = recipient.image.copy()
    pasted = 0
    for les in bank:
        sec = carvemix.section(les, rng)
        x = recipient.image[:, z].copy()
        y = np.zeros(x.shape[1:], bool)
        brain = np.abs(x).max(axis=0) > 0
        if not carvemix.paste(x, y, sec, rng):
            continue
        pasted += 1
        assert y.sum() == sec.mask.sum()
        # find where it landed: the label's bounding box holds the lesion's mask exactly
        (y0, x0) = np.argwhere(y).min(axis=0) - np.argwhere(sec.mask).min(axis=0)
        box = (slice(y0, y0 + sec.mask.shape[0]), slice(x0, x0 + sec.mask.shape[1]))
        assert np.array_equal(y[box], sec.mask)
        assert np.array_equal(x[:, box[0], box[1]][:, sec.region], sec.values[:, sec.region])
        outside = np.ones_like(y)
        outside[box] = ~sec.region
        assert np.array_equal(x[:, outside], recipient.image[:, z][:, outside])
        assert (brain[box] & sec.region).sum() >= carvemix.MIN_BRAIN_FRACTION * sec.region.sum()
    assert pasted >= len(bank) // 2
    assert np.array_equal(recipient.image, before)


def test_carvemix_share_and_untouched_cases(samples):
    from training.train import Sampler

    items = [samples[c][1] for c in CASES]  # the last one lesion-free
    labels = [s.label.copy() for s in items]
    plain = Sampler(items, "2d", [80, 80], np.random.default_rng(0))
    mixed = Sampler(items, "2d", [80, 80], np.random.default_rng(0), carvemix_fraction=0.5)
    assert plain.bank == [] and mixed.bank
    n = 400
    _, y_plain = plain.batch(n)
    _, y_mixed = mixed.batch(n)
    assert all(np.array_equal(s.label, lab) for s, lab in zip(items, labels))  # pasting works on copies
    # more patches carry lesion voxels with pasting on (half of the patches get one, most placements succeed)
    frac_plain = (y_plain.reshape(n, -1).max(axis=1) > 0).mean()
    frac_mixed = (y_mixed.reshape(n, -1).max(axis=1) > 0).mean()
    assert frac_mixed > frac_plain + 0.2, (frac_plain, frac_mixed)
