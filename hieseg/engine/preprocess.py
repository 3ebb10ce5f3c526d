"""Preprocessing shared by training and inference: crop to the brain, resample, build network channels.

Everything here is a pure function on (z, y, x) numpy arrays. ``prepare`` returns what ``restore`` needs to put a
probability map back on the native grid, so training and inference cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

Spacing = Sequence[float | None]


def brain_mask(adc: np.ndarray) -> np.ndarray:
    """Brain voxels of a skull-stripped ADC map (background is exactly 0; a few cases have negatives outside)."""
    return adc > 0


def brain_bbox(mask: np.ndarray, margin_vox: Sequence[int]) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin_vox`` per axis and clipped to the array."""
    if not mask.any():
        raise ValueError("empty brain mask")
    box = []
    for axis, margin in enumerate(margin_vox):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def margin_voxels(margin_mm: float, spacing_zyx: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(math.ceil(margin_mm / s)) for s in spacing_zyx)


def target_shape(shape: Sequence[int], spacing_zyx: Sequence[float], target_zyx: Spacing) -> tuple[int, ...]:
    """Shape after resampling to ``target_zyx`` (a None entry keeps that axis native)."""
    return tuple(
        n if t is None else max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_zyx, target_zyx)
    )


def _interp_axis(array: np.ndarray, axis: int, out_len: int) -> np.ndarray:
    """Linear interpolation along one axis, voxel corners aligned (the physical extent is kept)."""
    n = array.shape[axis]
    if n == out_len:
        return array
    coords = (np.arange(out_len, dtype=np.float64) + 0.5) * (n / out_len) - 0.5
    coords = np.clip(coords, 0, n - 1)
    i0 = np.floor(coords).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = out_len
    w = (coords - i0).astype(np.float32).reshape(shape)
    return array.take(i0, axis=axis) * (1 - w) + array.take(i1, axis=axis) * w


def resample_linear(array: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Separable linear resampling of the last three axes of ``array`` to ``out_shape`` (float32)."""
    out = np.asarray(array, dtype=np.float32)
    lead = out.ndim - 3
    # Shrinking axes first keeps the intermediate arrays small.
    order = sorted(range(3), key=lambda a: out_shape[a] / out.shape[lead + a])
    for axis in order:
        out = _interp_axis(out, lead + axis, int(out_shape[axis]))
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_mask(mask: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """A binary mask resampled with the same mapping as the images (linear, then >= 0.5)."""
    return resample_linear(mask.astype(np.float32), out_shape) >= 0.5


def apply_transform(values: np.ndarray, brain: np.ndarray, transform: Mapping[str, Any]) -> np.ndarray:
    """One intensity transform from the manifest, applied to a whole (cropped, resampled) volume."""
    kind = transform["type"]
    if kind == "clip_scale":
        low, high = float(transform["low"]), float(transform["high"])
        return (np.clip(values, low, high) - low) / (high - low)
    if kind == "zscore":
        out = (values - float(transform["mean"])) / float(transform["std"])
        if "clip" in transform:
            out = np.clip(out, -float(transform["clip"]), float(transform["clip"]))
        return np.where(brain, out, 0.0)
    if kind == "below":
        return ((values < float(transform["threshold"])) & brain).astype(np.float32)
    raise ValueError(f"unknown intensity transform {kind!r}")


def make_channels(adc: np.ndarray, zadc: np.ndarray, channels: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Stack the network's input channels (C, z, y, x) from ADC and Z-ADC, as the manifest describes them."""
    sources = {"adc": adc, "zadc": zadc}
    brain = brain_mask(adc)
    out = np.empty((len(channels),) + adc.shape, dtype=np.float32)
    for i, spec in enumerate(channels):
        if spec["source"] not in sources:
            raise ValueError(f"unknown channel source {spec['source']!r}")
        out[i] = apply_transform(sources[spec["source"]], brain, spec["transform"])
    return out


@dataclass(frozen=True)
class Prepared:
    """Network input for one member and what is needed to undo the crop and the resampling."""

    image: np.ndarray  # (C, z, y, x) at the member's spacing
    crop: tuple[slice, slice, slice]  # crop of the native grid
    native_shape: tuple[int, int, int]

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.crop)  # type: ignore[return-value]


def crop_to_brain(adc: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> tuple[slice, slice, slice]:
    return brain_bbox(brain_mask(adc), margin_voxels(margin_mm, spacing_zyx))


def prepare(
    adc: np.ndarray,
    zadc: np.ndarray,
    spacing_zyx: Sequence[float],
    channels: Sequence[Mapping[str, Any]],
    target_spacing_zyx: Spacing,
    crop: tuple[slice, slice, slice],
) -> Prepared:
    """Crop ADC and Z-ADC to ``crop``, resample both to the member's spacing, then build its channels."""
    shape = target_shape([s.stop - s.start for s in crop], spacing_zyx, target_spacing_zyx)
    both = resample_linear(np.stack([adc[crop], zadc[crop]]), shape)
    return Prepared(make_channels(both[0], both[1], channels), crop, tuple(adc.shape))  # type: ignore[arg-type]


def restore(prob: np.ndarray, prepared: Prepared) -> np.ndarray:
    """Probability map at the member's spacing back onto the full native grid (linear, zero outside the crop)."""
    out = np.zeros(prepared.native_shape, dtype=np.float32)
    out[prepared.crop] = resample_linear(prob, prepared.crop_shape)
    return out
