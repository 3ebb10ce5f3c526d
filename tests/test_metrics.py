"""Challenge metrics: empty-case rules, the spacing-order switch, a geometry worked out on paper, and agreement with
an independent implementation of the published definition on the real cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree

from hieseg.metrics import (binarize, burden_stratum, case_metrics, lesion_counts, nanmean, scorer_spacing)

pytest.importorskip("surface_distance")

# Surfel areas of a 2x2x2-voxel cube at 1 mm (DeepMind's marching-cubes surfels sit on voxel corners):
#   a corner point touching 1 voxel of the cube has area C = sqrt(3)/8 (one triangle cutting the corner),
#   an edge point touching 2 voxels has E = sqrt(2)/2 (two triangles), a face point touching 4 voxels has F = 1.
# The cube's 3x3x3 corner points minus the interior one are its 26 surface points: 8 C, 12 E, 6 F.
C, E, F = math.sqrt(3) / 8, math.sqrt(2) / 2, 1.0
CUBE_AREA = 8 * C + 12 * E + 6 * F  # = 16.21733 mm²


def _cube(shape=(12, 12, 16), corner=(4, 4, 3), side=2) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    z, y, x = corner
    mask[z:z + side, y:y + side, x:x + side] = True
    return mask


# ---------------------------------------------------------------------------------------------- empty-case rules

def test_both_empty_scores_perfect():
    empty = np.zeros((5, 6, 7), dtype=np.uint8)
    assert case_metrics(empty, empty, (2.0, 1.0, 1.0)) == {"dice": 1.0, "masd": 0.0, "nsd": 1.0}


def test_empty_truth_with_any_prediction():
    truth = np.zeros((5, 6, 7), dtype=np.uint8)
    pred = truth.copy()
    pred[2, 3, 3] = 1
    m = case_metrics(truth, pred, (2.0, 1.0, 1.0))
    assert m["dice"] == 0.0 and m["nsd"] == 0.0 and math.isnan(m["masd"])


def test_empty_prediction_on_lesion_case():
    truth = np.zeros((5, 6, 7), dtype=np.float32)
    truth[1:3, 2:4, 2:4] = 1
    m = case_metrics(truth, np.zeros_like(truth), (2.0, 1.0, 1.0))
    assert m["dice"] == 0.0 and m["nsd"] == 0.0 and math.isnan(m["masd"])


def test_identical_masks():
    truth = _cube()
    assert case_metrics(truth, truth.copy(), (3.0, 1.2, 1.4)) == {"dice": 1.0, "masd": 0.0, "nsd": 1.0}


def test_means_skip_nan():
    assert nanmean([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(nanmean([math.nan]))
    assert math.isnan(nanmean([]))


# ------------------------------------------------------------------------------------- geometry worked on paper

def test_two_cubes_apart_by_hand():
    """Two 2x2x2 cubes at 1 mm, the second shifted by D = 3 voxels along x: a gap of one empty voxel.

    Every surface point of A at x-layer 0, 1, 2 has its nearest point of B straight across in B's first layer
    (x = 3, a complete 3x3 layer), at distance 3, 2, 1 mm. Layers 0 and 2 hold 4C + 4E + F each, layer 1 holds
    4E + 4F (its centre point is inside the cube). So, per direction and by symmetry for both:
      Dice = 0 (no common voxel);
      mean distance = (3 (4C+4E+F) + 2 (4E+4F) + 1 (4C+4E+F)) / (8C+12E+6F) = 2 (8C+12E+6F) / (8C+12E+6F) = 2 mm,
      so MASD = 2 mm;
      within 2 mm: layers 2 and 1, area (4C+4E+F) + (4E+4F) = 4C + 8E + 5F, so
      NSD = (4C + 8E + 5F) / (8C + 12E + 6F) = 11.52288 / 16.21733 = 0.7105287.
    """
    a = _cube(corner=(4, 4, 3))
    b = _cube(corner=(4, 4, 6))
    m = case_metrics(a, b, (1.0, 1.0, 1.0))
    assert m["dice"] == 0.0
    assert m["masd"] == pytest.approx(2.0, abs=1e-12)
    assert m["nsd"] == pytest.approx((4 * C + 8 * E + 5 * F) / CUBE_AREA, abs=1e-12)
    assert m["nsd"] == pytest.approx(0.7105287, abs=1e-7)


def test_two_cubes_overlapping_by_hand():
    """The same cubes shifted by one voxel along x: they share a 1x2x2 slab.

      Dice = 2 * 4 / (8 + 8) = 0.5.
      A's layer x=1 is B's face layer (all 9 points of B): distance 0. A's layer x=2 is B's middle layer, which has
      every point except its centre, so A's face centre at x=2 is 1 mm from B and the other 8 are at 0. A's layer x=0
      is 1 mm from B's face layer. Mean distance (both directions by symmetry):
      (1 (4C+4E+F) + 1 F) / (8C+12E+6F) = (4C + 4E + 2F) / (8C+12E+6F) = 5.69445 / 16.21733 = 0.3511338 mm = MASD;
      every distance is <= 1 mm, so NSD = 1.
    """
    a = _cube(corner=(4, 4, 3))
    b = _cube(corner=(4, 4, 4))
    m = case_metrics(a, b, (1.0, 1.0, 1.0))
    assert m["dice"] == 0.5
    assert m["masd"] == pytest.approx((4 * C + 4 * E + 2 * F) / CUBE_AREA, abs=1e-12)
    assert m["masd"] == pytest.approx(0.3511338, abs=1e-7)
    assert m["nsd"] == 1.0


# --------------------------------------------------------------------------------------------- spacing order

def test_scorer_spacing_is_sitk_order_for_zyx_arrays():
    # (z, y, x) spacing of a case like MGHNICU_028 with 4 mm slices: the scorer passes SimpleITK's (x, y, z).
    assert scorer_spacing((4.0, 1.5625, 1.4733), "scorer") == (1.4733, 1.5625, 4.0)
    assert scorer_spacing((4.0, 1.5625, 1.4733), "physical") == (4.0, 1.5625, 1.4733)
    with pytest.raises(ValueError):
        scorer_spacing((4.0, 1.5625, 1.4733), "xyz")
    with pytest.raises(ValueError):
        scorer_spacing((4.0, 0.0, 1.0))


def test_spacing_order_switch_on_shifted_cubes():
    """The cube pair of the first hand test, shifted along the array's x axis, on a 4 x 1.5625 x 1.4733 mm grid.

    All distances run along x, so MASD = 2 voxels times the spacing the x axis is measured with: the physical
    1.4733 mm gives 2.9466 mm; the scorer measures the x axis with the slice thickness (the (x, y, z) spacing put on
    a (z, y, x) array), 4 mm, and gives 8 mm. NSD differs too (tolerance 2 mm against steps of 1.47 vs 4 mm).
    """
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 4, 6))
    spacing_zyx = (4.0, 1.5625, 1.4733)
    scorer = case_metrics(a, b, spacing_zyx)  # default: scorer
    physical = case_metrics(a, b, spacing_zyx, spacing_order="physical")
    assert physical["masd"] == pytest.approx(2 * 1.4733, abs=1e-9)
    assert scorer["masd"] == pytest.approx(2 * 4.0, abs=1e-9)
    assert scorer["dice"] == physical["dice"] == 0.0
    assert physical["nsd"] > 0 and scorer["nsd"] == 0.0  # the nearest layer is 4 mm away for the scorer
    # On an isotropic grid the two orders agree.
    iso = case_metrics(a, b, (2.0, 2.0, 2.0)), case_metrics(a, b, (2.0, 2.0, 2.0), spacing_order="physical")
    assert iso[0] == iso[1]


def test_spacing_orders_differ_only_through_the_z_x_swap():
    """Only in-plane anisotropy (z spacing equal to x spacing, as no real case has): the orders still differ, because
    the scorer swaps the z and x spacings, and the y axis keeps its spacing in both."""
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 6, 3))  # shift along y
    spacing_zyx = (1.4733, 1.5625, 1.4733)
    scorer = case_metrics(a, b, spacing_zyx)
    physical = case_metrics(a, b, spacing_zyx, spacing_order="physical")
    assert scorer == pytest.approx(physical)  # z and x spacings equal: swapping them changes nothing
    spacing_zyx = (1.4733, 1.5625, 1.25)
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 4, 6))  # shift along x: 1.25 mm physical, 1.4733 mm scorer
    assert case_metrics(a, b, spacing_zyx, spacing_order="physical")["masd"] == pytest.approx(2 * 1.25)
    assert case_metrics(a, b, spacing_zyx)["masd"] == pytest.approx(2 * 1.4733)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(np.zeros((3, 4, 5)), np.zeros((3, 4, 6)), (1, 1, 1))


# ---------------------------------------------------------------------------------------- binarize and lesions

def test_binarize_truncates_like_the_scorers_uint8_cast():
    values = np.array([0.0, 0.4, 0.99, 1.0, 2.0, -0.5], dtype=np.float32)
    assert binarize(values).tolist() == [False, False, False, True, True, False]
    assert binarize(np.array([0, 1, 2], dtype=np.uint8)).tolist() == [False, True, True]


def test_lesion_counts():
    truth = np.zeros((6, 10, 10), dtype=bool)
    truth[1, 1, 1] = truth[4, 7, 7] = True  # two lesions
    truth[2, 2, 2] = True  # corner-touching the first: same lesion with 26-connectivity
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 1:3] = True  # touches lesion 1
    pred[5, 0, 9] = True  # false positive
    counts = lesion_counts(truth, pred)
    assert counts == {"lesions": 2, "lesions_detected": 1, "pred_components": 2, "fp_components": 1}


@pytest.mark.parametrize("fraction,stratum", [(0.0, "none"), (0.0001, "<1%"), (0.0099, "<1%"), (0.01, "1-5%"),
                                              (0.05, "1-5%"), (0.0501, ">5%"), (0.74, ">5%")])
def test_burden_strata(fraction, stratum):
    assert burden_stratum(fraction) == stratum


# -------------------------------------------------------------- independent implementation of the definition

# DeepMind's 2x2x2 neighbourhood code: the voxel at offset (i, j, k) of the cell below-left of a corner point has
# weight KERNEL[i, j, k] (scipy's correlate centres a size-2 kernel on its second element).
KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


def _surfels(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Surface points (mm) and their areas (mm²), written from the definition of Nikolov et al. 2018: a surfel sits
    on every voxel corner whose eight surrounding voxels are neither all inside nor all outside; its area is that of
    the marching-cubes triangles of that 2x2x2 cell, each triangle's area vector scaled by the cofactors of the
    spacing. Only the triangles' unit-grid area vectors (a data table) are taken from the package."""
    from surface_distance.lookup_tables import _NEIGHBOUR_CODE_TO_NORMALS

    padded = np.pad(mask.astype(np.int64), 1)
    n = padded.shape
    code = np.zeros((n[0] - 1, n[1] - 1, n[2] - 1), dtype=np.int64)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                code += KERNEL[i, j, k] * padded[i:i + n[0] - 1, j:j + n[1] - 1, k:k + n[2] - 1]
    s = np.asarray(spacing, dtype=np.float64)
    cofactor = np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]])
    area_of_code = np.array([sum(np.linalg.norm(np.asarray(t, dtype=np.float64) * cofactor) for t in triangles)
                             for triangles in _NEIGHBOUR_CODE_TO_NORMALS])
    border = (code != 0) & (code != 255)
    points = np.argwhere(border) * s
    return points, area_of_code[code[border]]


