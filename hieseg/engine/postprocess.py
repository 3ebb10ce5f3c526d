"""From fused probabilities to the final mask: case-level empty rule, threshold, brain mask, small components."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hieseg.engine.manifest import MaskRule
from hieseg.engine.preprocess import brain_bbox
from hieseg.lesions import label_components


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """Voxel counts of the connected components (index 0: background inside the mask's bounding box), labelled
    within that box only: on a large grid a full-size label array would be the run's largest allocation."""
    if not mask.any():
        return np.zeros(1, dtype=np.intp)
    return label_components(mask[brain_bbox(mask, (0, 0, 0))])[1]


def keep_components(sizes: np.ndarray, peak: float, voxel_mm3: float, min_component_mm3: Any,
                    empty_max_probability_below: Any = 0.0, empty_min_lesion_mm3: Any = 0.0) -> np.ndarray:
    """Which thresholded components the post-processing rule keeps: the one definition of the rule.

    ``sizes``: the components' voxel counts (n,); ``peak``: the case's peak probability in the brain. A component
    is kept when it has at least ``min_component_mm3`` (a minimum of one voxel or less keeps all), unless the case
    is called lesion-free: peak below ``empty_max_probability_below``, or less than ``empty_min_lesion_mm3`` kept
    in all (0 disables either rule). The rule parameters may be arrays: the result broadcasts them against the
    components, shape (*parameters, n), so the tuner scores a whole grid of rules in one call.
    """
    sizes = np.asarray(sizes, dtype=float)
    min_voxels = np.asarray(min_component_mm3, dtype=float)[..., None] / voxel_mm3
    keep = (sizes >= min_voxels) | (min_voxels <= 1)
    empty_peak = np.asarray(empty_max_probability_below, dtype=float)[..., None]
    empty_volume = np.asarray(empty_min_lesion_mm3, dtype=float)[..., None]
    kept_mm3 = (keep * sizes).sum(-1, keepdims=True) * voxel_mm3
    empty = ((empty_peak > 0) & (peak < empty_peak)) | ((empty_volume > 0) & (kept_mm3 < empty_volume))
    return keep & ~empty


def postprocess(prob: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float], rule: MaskRule) -> np.ndarray:
    """Binary lesion mask (bool) from fused probabilities on the native grid: threshold inside the brain, then
    the components ``keep_components`` keeps (component filter and case-level empty rule; a lesion-free case
    scores only when the mask is completely empty)."""
    voxel_mm3 = float(np.prod(spacing_zyx))
    # Probabilities outside the brain count as 0 (no full-size masked copy: large grids stay within memory).
    peak = float(np.max(prob, where=brain, initial=0.0))
    mask = np.where(brain, prob >= rule.threshold, 0.0 >= rule.threshold)
    if not mask.any():
        return mask
    if rule.min_component_mm3 / voxel_mm3 <= 1 and rule.empty_min_lesion_mm3 <= 0:
        # no component filter and no volume rule: the whole mask is one "component" to the rule (only the peak
        # rule can apply), so labelling is skipped
        keep = keep_components(np.array([mask.sum()]), peak, voxel_mm3, rule.min_component_mm3,
                               rule.empty_max_probability_below, rule.empty_min_lesion_mm3)[0]
        return mask if keep else np.zeros(prob.shape, dtype=bool)
    box = brain_bbox(mask, (0, 0, 0))  # components cannot reach outside the mask's bounding box
    labels, sizes = label_components(mask[box])
    keep = np.concatenate([[False], keep_components(sizes[1:], peak, voxel_mm3, rule.min_component_mm3,
                                                    rule.empty_max_probability_below,
                                                    rule.empty_min_lesion_mm3)])
    out = np.zeros(prob.shape, dtype=bool)
    out[box] = keep[labels]
    return out

