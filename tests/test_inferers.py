"""Stitching, padding and TTA checked with toy predictors whose exact output is known (as MONAI's tests do)."""

import numpy as np
import pytest

from hieseg.engine.inferers import (
    gaussian_weights,
    pad_spatial,
    predict_volume,
    sliding_window,
    tile_starts,
    with_flips,
)

rng = np.random.default_rng(0)


def double_first_channel(batch: np.ndarray) -> np.ndarray:
    return 2.0 * batch[:, :1]


@pytest.mark.parametrize("patch", [(32, 64, 64), (8, 16, 24), (5, 7, 9)])
def test_sliding_window_3d_reconstructs_exactly(patch):
    image = rng.random((1, 2, 19, 37, 41), dtype=np.float32)
    out = sliding_window(image, double_first_channel, patch, divisible_by=(1, 1, 1) if patch == (5, 7, 9)
                         else (4, 8, 8), batch_size=3)
    assert out.shape == (1, 19, 37, 41)
    np.testing.assert_allclose(out, 2 * image[:, 0], rtol=1e-5)


def test_sliding_window_uses_fixed_tiles_when_volume_is_larger():
    shapes = []

    def record(batch):
        shapes.append(batch.shape[2:])
        return batch[:, :1]

    image = rng.random((1, 1, 30, 70, 50), dtype=np.float32)
    sliding_window(image, record, (16, 32, 32), (8, 16, 16))
    assert len(shapes) > 1 and set(shapes) == {(16, 32, 32)}


def test_whole_volume_is_padded_to_divisible_and_cropped_back():
    seen = []

    def record(batch):
        seen.append(batch.shape)
        return batch[:, :1] + 1

    image = rng.random((1, 1, 10, 30, 33), dtype=np.float32)
    out = sliding_window(image, record, (64, 64, 64), (8, 16, 16))
    assert seen == [(1, 1, 16, 32, 48)]
    np.testing.assert_allclose(out[0], image[0, 0] + 1)


def test_2d_member_sees_axial_slices_in_batches():
    batches = []

    def slice_fn(batch):
        batches.append(batch.shape)
        return batch[:, 1:2] * 3

    image = rng.random((3, 11, 20, 24), dtype=np.float32)
    out = predict_volume(image, slice_fn, "2d", (64, 64), (16, 16), batch_size=4)
    assert [b[0] for b in batches] == [4, 4, 3] and batches[0][1:] == (3, 32, 32)
    np.testing.assert_allclose(out, image[1] * 3, rtol=1e-6)


def test_2d_sliding_window_over_large_slices():
    image = rng.random((2, 5, 70, 90), dtype=np.float32)
    out = predict_volume(image, double_first_channel, "2d", (32, 32), (16, 16), batch_size=2)
    np.testing.assert_allclose(out, 2 * image[0], rtol=1e-5)


def test_flip_tta_undoes_each_flip():
    image = rng.random((1, 6, 8, 10), dtype=np.float32)
    calls = []

    def position_sensitive(img):
        calls.append(img.copy())
        return img[0] * np.arange(10, dtype=np.float32)  # not flip-equivariant

    out = with_flips(image, position_sensitive, [[], [2]])
    expected = 0.5 * (image[0] * np.arange(10) + image[0] * np.arange(10)[::-1])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(calls[1], image[..., ::-1])
    equivariant = with_flips(image, lambda img: img[0] * 2, [[], [0], [1, 2]])
    np.testing.assert_allclose(equivariant, image[0] * 2, rtol=1e-6)


def test_gaussian_weights_and_tiles():
    w = gaussian_weights((8, 16, 16))
    assert w.max() == 1.0 and w.min() > 0 and w[4, 8, 8] == w.max()
    # 100 voxels, 32-voxel tiles, 50% overlap: a step of at most 16 needs ceil((100 - 32) / 16) + 1 = 6 tiles, spread
    # evenly from 0 to 100 - 32 = 68, i.e. 68 / 5 = 13.6 apart: 0, 13.6, 27.2, 40.8, 54.4, 68, rounded.
    assert tile_starts(100, 32, 0.5) == [0, 14, 27, 41, 54, 68]
    assert tile_starts(64, 32, 0.5) == [0, 16, 32]  # 32 / 16 + 1 = 3 tiles, exactly 16 apart
    assert tile_starts(33, 32, 0.5) == [0, 1]  # one voxel past a tile: a second tile flush with the end
    assert tile_starts(32, 32, 0.5) == [0]
    assert tile_starts(10, 32, 0.5) == [0]
    padded, crop = pad_spatial(np.ones((1, 3, 5)), (4, 8))
    assert padded.shape == (1, 4, 8) and padded[(0,) + crop].sum() == 15


def test_all_zero_slices_run_once_and_share_that_output():
    seen = []

    def affine(batch):  # a non-zero output for a zero input, so a wrong copy would show
        seen.append(len(batch))
        return 2.0 * batch[:, :1] + 0.25 + batch[:, 1:2].mean(axis=(2, 3), keepdims=True)

    image = rng.random((2, 9, 16, 16), dtype=np.float32)
    image[:, [0, 1, 7, 8]] = 0  # blank slices above and below
    out = predict_volume(image, affine, "2d", (32, 32), (16, 16), batch_size=3)
    assert sum(seen) == 6  # 5 slices with content + one blank
    expected = np.stack([affine(image[:, z][None])[0, 0] for z in range(9)])
    np.testing.assert_array_equal(out, expected)
