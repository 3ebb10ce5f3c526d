"""Challenge metrics: empty-case rules, the spacing-order switch, a geometry worked out on paper, and agreement with
an independent implementation of the published definition on the real cases."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from hieseg.evaluation.metrics import case_metrics, lesion_counts, nanmean, scorer_spacing
from hieseg.lesions import binarize, burden_stratum, scorer_uint8

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

# The scorer (bonbidhie_eval/evaluation.py, score_case) hands the surface distances of the (z, y, x) array
#     case_spacing = gt.GetSpacing()                                    # SimpleITK order (x, y, z)
#     case_spacing_revert = [case_spacing[-1], case_spacing[0], case_spacing[1]]
# i.e. axis 0 (z) gets the slice thickness, axis 1 (y) gets the x spacing and axis 2 (x) the y spacing.


def _scorer_revert(sitk_spacing_xyz):
    """The scorer's line, verbatim in effect: SimpleITK's (x, y, z) spacing -> the spacing per array axis."""
    return [sitk_spacing_xyz[-1], sitk_spacing_xyz[0], sitk_spacing_xyz[1]]


def test_scorer_spacing_is_the_scorers_revert():
    # MGHNICU_028-like grid: 4 mm slices, anisotropic in-plane pixels.
    # SimpleITK spacing (x, y, z) = (1.4733, 1.5625, 4).
    sitk_xyz = (1.4733, 1.5625, 4.0)
    spacing_zyx = sitk_xyz[::-1]
    assert scorer_spacing(spacing_zyx, "scorer") == (4.0, 1.4733, 1.5625) == tuple(_scorer_revert(sitk_xyz))
    assert scorer_spacing(spacing_zyx, "physical") == (4.0, 1.5625, 1.4733)
    assert scorer_spacing((6.0, 1.25, 1.25)) == scorer_spacing((6.0, 1.25, 1.25), "physical") == (6.0, 1.25, 1.25)
    with pytest.raises(ValueError):
        scorer_spacing(spacing_zyx, "xyz")
    with pytest.raises(ValueError):
        scorer_spacing((4.0, 0.0, 1.0))


def test_thick_slices_are_measured_with_the_slice_thickness():
    """The case the old (x, y, z) order hid: 1 mm pixels, 5 mm slices, the second cube shifted by 3 slices along z.

    All distances run along z. By the hand computation of test_two_cubes_apart_by_hand, measured in units of the
    z spacing, the mean distance is 2 slices = 10 mm in both spacing orders (the scorer keeps the slice thickness on
    z), and no surface point lies within 2 mm of the other surface (the nearest is one slice, 5 mm, away): NSD 0.
    The old (x, y, z) order measured z with the 1 mm pixel and gave MASD 2 mm, NSD 0.71.
    """
    a, b = _cube(corner=(3, 4, 4)), _cube(corner=(6, 4, 4))
    spacing_zyx = (5.0, 1.0, 1.0)
    for order in ("scorer", "physical"):
        m = case_metrics(a, b, spacing_zyx, spacing_order=order)
        assert m["dice"] == 0.0
        assert m["masd"] == pytest.approx(10.0, abs=1e-9), order
        assert m["nsd"] == 0.0, order


def test_scorer_swaps_the_in_plane_spacings():
    """x != y in plane (z spacing 4 mm, y 1.5625 mm, x 1.25 mm), cubes shifted 3 voxels along the array's x axis.

    All distances run along x: physically 2 voxels x 1.25 mm = 2.5 mm; the scorer measures axis 2 with the y
    spacing, 2 x 1.5625 = 3.125 mm. The surfel areas are scaled by the spacings of their planes, so NSD differs too.
    """
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 4, 6))
    spacing_zyx = (4.0, 1.5625, 1.25)
    scorer = case_metrics(a, b, spacing_zyx)  # the default order is the scorer's
    physical = case_metrics(a, b, spacing_zyx, spacing_order="physical")
    assert physical["masd"] == pytest.approx(2 * 1.25, abs=1e-9)
    assert scorer["masd"] == pytest.approx(2 * 1.5625, abs=1e-9)
    assert scorer["dice"] == physical["dice"] == 0.0
    assert scorer["nsd"] != pytest.approx(physical["nsd"], abs=1e-3)
    # The same cubes shifted along y: the scorer measures axis 1 with the x spacing.
    a, b = _cube(corner=(4, 3, 4)), _cube(corner=(4, 6, 4))
    assert case_metrics(a, b, spacing_zyx, spacing_order="physical")["masd"] == pytest.approx(2 * 1.5625, abs=1e-9)
    assert case_metrics(a, b, spacing_zyx)["masd"] == pytest.approx(2 * 1.25, abs=1e-9)
    # And along z both orders use the slice thickness.
    a, b = _cube(corner=(3, 4, 4)), _cube(corner=(6, 4, 4))
    assert case_metrics(a, b, spacing_zyx)["masd"] == pytest.approx(2 * 4.0, abs=1e-9)
    assert case_metrics(a, b, spacing_zyx, spacing_order="physical")["masd"] == pytest.approx(2 * 4.0, abs=1e-9)


def test_scorer_and_physical_agree_when_pixels_are_square():
    """Only the in-plane swap separates the orders: with x == y spacing they give identical numbers on any masks,
    however thick the slices."""
    rng = np.random.default_rng(1)
    truth, pred = rng.random((7, 12, 13)) < 0.2, rng.random((7, 12, 13)) < 0.2
    spacing_zyx = (6.0, 1.375, 1.375)
    assert case_metrics(truth, pred, spacing_zyx) == case_metrics(truth, pred, spacing_zyx, spacing_order="physical")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(np.zeros((3, 4, 5)), np.zeros((3, 4, 6)), (1, 1, 1))


# ---------------------------------------------------------------------------------------- binarize and lesions

def test_binarize_truncates_like_the_scorers_uint8_cast():
    values = np.array([0.0, 0.4, 0.99, 1.0, 2.0, -0.5, 256.0, -1.0], dtype=np.float32)
    assert binarize(values).tolist() == [False, False, False, True, True, False, False, True]
    assert binarize(np.array([0, 1, 2, 256, 257], dtype=np.int16)).tolist() == [False, True, True, False, True]


@pytest.mark.parametrize("dtype,values", [
    (np.float32, [0, 0.4, 0.99, 1, 1.7, 2, 255, 255.9, 256, 257, 300.5, 1e6, -0.5, -1, -2, -255.5, 2147483520.0,
                  3e9, -3e9, np.nan, np.inf, -np.inf]),
    (np.float64, [0.9999999999, 1.0, 256.0, 4294967301.0, -2147483649.0, 1e300]),
    (np.int16, [0, 1, 2, 255, 256, 257, -1, -256, 32767]),
    (np.int32, [0, 1, 256, 512, 16777217, -1]),
    (np.uint16, [0, 1, 255, 256, 65535]),
])
def test_scorer_uint8_is_simpleitks_cast(dtype, values):
    """The scorer casts both images with SimpleITK's CastImageFilter to uint8: scorer_uint8 gives the same values."""
    array = np.array(values, dtype=dtype).reshape(1, 1, -1)
    caster = sitk.CastImageFilter()
    caster.SetOutputPixelType(sitk.sitkUInt8)
    expected = sitk.GetArrayFromImage(caster.Execute(sitk.GetImageFromArray(array)))
    assert scorer_uint8(array).tolist() == expected.tolist()


