"""Running a network over a volume: padding, sliding window with Gaussian blending, 2D slice batches, flip TTA.

Everything is a pure function over a ``predict_fn(batch) -> probabilities`` callable, so the stitching can be
tested with toy predictors and the same code serves ONNX Runtime, torch, or anything else.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Sequence

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


def padded_shape(shape: Sequence[int], divisible_by: Sequence[int], minimum: Sequence[int] | None = None) -> tuple:
    minimum = minimum or [1] * len(shape)
    return tuple(int(math.ceil(max(n, m) / d) * d) for n, m, d in zip(shape, minimum, divisible_by))


def pad_spatial(array: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the trailing spatial axes of ``array`` to ``shape``, centred; returns the slices that undo it."""
    spatial = array.shape[-len(shape):]
    before = [(t - n) // 2 for n, t in zip(spatial, shape)]
    pads = [(0, 0)] * (array.ndim - len(shape)) + [(b, t - n - b) for b, n, t in zip(before, spatial, shape)]
    crop = tuple(slice(b, b + n) for b, n in zip(before, spatial))
    if all(p == (0, 0) for p in pads):
        return array, crop
    return np.pad(array, pads), crop


@functools.lru_cache(maxsize=8)
def gaussian_weights(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net's importance map: a Gaussian centred on the tile, max 1, no zeros (so every voxel is covered)."""
    grids = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / max(p * sigma_scale, 1e-6)) ** 2) for p in patch]
    weights = functools.reduce(np.multiply.outer, grids).astype(np.float32)
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    weights.flags.writeable = False
    return weights


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets that cover ``size`` with tiles of ``patch`` overlapping by about ``overlap``."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    count = int(math.ceil((size - patch) / step)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, count)})


def sliding_window(
    image: np.ndarray,
    predict_fn: PredictFn,
    patch: Sequence[int],
    divisible_by: Sequence[int],
    batch_size: int = 1,
    overlap: float = 0.5,
) -> np.ndarray:
    """Probabilities (B, *spatial) for ``image`` (B, C, *spatial).

    A volume that fits in ``patch`` runs whole (padded only to ``divisible_by``); a larger one is tiled with
    fixed-size tiles (so accelerator kernels are planned once), blended with Gaussian weights. ``B`` is the batch
    of independent items: 1 for a 3D volume, the slices for a 2D network; ``batch_size`` caps the items or tiles
    per forward pass.
    """
    batch, spatial = image.shape[0], image.shape[2:]
    patch = tuple(int(p) for p in patch) if patch and all(patch) else tuple(spatial)
    if all(n <= p for n, p in zip(spatial, patch)):
        padded, crop = pad_spatial(image, padded_shape(spatial, divisible_by))
        out = _forward_items(predict_fn, padded, batch_size)
        return np.ascontiguousarray(out[(slice(None),) + crop])

    padded, crop = pad_spatial(image, padded_shape(spatial, divisible_by, patch))
    full = padded.shape[2:]
    weights = gaussian_weights(patch)
    acc = np.zeros((batch,) + full, dtype=np.float32)
    norm = np.zeros(full, dtype=np.float32)
    tiles = [tuple(slice(s, s + p) for s, p in zip(starts, patch))
             for starts in itertools.product(*(tile_starts(n, p, overlap) for n, p in zip(full, patch)))]
    if batch == 1:  # one volume: batch tiles together
        for i in range(0, len(tiles), batch_size):
            group = tiles[i:i + batch_size]
            probs = _forward(predict_fn, np.concatenate([padded[(slice(None), slice(None)) + t] for t in group]))
            for t, p in zip(group, probs):
                acc[(0,) + t] += p * weights
                norm[t] += weights
    else:  # many slices: batch items, tile by tile
        for t in tiles:
            for b in range(0, batch, batch_size):
                acc[(slice(b, b + batch_size),) + t] += _forward(predict_fn, padded[(slice(b, b + batch_size),
                                                                                     slice(None)) + t]) * weights
            norm[t] += weights
    return np.ascontiguousarray((acc / norm)[(slice(None),) + crop])


def _forward_items(predict_fn: PredictFn, items: np.ndarray, batch_size: int) -> np.ndarray:
    """Outputs for every item of ``items`` (N, C, ...), ``batch_size`` at a time.

    Items that are entirely zero (a 2D network's slices above and below the brain, inside the crop margin) all
    give the same output, so only the first of them runs and the others get a copy of its output.
    """
    blank = ~items.reshape(len(items), -1).any(axis=1)
    run = np.flatnonzero(~blank)
    if blank.any():
        run = np.sort(np.append(run, np.flatnonzero(blank)[0]))
    outs = np.concatenate([_forward(predict_fn, items[run[b:b + batch_size]]) for b in range(0, len(run), batch_size)])
    if len(run) == len(items):
        return outs
    full = np.empty((len(items),) + outs.shape[1:], dtype=outs.dtype)
    full[run] = outs
    full[blank] = outs[np.searchsorted(run, np.flatnonzero(blank)[0])]
    return full


def _forward(predict_fn: PredictFn, batch: np.ndarray) -> np.ndarray:
    out = np.asarray(predict_fn(np.ascontiguousarray(batch, dtype=np.float32)))
    if out.ndim == batch.ndim:  # (N, 1, ...) -> (N, ...)
        out = out[:, 0]
    return out.astype(np.float32, copy=False)


def predict_volume(
    image: np.ndarray,
    predict_fn: PredictFn,
    kind: str,
    patch: Sequence[int],
    divisible_by: Sequence[int],
    batch_size: int = 1,
    overlap: float = 0.5,
) -> np.ndarray:
    """Probabilities (z, y, x) for a (C, z, y, x) image; a 2D network sees the axial slices as its batch."""
    if kind == "3d":
        return sliding_window(image[None], predict_fn, patch, divisible_by, batch_size, overlap)[0]
    if kind == "2d":
        return sliding_window(np.moveaxis(image, 1, 0), predict_fn, patch, divisible_by, batch_size, overlap)
    raise ValueError(f"unknown member kind {kind!r}")


def with_flips(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
               flips: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean of ``predict`` over flipped copies of a (C, z, y, x) image, each flipped back ((z, y, x) axes)."""
    total = None
    for axes in flips or [()]:
        spatial = tuple(a + 1 for a in axes)
        prob = predict(np.flip(image, spatial) if axes else image)
        prob = np.flip(prob, tuple(axes)) if axes else prob
        total = prob.copy() if total is None else total + prob
    return total / max(len(flips), 1)
