"""From fused probabilities to the final mask: case-level empty rule, threshold, brain mask, small components."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .manifest import MaskRule
from .preprocess import brain_bbox

# Full (26-)connectivity: on these anisotropic grids, lesion voxels touching only at an edge are still one lesion.
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components and their voxel counts (index 0 of the counts is the background)."""
    labels, count = ndimage.label(mask, structure=CONNECTIVITY)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """Voxel counts of the connected components (index 0: background inside the mask's bounding box), labelled
    within that box only: on a large grid a full-size label array would be the run's largest allocation."""
    if not mask.any():
        return np.zeros(1, dtype=np.intp)
    return label_components(mask[brain_bbox(mask, (0, 0, 0))])[1]


def remove_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    if min_voxels <= 1 or not mask.any():
        return mask
    box = brain_bbox(mask, (0, 0, 0))  # components cannot reach outside the mask's bounding box
    labels, sizes = label_components(mask[box])
    keep = sizes >= min_voxels
    keep[0] = False
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = keep[labels]
    return out


def postprocess(prob: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float], rule: MaskRule) -> np.ndarray:
    """Binary lesion mask (bool) from fused probabilities on the native grid.

    Case-level rule first: when the peak probability inside the brain is below ``empty_max_probability_below``,
    or the lesion volume left after the component filter is below ``empty_min_lesion_mm3``, the case is called
    lesion-free and the mask is empty (a lesion-free case scores only when the mask is completely empty).
    """
    voxel_mm3 = float(np.prod(spacing_zyx))
    # Probabilities outside the brain count as 0 (no full-size masked copy: large grids stay within memory).
    peak = float(np.max(prob, where=brain, initial=0.0))
    if rule.empty_max_probability_below > 0 and peak < rule.empty_max_probability_below:
        return np.zeros(prob.shape, dtype=bool)
    mask = np.where(brain, prob >= rule.threshold, 0.0 >= rule.threshold)
    mask = remove_small_components(mask, rule.min_component_mm3 / voxel_mm3)
    if rule.empty_min_lesion_mm3 > 0 and mask.sum() * voxel_mm3 < rule.empty_min_lesion_mm3:
        return np.zeros(prob.shape, dtype=bool)
    return mask
