"""A synthetic neonatal-brain phantom: the bundled sample case and realistic test data, never a real patient.

ADC values follow neonatal norms in 10^-6 mm²/s (white matter ~1500, cortex ~1150, deep grey ~1050, CSF ~3000,
acute HIE lesions ~550-750); the Z-ADC map is computed against a synthetic normal atlas the way BONBID's was
(ADC smoothed with a 2 mm Gaussian, (ADC - atlas mean) / atlas sd, clipped to [-10, 10], 0 outside the brain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from hieseg.inputs.gc_interface import GC_ADC_DIR, GC_ZADC_DIR
from hieseg.inputs.io import Geometry, write_image

SAMPLE_NAME = "hieseg-sample-phantom.mha"


def rotation_zyx_deg(about_x: float, about_y: float, about_z: float) -> tuple[float, ...]:
    """A row-major 3x3 direction matrix from rotations (degrees) about x, then y, then z."""
    ax, ay, az = np.deg2rad([about_x, about_y, about_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return tuple(float(v) for v in (rz @ ry @ rx).ravel())


@dataclass(frozen=True)
class Lesion:
    """An ellipsoidal lesion centred at a continuous voxel index (x, y, z), radii in mm."""

    center_xyz: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    adc_factor: float = 0.5


@dataclass
class Phantom:
    adc: np.ndarray  # float32 (z, y, x)
    zadc: np.ndarray  # float32 (z, y, x)
    label: np.ndarray  # uint8 (z, y, x)
    geometry: Geometry
    lesions: list[Lesion] = field(default_factory=list)


def _ellipsoid(coords: np.ndarray, center_mm: Sequence[float], radii_mm: Sequence[float]) -> np.ndarray:
    """sum(((p - c) / r)^2) for (3, z, y, x) coordinates in mm ordered (x, y, z)."""
    c = np.asarray(center_mm, dtype=np.float32).reshape(3, 1, 1, 1)
    r = np.asarray(radii_mm, dtype=np.float32).reshape(3, 1, 1, 1)
    return (((coords - c) / r) ** 2).sum(axis=0)


def default_lesions(size: Sequence[int]) -> list[Lesion]:
    """Three lesions of HIE's usual sites: a basal-ganglia focus, a watershed white-matter focus, a small one."""
    cx, cy, cz = (np.asarray(size, dtype=float) - 1) / 2
    return [
        Lesion((cx - 12, cy + 4, cz), (6.0, 7.0, 8.0), 0.55),
        Lesion((cx + 20, cy - 22, cz + 3), (5.0, 4.0, 6.0), 0.5),
        Lesion((cx - 22, cy + 26, cz - 2), (3.0, 3.0, 4.0), 0.6),
    ]


def make_phantom(
    size: Sequence[int] = (112, 112, 22),
    spacing: Sequence[float] = (1.6, 1.5, 4.5),
    origin: Sequence[float] = (-88.3, -101.7, -37.9),
    direction: Sequence[float] | None = None,
    lesions: Sequence[Lesion] | None = None,
    seed: int = 2023,
) -> Phantom:
    """A skull-stripped neonatal ADC map, its Z-ADC map and the lesion label on an (oblique) grid."""
    rng = np.random.default_rng(seed)
    direction = tuple(direction) if direction is not None else rotation_zyx_deg(11.0, -6.0, 8.0)
    geometry = Geometry(tuple(int(v) for v in size), tuple(float(v) for v in spacing),
                        tuple(float(v) for v in origin), direction)  # type: ignore[arg-type]
    lesions = list(default_lesions(size) if lesions is None else lesions)
    nx, ny, nz = geometry.size
    # Millimetre coordinates (x, y, z) of voxel centres, relative to the grid centre, shape (3, z, y, x).
    grid = np.stack(np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")[::-1]).astype(np.float32)
    centre = (np.array([nx, ny, nz], dtype=np.float32) - 1) / 2
    coords = (grid - centre.reshape(3, 1, 1, 1)) * np.asarray(spacing, dtype=np.float32).reshape(3, 1, 1, 1)

    brain_r = (min(44.0, 0.42 * nx * spacing[0]), min(54.0, 0.42 * ny * spacing[1]), min(40.0, 0.45 * nz * spacing[2]))
    outer = _ellipsoid(coords, (0, 0, 0), brain_r)
    inner = _ellipsoid(coords, (0, 0, 0), [r - 5.0 for r in brain_r])
    tissue = np.zeros(outer.shape, dtype=np.float32)
    tissue[outer <= 1] = 2900.0  # extra-axial CSF rim
    tissue[(outer <= 0.93)] = 1150.0  # cortex
    tissue[inner <= 1] = 1500.0  # unmyelinated neonatal white matter
    for side in (-1, 1):
        tissue[_ellipsoid(coords, (side * 13, 4, 2), (9, 12, 9)) <= 1] = 1050.0  # thalami / basal ganglia
        tissue[_ellipsoid(coords, (side * 8, -8, 8), (3.5, 14, 6)) <= 1] = 3000.0  # lateral ventricles
    brain = outer <= 1

    normal = ndimage.gaussian_filter(tissue, sigma=[1.2 / s for s in reversed(spacing)])
    bias = ndimage.gaussian_filter(rng.standard_normal(tissue.shape).astype(np.float32), sigma=[6, 12, 12])
    adc = normal * (1 + 0.6 * bias / (np.abs(bias).max() + 1e-6) * 0.1)
    label = np.zeros(tissue.shape, dtype=bool)
    for lesion in lesions:
        centre_mm = (np.asarray(lesion.center_xyz) - centre) * np.asarray(spacing)
        inside = (_ellipsoid(coords, centre_mm, lesion.radii_mm) <= 1) & brain
        label |= inside
        adc = np.where(inside, adc * lesion.adc_factor, adc)
    adc = adc + rng.normal(0.0, 35.0, adc.shape).astype(np.float32)
    adc = np.where(brain, np.clip(adc, 50.0, 4095.0), 0.0).astype(np.float32)

    # The atlas: the same anatomy without lesions or noise; its sd grows with the mean as real atlases do.
    sigma_vox = [2.0 / s for s in reversed(spacing)]
    atlas_mean = ndimage.gaussian_filter(normal, sigma_vox)
    atlas_sd = 0.08 * atlas_mean + 25.0
    smooth = ndimage.gaussian_filter(adc, sigma_vox)
    zadc = np.where(brain, np.clip((smooth - atlas_mean) / atlas_sd, -10.0, 10.0), 0.0).astype(np.float32)
    return Phantom(adc, zadc, label.astype(np.uint8), geometry, lesions)


def write_sample(output: str | Path, seed: int = 2023) -> list[Path]:
    """Write the sample case in the Grand Challenge input layout under ``output``."""
    output = Path(output)
    phantom = make_phantom(seed=seed)
    return [
        write_image(phantom.adc, phantom.geometry, output / GC_ADC_DIR / SAMPLE_NAME),
        write_image(phantom.zadc, phantom.geometry, output / GC_ZADC_DIR / SAMPLE_NAME),
    ]
