"""The component filters of the mask rule, against brute-force references written from their definitions
(manifest schema, fusion.component_filter): pairwise voxel-centre distances in mm, no distance transform."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from hieseg.engine.manifest import ComponentFilter, MaskRule
from hieseg.engine.postprocess import postprocess
from hieseg.lesions import CONNECTIVITY

SPACING = (3.0, 1.5, 1.25)  # (z, y, x) mm, anisotropic as the BONBID grids are


def _points(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) * np.asarray(SPACING)


def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


def _case(seed: int):
    """A brain ellipsoid with a few blobs of probability, some at the rim, some far from the others."""
    rng = np.random.default_rng(seed)
    shape = (12, 24, 22)
    zz, yy, xx = np.indices(shape)
    brain = ((zz - 5.5) / 6.5) ** 2 + ((yy - 11.5) / 11) ** 2 + ((xx - 10.5) / 10) ** 2 <= 1.0
    prob = np.zeros(shape, np.float32)
    for _ in range(6):
        c = [rng.integers(1, s - 1) for s in shape]
        r = rng.uniform(0.6, 2.2)
        blob = ((zz - c[0]) * SPACING[0]) ** 2 + ((yy - c[1]) * SPACING[1]) ** 2 + ((xx - c[2]) * SPACING[2]) ** 2
        prob = np.maximum(prob, rng.uniform(0.35, 1.0) * np.exp(-blob / (2 * (r * 2) ** 2)))
    return prob * brain, brain


def _reference(prob, brain, rule: MaskRule) -> np.ndarray:
    """Threshold in the brain, 26-connected components, size rule, then the filter, by its definition."""
    labels, n = ndimage.label((prob >= rule.threshold) & brain, structure=CONNECTIVITY)
    vox = float(np.prod(SPACING))
    comps = [labels == i for i in range(1, n + 1)]
    kept = [c for c in comps if c.sum() * vox >= rule.min_component_mm3 or rule.min_component_mm3 <= vox]
    f = rule.component_filter
    if f is not None and kept:
        if f.type == "peak":
            kept = [c for c in kept if prob[c].max() >= f.value]
        elif f.type == "distance_to_largest":
            largest = kept[int(np.argmax([c.sum() for c in kept]))]
            kept = [c for c in kept if _min_distance(_points(c), _points(largest)) <= f.value]
        elif f.type == "edge":
            # outside the brain: every non-brain voxel and the ring of voxels just beyond the array
            outside = np.argwhere(~np.pad(brain, 1, constant_values=False)) - 1
            outside = outside * np.asarray(SPACING)
            kept = [c for c in kept if max(_min_distance(p[None], outside) for p in _points(c)) > f.value]
    out = np.zeros(prob.shape, bool)
    for c in kept:
        out |= c
    return out


FILTERS = [None, ComponentFilter("peak", 0.6), ComponentFilter("peak", 0.8),
           ComponentFilter("distance_to_largest", 5.0), ComponentFilter("distance_to_largest", 12.0),
           ComponentFilter("edge", 2.0), ComponentFilter("edge", 4.0)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: "none" if f is None else f"{f.type}-{f.value}")
def test_component_filters_match_their_definition(seed, flt):
    prob, brain = _case(seed)
    for thr, min_mm3 in itertools.product((0.3, 0.5), (0.0, 20.0)):
        rule = MaskRule(thr, min_mm3, component_filter=flt)
        np.testing.assert_array_equal(postprocess(prob, brain, SPACING, rule), _reference(prob, brain, rule))


@pytest.mark.parametrize("flt", FILTERS[1:], ids=lambda f: f"{f.type}-{f.value}")
def test_every_filter_drops_a_component_somewhere(flt):
    """The cases above exercise each filter (else the match with the reference would prove nothing)."""
    changed = [postprocess(p, b, SPACING, MaskRule(0.3, 0.0, component_filter=flt)).sum()
               < postprocess(p, b, SPACING, MaskRule(0.3, 0.0)).sum() for p, b in map(_case, range(4))]
    assert any(changed)


@pytest.mark.parametrize("flt", FILTERS[1:], ids=lambda f: f"{f.type}-{f.value}")
def test_filters_give_the_same_mask_on_any_box_holding_the_brain(flt):
    """The runtime applies the rule on the brain's box plus a margin, the tuner on the brain's tight box: the
    masks must agree (and agree with the whole grid's)."""
    prob, brain = _case(7)
    big_prob = np.pad(prob, 4)
    big_brain = np.pad(brain, 4)
    rule = MaskRule(0.3, 0.0, component_filter=flt)
    whole = postprocess(big_prob, big_brain, SPACING, rule)
    idx = np.argwhere(big_brain)
    tight = tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0)))
    margin = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in tight)
    for box in (tight, margin):
        got = np.zeros_like(whole)
        got[box] = postprocess(big_prob[box], big_brain[box], SPACING, rule)
        np.testing.assert_array_equal(got, whole)


def test_a_filter_can_empty_the_case_and_the_volume_rule_counts_only_what_it_keeps():
    prob, brain = _case(1)
    nothing_passes = MaskRule(0.3, 0.0, component_filter=ComponentFilter("peak", 1.1))
    assert not postprocess(prob, brain, SPACING, nothing_passes).any()
    # the volume rule (lesion-free below N mm3) sees only the filtered components
    kept = postprocess(prob, brain, SPACING, MaskRule(0.3, 0.0, component_filter=ComponentFilter("peak", 0.8)))
    volume = kept.sum() * float(np.prod(SPACING))
    assert kept.any()
    rule = MaskRule(0.3, 0.0, empty_min_lesion_mm3=volume + 1, component_filter=ComponentFilter("peak", 0.8))
    assert not postprocess(prob, brain, SPACING, rule).any()
