"""What a lesion mask is, wherever it is used: its connectivity and components, the foreground as the challenge's
scorer sees it, and BONBID-HIE's burden classes and strata (post-processing, the report, evaluation and tuning all
read them from here)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Full (26-)connectivity: on these anisotropic grids, lesion voxels touching only at an edge are still one lesion.
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components and their voxel counts (index 0 of the counts is the background)."""
    labels, count = ndimage.label(mask, structure=CONNECTIVITY)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)


BURDEN_CLASSES = ("<1%", "1-5%", ">5%")


def burden_class(percent_of_brain: float) -> str:
    """BONBID-HIE's lesion burden strata by percent of brain volume."""
    if percent_of_brain < 1.0:
        return BURDEN_CLASSES[0]
    if percent_of_brain <= 5.0:
        return BURDEN_CLASSES[1]
    return BURDEN_CLASSES[2]


# Lesion burden strata, as fractions of the brain volume; cases without a truth lesion form their own stratum.
STRATA = ("none", "<1%", "1-5%", ">5%")


def burden_stratum(fraction: float) -> str:
    """Stratum of a lesion burden given as a fraction of the brain: 'none', '<1%', '1-5%' or '>5%'."""
    return "none" if fraction <= 0 else burden_class(100.0 * fraction)


def scorer_uint8(array: np.ndarray) -> np.ndarray:
    """The values as SimpleITK's cast to uint8 leaves them, the scorer's first step on both images.

    Integers wrap modulo 256 (a label 256 is background); floats are truncated toward zero through a 32-bit
    integer and then wrap (C's conversion on x86-64: -1.0 becomes 255, 256.0 becomes 0; NaN, infinities and values
    beyond the 32-bit range become 0). An unthresholded probability map (values in (0, 1)) is all background,
    exactly as it would be on the leaderboard.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.uint8)  # numpy's integer cast wraps modulo 256, as C's does
    truncated = np.trunc(array.astype(np.float64))
    fits = np.isfinite(truncated) & (truncated >= -2.0 ** 31) & (truncated < 2.0 ** 31)
    return (np.where(fits, truncated, 0.0).astype(np.int64) % 256).astype(np.uint8)


def binarize(array: np.ndarray) -> np.ndarray:
    """Foreground as the scorer's surface distances see it: the value cast to uint8 (``scorer_uint8``) is non-zero.

    Labels and hieseg masks hold 0/1 and are unchanged.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    return scorer_uint8(array) != 0
