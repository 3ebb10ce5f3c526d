"""Checks that an ADC / Z-ADC pair is a usable case, each failing with one line that names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hieseg.errors import InputError
from hieseg.inputs.io import Geometry, read_image


def check_finite(array: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        kinds = [name for name, hit in (("NaN", np.isnan(array).any()), ("Inf", np.isinf(array).any())) if hit]
        raise InputError(path, f"{int(bad.sum())} voxels are {'/'.join(kinds)}")


def validate_pair(adc: np.ndarray, geometry: Geometry, adc_path: Path,
                  zadc: np.ndarray, zadc_geometry: Geometry, zadc_path: Path) -> None:
    """Finite values, the same grid up to rounding, a real 3D volume, a non-empty brain."""
    check_finite(adc, adc_path)
    check_finite(zadc, zadc_path)
    diffs = geometry.differences(zadc_geometry)
    if diffs:
        raise InputError(zadc_path, f"grid differs from the ADC map {adc_path.name}: " + "; ".join(diffs))
    if min(geometry.size) < 2:
        raise InputError(adc_path, f"expected a 3D volume, got size {geometry.size}")
    if not (adc > 0).any():
        raise InputError(adc_path, "no brain voxels (ADC > 0): is this a skull-stripped ADC map?")


def load_pair(adc_path: Path, zadc_path: Path) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read and validate one case."""
    adc, geometry = read_image(adc_path)
    zadc, zadc_geometry = read_image(zadc_path)
    validate_pair(adc, geometry, adc_path, zadc, zadc_geometry, zadc_path)
    return adc, zadc, geometry
