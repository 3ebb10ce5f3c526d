"""``hieseg baseline``: Z-ADC < -2 inside the brain, for every supported layout, one failing case not stopping
others."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from hieseg.app.cli import main
from hieseg.evaluation.baseline import baseline_mask, run_baseline
from hieseg.inputs.io import Geometry, read_image, write_image

SHAPE = (6, 16, 18)
GEOMETRY = Geometry((18, 16, 6), (1.375, 1.375, 6.0), (-100.0, -90.0, -20.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    adc = np.zeros(SHAPE, dtype=np.float32)
    adc[1:5, 3:13, 3:15] = rng.uniform(200, 2000, size=(4, 10, 12))
    zadc = rng.normal(0, 2, size=SHAPE).astype(np.float32)
    zadc[0] = -5.0  # outside the brain: never lesion
    return adc, zadc


def test_baseline_mask_is_zadc_below_minus_two_inside_brain():
    adc = np.array([[[0.0, 100.0, 100.0, 100.0, -3.0]]], dtype=np.float32)
    zadc = np.array([[[-9.0, -2.5, -2.0, 0.0, -9.0]]], dtype=np.float32)
    assert baseline_mask(adc, zadc).tolist() == [[[False, True, False, False, False]]]
    assert baseline_mask(adc, zadc).dtype == bool
    with pytest.raises(ValueError, match="shapes differ"):
        baseline_mask(adc, zadc[..., :4])


def _bonbid(root, case_ids, bad=()):
    for i, case_id in enumerate(case_ids):
        adc, zadc = _pair(i)
        if case_id in bad:
            zadc = zadc[:-1]
        write_image(adc, GEOMETRY, root / "1ADC_ss" / f"{case_id}-VISIT_01-ADC_ss.mha")
        geometry = GEOMETRY if zadc.shape == SHAPE else Geometry((18, 16, 5), GEOMETRY.spacing, GEOMETRY.origin,
                                                                 GEOMETRY.direction)
        write_image(zadc, geometry, root / "2Z_ADC" / f"Zmap_{case_id}-VISIT_01-ADC_smooth2mm_clipped10.mha")


def test_bonbid_layout_named_like_predictions(tmp_path):
    _bonbid(tmp_path / "in", ["MGHNICU_001", "MGHNICU_002"])
    written, failed = run_baseline(tmp_path / "in", tmp_path / "out")
    assert not failed
    assert [p.name for p in written] == ["MGHNICU_001-VISIT_01_lesion.mha", "MGHNICU_002-VISIT_01_lesion.mha"]
    mask, geometry = read_image(written[0])
    adc, zadc = _pair(0)
    assert np.array_equal(mask.astype(bool), (zadc < -2) & (adc > 0))
    assert not geometry.differences(GEOMETRY)
    assert sitk.ReadImage(str(written[0])).GetPixelID() == sitk.sitkUInt8


def test_grand_challenge_layout(tmp_path):
    adc, zadc = _pair(3)
    write_image(adc, GEOMETRY, tmp_path / "in" / "images" / "skull-stripped-adc-brain-mri" / "case.mha")
    write_image(zadc, GEOMETRY, tmp_path / "in" / "images" / "z-score-adc" / "case.mha")
    assert main(["baseline", str(tmp_path / "in"), str(tmp_path / "out"), "-q"]) == 0
    mask, _ = read_image(tmp_path / "out" / "images" / "hie-lesion-segmentation" / "overlay.mha")
    assert np.array_equal(mask.astype(bool), (zadc < -2) & (adc > 0))
    assert mask[0].sum() == 0  # slice 0 has Z-ADC -5 but lies outside the brain (ADC 0)


def test_one_failing_case_does_not_stop_the_others(tmp_path, capsys):
    _bonbid(tmp_path / "in", ["MGHNICU_001", "MGHNICU_002", "MGHNICU_003"], bad={"MGHNICU_002"})
    assert main(["baseline", str(tmp_path / "in"), str(tmp_path / "out"), "-q"]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["MGHNICU_001-VISIT_01_lesion.mha",
                                                                    "MGHNICU_003-VISIT_01_lesion.mha"]
    assert "MGHNICU_003-VISIT_01_lesion.mha" in capsys.readouterr().out


def test_unrecognised_input_is_one_error(tmp_path):
    (tmp_path / "in").mkdir()
    assert main(["baseline", str(tmp_path / "in"), str(tmp_path / "out"), "-q"]) == 1