def test_dice_is_the_label_overlap_filters():
    """The scorer's Dice is SimpleITK's LabelOverlapMeasuresImageFilter on the uint8 labels, which counts each label
    on its own: a 0/255 prediction of the truth's own 0/1 lesion scores Dice 0 (MASD 0 and NSD 1 on the bool masks)."""
    truth = _cube().astype(np.uint8)
    m = case_metrics(truth, 255 * truth, (3.0, 1.0, 1.0))
    assert m == {"dice": 0.0, "masd": 0.0, "nsd": 1.0}
    rng = np.random.default_rng(2)
    for _ in range(5):
        t, p = rng.integers(0, 3, (6, 7, 8)).astype(np.uint8), rng.integers(0, 4, (6, 7, 8)).astype(np.uint8)
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(sitk.GetImageFromArray(t), sitk.GetImageFromArray(p))
        assert case_metrics(t, p, (1.0, 1.0, 1.0))["dice"] == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)


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


# ------------------------------------------------ the challenge's scoring arithmetic, re-written from its code
#
# Written from the published scorer, bonbidhie_eval/evaluation.py of github.com/baorina/BONBID-HIE-MICCAI2023
# (score_case, compute_surface_distances, compute_MASD, compute_NSD; its distance code is a copy of DeepMind's
# surface-distance), not from hieseg: surfels are found and weighted here with numpy, and the distance from each
# surfel to the other surface is found by a k-d tree over the other surfels (exact nearest neighbour) instead of
# the scorer's Euclidean distance transform. Only the marching-cubes table of unit surfel normals (256 entries of
# data, identical in the scorer's file and in the surface-distance 0.1 package) is taken from the package.

