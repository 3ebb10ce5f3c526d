"""Golden end-to-end check of the shipped ensemble on the bundled synthetic sample (nnU-Net-style smoke test)."""

import pytest

from hieseg.cli import grand_challenge_main
from hieseg.io import read_image
from hieseg.manifest import BUNDLED_MODEL_DIR, load_manifest
from hieseg.metrics import case_metrics
from hieseg.phantom import make_phantom


@pytest.fixture(scope="module")
def bundled():
    if not (BUNDLED_MODEL_DIR / "manifest.json").is_file():
        pytest.skip("no trained model in model/ yet")
    return load_manifest(BUNDLED_MODEL_DIR)


def test_bundled_ensemble_has_3d_and_2d_members_within_budget(bundled):
    assert {m.kind for m in bundled.members} == {"2d", "3d"}
    assert sum(p.stat().st_size for p in BUNDLED_MODEL_DIR.iterdir()) < 40 * 2**20
    assert "cv_scores" in bundled.provenance and "training" in bundled.provenance


def test_bundled_ensemble_finds_the_sample_lesions(bundled, sample_input, tmp_path):
    assert grand_challenge_main(["--input", str(sample_input), "--output", str(tmp_path), "-q"]) == 0
    mask, geometry = read_image(tmp_path / "images/hie-lesion-segmentation/overlay.mha")
    phantom = make_phantom()  # the generator of test/input: same seed, same case
    assert geometry == phantom.geometry
    scores = case_metrics(phantom.label, mask, geometry.spacing_zyx, "physical")
    assert scores["dice"] > 0.75 and scores["nsd"] > 0.85, scores
