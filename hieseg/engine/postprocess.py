"""From fused probabilities to the final mask: threshold inside the brain, small components, an optional
component filter, case-level empty rule."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from hieseg.engine.manifest import ComponentFilter, MaskRule
from hieseg.engine.preprocess import brain_bbox
from hieseg.lesions import label_components


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """Voxel counts of the connected components (index 0: background inside the mask's bounding box), labelled
    within that box only: on a large grid a full-size label array would be the run's largest allocation."""
    if not mask.any():
        return np.zeros(1, dtype=np.intp)
    return label_components(mask[brain_bbox(mask, (0, 0, 0))])[1]


def keep_components(sizes: np.ndarray, peak: float, voxel_mm3: float, min_component_mm3: Any,
                    empty_max_probability_below: Any = 0.0, empty_min_lesion_mm3: Any = 0.0,
                    passes: np.ndarray | None = None) -> np.ndarray:
    """Which thresholded components the post-processing rule keeps: the one definition of the rule.

    ``sizes``: the components' voxel counts (n,); ``peak``: the case's peak probability in the brain. A component
    is kept when it has at least ``min_component_mm3`` (a minimum of one voxel or less keeps all), unless the case
    is called lesion-free: peak below ``empty_max_probability_below``, or less than ``empty_min_lesion_mm3`` kept
    in all (0 disables either rule). ``passes``: the components a component filter keeps (None: all); the volume
    rule counts only those. The rule parameters may be arrays: the result broadcasts them against the
    components, shape (*parameters, n), so the tuner scores a whole grid of rules in one call.
    """
    sizes = np.asarray(sizes, dtype=float)
    min_voxels = np.asarray(min_component_mm3, dtype=float)[..., None] / voxel_mm3
    keep = (sizes >= min_voxels) | (min_voxels <= 1)
    if passes is not None:
        keep = keep & np.asarray(passes, dtype=bool)
    empty_peak = np.asarray(empty_max_probability_below, dtype=float)[..., None]
    empty_volume = np.asarray(empty_min_lesion_mm3, dtype=float)[..., None]
    kept_mm3 = (keep * sizes).sum(-1, keepdims=True) * voxel_mm3
    empty = ((empty_peak > 0) & (peak < empty_peak)) | ((empty_volume > 0) & (kept_mm3 < empty_volume))
    return keep & ~empty


def edge_depth_mm(brain: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Each brain voxel's distance (mm, voxel centres) to the nearest voxel outside the brain, where everything
    beyond the array counts as outside. With that rule any box holding the brain gives the same distances, so the
    runtime's margin box and the tuner's tight crop agree voxel for voxel."""
    padded = np.pad(np.asarray(brain, dtype=bool), 1, constant_values=False)
    return ndimage.distance_transform_edt(padded, sampling=tuple(float(s) for s in spacing_zyx))[1:-1, 1:-1, 1:-1]


def component_filter_keeps(rule: ComponentFilter, labels: np.ndarray, candidates: np.ndarray, prob: np.ndarray,
                           brain: np.ndarray, spacing_zyx: Sequence[float],
                           box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Which of the components ``1..n`` of ``labels`` the filter keeps (bool, (n,)).

    ``candidates`` (bool, (n,)): the components the size rule keeps; ``distance_to_largest`` measures to the
    largest of those (the lowest label on a tie) and keeps everything when there is none. ``labels`` covers
    ``box`` of ``prob`` and ``brain`` (None: the whole array).
    ``peak``: keep a component whose highest probability is >= value. ``distance_to_largest``: drop a component
    whose nearest voxel is more than value mm from the largest component's nearest voxel. ``edge``: drop a
    component whose deepest voxel is within value mm of the brain's outside (``edge_depth_mm``): thin rims where
    partial volume with the zeroed background lowers the ADC.
    """
    n = len(candidates)
    index = np.arange(1, n + 1)
    if n == 0:
        return np.zeros(0, dtype=bool)
    box = box or tuple(slice(None) for _ in labels.shape)
    if rule.type == "peak":
        return np.asarray(ndimage.maximum(prob[box], labels, index), dtype=float) >= rule.value
    if rule.type == "distance_to_largest":
        if not candidates.any():
            return np.ones(n, dtype=bool)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        largest = int(np.argmax(np.where(candidates, sizes, -1))) + 1
        distance = ndimage.distance_transform_edt(labels != largest, sampling=tuple(float(s) for s in spacing_zyx))
        return np.asarray(ndimage.minimum(distance, labels, index), dtype=float) <= rule.value
    if rule.type == "edge":
        depth = edge_depth_mm(brain, spacing_zyx)[box]
        return np.asarray(ndimage.maximum(depth, labels, index), dtype=float) > rule.value
    raise ValueError(f"unknown component filter {rule.type!r}")


def postprocess(prob: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float], rule: MaskRule) -> np.ndarray:
    """Binary lesion mask (bool) from fused probabilities: threshold inside the brain, then the components
    ``keep_components`` keeps (size rule, component filter, case-level empty rule; a lesion-free case scores only
    when the mask is completely empty)."""
    voxel_mm3 = float(np.prod(spacing_zyx))
    # Probabilities outside the brain count as 0 (no full-size masked copy: large grids stay within memory).
    peak = float(np.max(prob, where=brain, initial=0.0))
    mask = np.where(brain, prob >= rule.threshold, 0.0 >= rule.threshold)
    if not mask.any():
        return mask
    if rule.min_component_mm3 / voxel_mm3 <= 1 and rule.empty_min_lesion_mm3 <= 0 and rule.component_filter is None:
        # no component rule and no volume rule: the whole mask is one "component" to the rule (only the peak
        # rule can apply), so labelling is skipped
        keep = keep_components(np.array([mask.sum()]), peak, voxel_mm3, rule.min_component_mm3,
                               rule.empty_max_probability_below, rule.empty_min_lesion_mm3)[0]
        return mask if keep else np.zeros(prob.shape, dtype=bool)
    box = brain_bbox(mask, (0, 0, 0))  # components cannot reach outside the mask's bounding box
    labels, sizes = label_components(mask[box])
    passes = None
    if rule.component_filter is not None:
        by_size = keep_components(sizes[1:], peak, voxel_mm3, rule.min_component_mm3)
        passes = component_filter_keeps(rule.component_filter, labels, by_size, prob, brain, spacing_zyx, box)
    keep = np.concatenate([[False], keep_components(sizes[1:], peak, voxel_mm3, rule.min_component_mm3,
                                                    rule.empty_max_probability_below,
                                                    rule.empty_min_lesion_mm3, passes)])
    out = np.zeros(prob.shape, dtype=bool)
    out[box] = keep[labels]
    return out