def reference_metrics(truth: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Dice, MASD and NSD (2 mm) from the challenge's definition, with ``spacing`` per array axis as given."""
    if not truth.any():
        return {"dice": 1.0, "masd": 0.0, "nsd": 1.0} if not pred.any() else {"dice": 0.0, "masd": math.nan,
                                                                               "nsd": 0.0}
    if not pred.any():
        return {"dice": 0.0, "masd": math.nan, "nsd": 0.0}
    pa, aa = _surfels(truth, spacing)
    pb, ab = _surfels(pred, spacing)
    d_ab = cKDTree(pb).query(pa)[0]  # exact nearest surface point of the other mask, brute force by tree
    d_ba = cKDTree(pa).query(pb)[0]
    masd = 0.5 * (np.sum(aa * d_ab) / np.sum(aa) + np.sum(ab * d_ba) / np.sum(ab))
    nsd = (np.sum(aa[d_ab <= 2.0]) + np.sum(ab[d_ba <= 2.0])) / (np.sum(aa) + np.sum(ab))
    dice = 2.0 * np.logical_and(truth, pred).sum() / (truth.sum() + pred.sum())
    return {"dice": float(dice), "masd": float(masd), "nsd": float(nsd)}


def test_reference_reproduces_the_hand_computed_cubes():
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 4, 6))
    ref = reference_metrics(a, b, (1.0, 1.0, 1.0))
    assert ref["masd"] == pytest.approx(2.0) and ref["nsd"] == pytest.approx((4 * C + 8 * E + 5 * F) / CUBE_AREA)


