"""Per-case segmentation metrics exactly as the BONBID-HIE challenge scorer computes them, plus lesion-wise counts.

The scorer (``bonbidhie_eval/evaluation.py`` in github.com/baorina/BONBID-HIE-MICCAI2023) reads both images with
SimpleITK, casts them to uint8 (``scorer_uint8``), puts the truth's geometry on the prediction, takes the (z, y, x)
arrays as bool and scores them with its copy of DeepMind's ``surface-distance`` code (the same algorithm as the
``surface-distance`` 0.1 package used here):

- Dice = 2|A∩B| / (|A| + |B|), from SimpleITK's LabelOverlapMeasuresImageFilter on the uint8 labels (each non-zero
  label counted on its own; the plain Dice on 0/1 masks);
- MASD = mean of the two directed, surfel-area weighted average surface distances (mm);
- NSD = surface Dice at a 2 mm tolerance;
- empty truth and empty prediction: Dice 1, MASD 0, NSD 1; empty truth and any prediction, or an empty prediction
  on a lesion case: Dice 0, MASD NaN, NSD 0.

It takes SimpleITK's spacing ``s = image.GetSpacing()`` in (x, y, z) order and hands ``[s[-1], s[0], s[1]]`` =
(z, x, y) to the distances of the (z, y, x) array: the z axis gets the true slice thickness and only the in-plane
x and y spacings are swapped (which matters only where they differ). ``spacing_order="scorer"`` (the default)
reproduces that, so that numbers match the leaderboard; ``"physical"`` uses the true (z, y, x) spacing.

``surface_distance`` is an optional dependency (the ``eval`` extra) and is imported only when needed.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from hieseg.errors import MissingDependency
from hieseg.lesions import CONNECTIVITY, binarize, scorer_uint8

log = logging.getLogger(__name__)

NSD_TOLERANCE_MM = 2.0
SPACING_ORDERS = ("scorer", "physical")
def _surface_distance():
    try:
        import surface_distance
    except ImportError:
        raise MissingDependency(
            "surface distances need DeepMind's 'surface-distance' package: pip install 'hieseg[eval]' "
            "(or pip install surface-distance==0.1)") from None
    return surface_distance


def scorer_spacing(spacing_zyx: Sequence[float], spacing_order: str = "scorer") -> tuple[float, float, float]:
    """The spacing handed to surface-distance for a (z, y, x) array.

    ``"scorer"``: the challenge's ``[s[-1], s[0], s[1]]`` of SimpleITK's (x, y, z) spacing ``s``, i.e. (z, x, y);
    ``"physical"``: the true (z, y, x) spacing.
    """
    if spacing_order not in SPACING_ORDERS:
        raise ValueError(f"spacing_order must be one of {', '.join(SPACING_ORDERS)}, got {spacing_order!r}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {spacing_zyx!r}")
    if spacing_order == "physical":
        return spacing  # type: ignore[return-value]
    z, y, x = spacing
    sitk_xyz = (x, y, z)
    return (sitk_xyz[-1], sitk_xyz[0], sitk_xyz[1])


def label_overlap_dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """The Dice of SimpleITK's LabelOverlapMeasuresImageFilter, which the scorer reports, on two uint8 label arrays.

    The filter counts each non-zero label separately: with I and U the summed per-label intersections and unions,
    Dice = 2 (I/U) / (1 + I/U) = 2 I / (|truth != 0| + |pred != 0|), where I counts the voxels holding the same
    non-zero label in both. On 0/1 masks it is the plain Dice; a prediction written as 0/255 scores 0 against 0/1
    labels, as it would on the leaderboard. 1.0 when both are empty (the challenge's rule).
    """
    total = int(np.count_nonzero(truth)) + int(np.count_nonzero(pred))
    if total == 0:
        return 1.0
    same = int(np.count_nonzero((truth == pred) & (truth != 0)))
    return 2.0 * same / total


def case_metrics(truth: np.ndarray, pred: np.ndarray, spacing_zyx: Sequence[float],
                 spacing_order: str = "scorer") -> dict:
    """Dice, MASD (mm) and NSD (2 mm) of one case, as floats under keys ``dice``, ``masd``, ``nsd``.

    ``truth`` and ``pred`` are (z, y, x) arrays of the same shape (labels, masks or anything the scorer would cast
    to uint8); ``spacing_zyx`` is the truth's spacing. MASD is NaN where the challenge leaves it undefined.
    """
    truth_labels, pred_labels = scorer_uint8(truth), scorer_uint8(pred)
    if truth_labels.shape != pred_labels.shape:
        raise ValueError(f"truth and prediction shapes differ: {truth_labels.shape} vs {pred_labels.shape}")
    if truth_labels.ndim != 3:
        raise ValueError(f"expected 3D masks, got shape {truth_labels.shape}")
    spacing = scorer_spacing(spacing_zyx, spacing_order)
    truth, pred = truth_labels != 0, pred_labels != 0
    has_truth, has_pred = bool(truth.any()), bool(pred.any())
    if not has_truth and not has_pred:
        return {"dice": 1.0, "masd": 0.0, "nsd": 1.0}
    if not has_truth or not has_pred:
        return {"dice": 0.0, "masd": math.nan, "nsd": 0.0}
    sd = _surface_distance()
    with warnings.catch_warnings():  # surface-distance 0.1 uses scipy.ndimage's deprecated sub-namespaces
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = sd.compute_surface_distances(truth, pred, spacing)
    gt_to_pred, pred_to_gt = sd.compute_average_surface_distance(distances)
    return {
        "dice": float(label_overlap_dice(truth_labels, pred_labels)),
        "masd": float(np.mean([gt_to_pred, pred_to_gt])),
        "nsd": float(sd.compute_surface_dice_at_tolerance(distances, NSD_TOLERANCE_MM)),
    }


def nanmean(values: Iterable[float]) -> float:
    """Mean that skips NaN (as the leaderboard does); NaN when nothing is left."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def lesion_counts(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Lesion-wise detection: truth lesions (26-connected), those touched by the prediction, and predicted
    components that touch no truth lesion (false positives)."""
    truth, pred = binarize(truth), binarize(pred)
    truth_labels, n_lesions = ndimage.label(truth, structure=CONNECTIVITY)
    pred_labels, n_components = ndimage.label(pred, structure=CONNECTIVITY)
    detected = np.unique(truth_labels[pred & truth])
    touching = np.unique(pred_labels[pred & truth])
    return {
        "lesions": int(n_lesions),
        "lesions_detected": int(np.count_nonzero(detected)),
        "pred_components": int(n_components),
        "fp_components": int(n_components - np.count_nonzero(touching)),
    }