# DeepMind's 2x2x2 neighbourhood code: the voxel at offset (i, j, k) of the cell below-left of a corner point has
# weight KERNEL[i, j, k] (scipy's correlate centres a size-2 kernel on its second element).
KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


def _surfels(mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Surface points (mm) and their areas (mm²): a surfel sits on every voxel corner whose eight surrounding voxels
    are neither all inside nor all outside; its area is that of the marching-cubes triangles of that 2x2x2 cell, each
    triangle's normal scaled by the products of the other two spacings (create_table_neighbour_code_to_surface_area).
    """
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


def reference_surface_scores(truth: np.ndarray, pred: np.ndarray, spacing) -> tuple[float, float]:
    """(MASD, NSD at 2 mm) of two non-empty boolean masks, ``spacing`` per array axis as given.

    MASD = mean of the two directed surfel-area weighted mean distances (compute_MASD: np.mean of
    compute_average_surface_distance); NSD = area within 2 mm (<=) of both surfaces over their total area
    (compute_surface_dice_at_tolerance)."""
    pa, aa = _surfels(truth, spacing)
    pb, ab = _surfels(pred, spacing)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    masd = 0.5 * (np.sum(aa * d_ab) / np.sum(aa) + np.sum(ab * d_ba) / np.sum(ab))
    nsd = (np.sum(aa[d_ab <= 2.0]) + np.sum(ab[d_ba <= 2.0])) / (np.sum(aa) + np.sum(ab))
    return float(masd), float(nsd)


def reference_metrics(truth: np.ndarray, pred: np.ndarray, spacing) -> dict:
    """Dice, MASD, NSD of two boolean masks with the scorer's empty-case rules (score_case)."""
    if not truth.any():
        return {"dice": 1.0, "masd": 0.0, "nsd": 1.0} if not pred.any() else {"dice": 0.0, "masd": math.nan,
                                                                               "nsd": 0.0}
    if not pred.any():
        return {"dice": 0.0, "masd": math.nan, "nsd": 0.0}
    masd, nsd = reference_surface_scores(truth, pred, spacing)
    dice = 2.0 * np.logical_and(truth, pred).sum() / (truth.sum() + pred.sum())
    return {"dice": float(dice), "masd": masd, "nsd": nsd}


def scorer_reference(gt_path, pred_path) -> dict:
    """score_case step by step: read both files with SimpleITK, cast to uint8, put the truth's origin, spacing and
    direction on the prediction, Dice from LabelOverlapMeasuresImageFilter, the arrays as bool, the empty-case rules,
    and the surface scores on the spacing [s[-1], s[0], s[1]] of the truth's s = GetSpacing()."""
    gt, pred = sitk.ReadImage(str(gt_path)), sitk.ReadImage(str(pred_path))
    caster = sitk.CastImageFilter()
    caster.SetOutputPixelType(sitk.sitkUInt8)
    gt, pred = caster.Execute(gt), caster.Execute(pred)
    gt_s = sitk.GetArrayFromImage(gt).astype(bool)
    pred_s = sitk.GetArrayFromImage(pred).astype(bool)
    pred.SetOrigin(gt.GetOrigin())
    pred.SetSpacing(gt.GetSpacing())
    pred.SetDirection(gt.GetDirection())
    if not gt_s.any() or not pred_s.any():
        return reference_metrics(gt_s, pred_s, (1.0, 1.0, 1.0))  # the empty rules need no spacing
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(gt, pred)
    masd, nsd = reference_surface_scores(gt_s, pred_s, _scorer_revert(gt.GetSpacing()))
    return {"dice": overlap.GetDiceCoefficient(), "masd": masd, "nsd": nsd}


def test_reference_reproduces_the_hand_computed_cubes():
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 4, 6))
    ref = reference_metrics(a, b, (1.0, 1.0, 1.0))
    assert ref["masd"] == pytest.approx(2.0) and ref["nsd"] == pytest.approx((4 * C + 8 * E + 5 * F) / CUBE_AREA)