def test_random_masks_agree_with_reference():
    rng = np.random.default_rng(0)
    for spacing_zyx in [(4.0, 1.5625, 1.4733), (2.0, 2.0, 2.0), (6.0, 1.375, 1.375)]:
        truth = rng.random((9, 14, 15)) < 0.15
        pred = rng.random((9, 14, 15)) < 0.15
        for order, axes in (("scorer", spacing_zyx[::-1]), ("physical", spacing_zyx)):
            ours = case_metrics(truth, pred, spacing_zyx, spacing_order=order)
            ref = reference_metrics(truth, pred, axes)
            for key in ("dice", "masd", "nsd"):
                assert ours[key] == pytest.approx(ref[key], abs=1e-9), (spacing_zyx, order, key)


def test_real_cases_agree_with_independent_computation(tmp_path):
    """All 40 real cases against their Z-ADC < -2 baseline masks, read the way the scorer reads them (SimpleITK, cast
    to uint8, Dice from LabelOverlapMeasuresImageFilter, spacing = image.GetSpacing() on the (z, y, x) array), agree
    with ``hieseg evaluate``'s rows to 1e-6, in both spacing orders."""
    from realdata import real_cases_dir

    from hieseg.baseline import run_baseline
    from hieseg.evaluate import evaluate_dirs

    root = real_cases_dir()
    written, failed = run_baseline(root, tmp_path)
    assert not failed and len(written) == 40
    for order in ("scorer", "physical"):
        report = evaluate_dirs(root / "3LABEL", tmp_path, spacing_order=order, show_progress=False)
        assert len(report["cases"]) == 40 and not report["failed"]
        for row in report["cases"]:
            cast = sitk.CastImageFilter()
            cast.SetOutputPixelType(sitk.sitkUInt8)
            gt = cast.Execute(sitk.ReadImage(row["truth_file"]))
            pr = cast.Execute(sitk.ReadImage(row["pred_file"]))
            pr.CopyInformation(gt)  # the scorer puts the truth's origin, spacing and direction on the prediction
            truth, pred = sitk.GetArrayFromImage(gt).astype(bool), sitk.GetArrayFromImage(pr).astype(bool)
            spacing = gt.GetSpacing() if order == "scorer" else gt.GetSpacing()[::-1]
            ref = reference_metrics(truth, pred, spacing)
            if truth.any() and pred.any():
                overlap = sitk.LabelOverlapMeasuresImageFilter()
                overlap.Execute(gt, pr)
                assert overlap.GetDiceCoefficient() == pytest.approx(ref["dice"], abs=1e-12)
            for key in ("dice", "masd", "nsd"):
                if math.isnan(ref[key]):
                    assert math.isnan(row[key]), (row["case"], key)
                else:
                    assert row[key] == pytest.approx(ref[key], abs=1e-6), (row["case"], order, key)


def test_missing_surface_distance_is_one_clear_error(monkeypatch):
    import sys

    from hieseg.errors import HiesegError

    monkeypatch.setitem(sys.modules, "surface_distance", None)
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 4, 4))
    with pytest.raises(HiesegError, match=r"hieseg\[eval\]"):
        case_metrics(a, b, (1.0, 1.0, 1.0))
    # The empty-case rules need no surface distances.
    assert case_metrics(a, np.zeros_like(a), (1.0, 1.0, 1.0))["dice"] == 0.0
