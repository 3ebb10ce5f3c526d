import numpy as np
import pytest

from hieseg.engine import preprocess as P


def test_resample_identity_and_round_trip_of_smooth_field():
    z, y, x = np.meshgrid(np.arange(12), np.arange(30), np.arange(40), indexing="ij")
    field = (0.5 * z + 0.2 * y - 0.1 * x).astype(np.float32)
    np.testing.assert_array_equal(P.resample_linear(field, field.shape), field)
    up = P.resample_linear(field, (24, 60, 80))
    back = P.resample_linear(up, field.shape)
    # A linear field survives up- then down-sampling away from the clamped borders.
    np.testing.assert_allclose(back[1:-1, 1:-1, 1:-1], field[1:-1, 1:-1, 1:-1], atol=1e-4)


def test_target_shape_keeps_null_axes_and_physical_extent():
    assert P.target_shape((20, 160, 160), (6.0, 1.375, 1.375), (None, 1.1, 1.1)) == (20, 200, 200)
    assert P.target_shape((50, 128, 128), (2.0, 2.0, 2.0), (4.0, 1.0, 1.0)) == (25, 256, 256)


def test_bbox_margin_and_restore_place_crop_back():
    adc = np.zeros((10, 40, 50), np.float32)
    adc[3:7, 10:30, 20:35] = 1000
    crop = P.crop_to_brain(adc, (4.0, 2.0, 2.0), margin_mm=4.0)
    assert crop == (slice(2, 8), slice(8, 32), slice(18, 37))
    prepared = P.prepare(adc, adc, (4.0, 2.0, 2.0), [{"source": "adc", "transform":
                                                      {"type": "clip_scale", "low": 0, "high": 2000}}],
                         (None, 1.0, 1.0), crop)
    assert prepared.image.shape == (1, 6, 48, 38)
    restored = P.restore(prepared.image[0], prepared)
    assert restored.shape == adc.shape
    np.testing.assert_allclose(restored[3:7, 11:29, 21:34], 0.5, atol=1e-6)
    assert restored[:, :8].sum() == 0


def test_transforms():
    values = np.array([-5.0, 0.0, 1700.0, 4400.0], np.float32)
    brain = values > 0
    np.testing.assert_allclose(P.apply_transform(values, brain, {"type": "clip_scale", "low": 0, "high": 3400}),
                               [0, 0, 0.5, 1])
    np.testing.assert_allclose(P.apply_transform(values, brain, {"type": "zscore", "mean": 1700, "std": 100,
                                                                 "clip": 5}), [0, 0, 0, 5])
    z = np.array([-3.0, -2.0, -1.0, -9.0], np.float32)
    np.testing.assert_array_equal(P.apply_transform(z, np.array([1, 1, 1, 0], bool),
                                                    {"type": "below", "threshold": -2}), [1, 0, 0, 0])
    with pytest.raises(ValueError):
        P.apply_transform(values, brain, {"type": "nope"})