def test_random_masks_agree_with_reference():
    rng = np.random.default_rng(0)
    for spacing_zyx in [(4.0, 1.5625, 1.4733), (2.0, 2.0, 2.0), (6.0, 1.375, 1.25), (1.0, 3.0, 0.5)]:
        truth = rng.random((9, 14, 15)) < 0.15
        pred = rng.random((9, 14, 15)) < 0.15
        for order, axes in (("scorer", _scorer_revert(spacing_zyx[::-1])), ("physical", spacing_zyx)):
            ours = case_metrics(truth, pred, spacing_zyx, spacing_order=order)
            ref = reference_metrics(truth, pred, axes)
            for key in ("dice", "masd", "nsd"):
                assert ours[key] == pytest.approx(ref[key], abs=1e-9), (spacing_zyx, order, key)


def _write_like(source, array: np.ndarray, path) -> None:
    """``array`` as an image with the geometry of the image file ``source``."""
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(sitk.ReadImage(str(source)))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def real_predictions(tmp_path_factory):
    """The release root and three prediction folders for the 40 real cases: the Z-ADC < -2 baseline masks, and the
    same masks dilated and eroded by one voxel (6-connected), so that surface distances are non-trivial and some
    eroded masks are empty."""
    from realdata import real_cases_dir

    from hieseg.evaluation.baseline import run_baseline

    root = real_cases_dir()
    base = tmp_path_factory.mktemp("baseline")
    written, failed = run_baseline(root, base)
    assert not failed and len(written) == 40
    folders = {"baseline": base}
    for name, op in (("dilated", ndimage.binary_dilation), ("eroded", ndimage.binary_erosion)):
        folders[name] = tmp_path_factory.mktemp(name)
        for path in written:
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) != 0
            _write_like(path, op(mask), folders[name] / path.name)
    return root, folders


@pytest.mark.parametrize("variant", ["baseline", "dilated", "eroded"])
def test_real_cases_match_the_challenge_scorer(real_predictions, variant, tmp_path, capsys):
    """``hieseg evaluate GT PRED --csv F`` per case against the scorer's arithmetic (``scorer_reference``) on all 40
    real cases, to 1e-6 in Dice, MASD and NSD; the means skip NaN as the leaderboard's do."""
    from hieseg.app.cli import main

    root, folders = real_predictions
    out_csv, out_json = tmp_path / "rows.csv", tmp_path / "report.json"
    assert main(["evaluate", str(root), str(folders[variant]), "--csv", str(out_csv), "--json", str(out_json),
                 "-q"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 40
    refs = []
    for row in rows:
        ref = scorer_reference(row["truth_file"], row["pred_file"])
        refs.append(ref)
        for key in ("dice", "masd", "nsd"):
            if math.isnan(ref[key]):
                assert row[key] == "", (row["case"], key)
            else:
                assert float(row[key]) == pytest.approx(ref[key], abs=1e-6), (row["case"], variant, key)
    overall = json.loads(out_json.read_text())["summary"]["overall"]
    for key in ("dice", "masd", "nsd"):
        assert overall[key] == pytest.approx(float(np.nanmean([r[key] for r in refs])), abs=1e-9)
    if variant == "eroded":  # the empty-prediction rule is exercised on real data
        assert any(math.isnan(r["masd"]) for r in refs)


def test_missing_surface_distance_is_one_clear_error(monkeypatch):
    import sys

    from hieseg.errors import HiesegError

    monkeypatch.setitem(sys.modules, "surface_distance", None)
    a, b = _cube(corner=(4, 4, 3)), _cube(corner=(4, 4, 4))
    with pytest.raises(HiesegError, match=r"hieseg\[eval\]"):
        case_metrics(a, b, (1.0, 1.0, 1.0))
    # The empty-case rules need no surface distances.
    assert case_metrics(a, np.zeros_like(a), (1.0, 1.0, 1.0))["dice"] == 0.0
