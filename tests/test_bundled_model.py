"""Golden checks of the shipped ensemble (model/): its own score on the bundled phantom, pinned, and out-of-fold on
the 40 real cases, fold by fold, against the plain Z-ADC < -2 rule."""

import json
import math

import pytest

from hieseg.app.cli import grand_challenge_main
from hieseg.engine.manifest import BUNDLED_MODEL_DIR, load_manifest
from hieseg.evaluation.metrics import case_metrics, nanmean
from hieseg.inputs.io import read_image
from hieseg.inputs.phantom import make_phantom

# ---------------------------------------------------------------------------------------------------------------
# PINNED: the shipped model's scores on the bundled phantom (test/input), challenge metrics with the scorer's
# spacing. Written from this test's own output for the model re-tuned by nested CV (issue 11, model/manifest.json). After
# retraining, run `pytest tests/test_bundled_model.py -k phantom` and copy the scores printed by the failure here.
PHANTOM_MODEL_SCORES = {"dice": 0.9315960912052117, "masd": 0.10471330169201463, "nsd": 1.0}
# A changed mask moves Dice by at least one voxel's worth (~1e-3 here); 1e-6 only absorbs floating-point noise.
PHANTOM_TOLERANCE = 1e-6
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    if not (BUNDLED_MODEL_DIR / "manifest.json").is_file():
        pytest.skip("no trained model in model/ yet")
    return load_manifest(BUNDLED_MODEL_DIR)


def test_bundled_ensemble_has_3d_and_2d_members_within_budget(bundled):
    assert {m.kind for m in bundled.members} == {"2d", "3d"}
    assert sum(p.stat().st_size for p in BUNDLED_MODEL_DIR.iterdir()) < 40 * 2**20
    assert "cv_scores" in bundled.provenance and "training" in bundled.provenance


def _rule(adc, zadc):
    """The classic baseline, written out: Z-ADC < -2 inside the brain (ADC > 0)."""
    return (zadc < -2) & (adc > 0)


def test_bundled_ensemble_phantom_score_is_pinned(bundled, sample_input, tmp_path):
    """The container entry point on test/input gives the pinned scores; a model that ignored its networks, or a
    changed threshold, pre- or post-processing, moves them. Against the Z-ADC < -2 rule on the same phantom the
    model must have the better NSD and MASD. (Not Dice: the phantom's lesions are drawn as Z-ADC dips, so the rule
    scores a higher Dice there than the model; the real-case test below compares Dice out of fold.)"""
    assert grand_challenge_main(["--input", str(sample_input), "--output", str(tmp_path), "-q"]) == 0
    mask, geometry = read_image(tmp_path / "images/hie-lesion-segmentation/overlay.mha")
    phantom = make_phantom()  # the generator of test/input: same seed, same case
    assert geometry == phantom.geometry
    scores = case_metrics(phantom.label, mask, geometry.spacing_zyx)
    for key, pinned in PHANTOM_MODEL_SCORES.items():
        assert scores[key] == pytest.approx(pinned, abs=PHANTOM_TOLERANCE), f"phantom scores now {scores!r}"
    rule = case_metrics(phantom.label, _rule(phantom.adc, phantom.zadc), geometry.spacing_zyx)
    assert scores["nsd"] > rule["nsd"] and scores["masd"] < rule["masd"], (scores, rule)


@pytest.mark.slow
def test_each_fold_beats_the_rule_out_of_fold(bundled):
    """Each case of fold k segmented by fold k's members only (trained without it): per fold, the mean Dice and
    NSD beat the Z-ADC < -2 rule's and the mean MASD is lower; the per-fold Dice equals the out-of-fold Dice the
    manifest records for the shipped choice (cv_scores.in_sample_optimistic, 4 decimals). About 40 x 2 member runs: minutes on a small CPU."""
    from realdata import real_cases_dir

    from hieseg.app.pipeline import Segmenter
    from hieseg.inputs.cases import find_cases

    root = real_cases_dir()
    split = json.loads((BUNDLED_MODEL_DIR.parent / "training" / "splits.json").read_text())
    recorded = bundled.provenance["cv_scores"]["in_sample_optimistic"]["per_fold"]
    cases = {c.case_id: c for c in find_cases(root)}
    segmenter = Segmenter(BUNDLED_MODEL_DIR, device="cpu")
    everyone = segmenter.members
    for k, fold in enumerate(split["folds"]):
        segmenter.members = [m for m in everyone if m.member.name.endswith(f"_f{k}")]
        assert len(segmenter.members) == 2, [m.member.name for m in segmenter.members]
        model, rule = [], []
        for case_id in fold:
            adc, geometry = read_image(cases[case_id].adc)
            zadc, _ = read_image(cases[case_id].zadc)
            label, _ = read_image(root / "3LABEL" / f"{case_id}-VISIT_01_lesion.mha")
            mask, _ = segmenter.segment(adc, zadc, geometry)
            model.append(case_metrics(label, mask, geometry.spacing_zyx))
            rule.append(case_metrics(label, _rule(adc, zadc), geometry.spacing_zyx))
        mean = {key: nanmean(m[key] for m in model) for key in ("dice", "masd", "nsd")}
        base = {key: nanmean(m[key] for m in rule) for key in ("dice", "masd", "nsd")}
        assert mean["dice"] > base["dice"] and mean["nsd"] > base["nsd"], (k, mean, base)
        assert not math.isnan(mean["masd"]) and mean["masd"] < base["masd"], (k, mean, base)
        assert mean["dice"] == pytest.approx(recorded[str(k)]["dice"], abs=5e-5), (k, mean)
