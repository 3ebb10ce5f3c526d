"""Image I/O and geometry: every file read or written by hieseg goes through here.

Arrays are numpy in SimpleITK's index order reversed, i.e. (z, y, x); geometry keeps SimpleITK's (x, y, z)
conventions so that it can be put back on an image unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hieseg.errors import InputError
from hieseg.files import write_bytes_atomic, write_image_atomic
from hieseg.inputs.imagecheck import explain, precheck, too_many_voxels

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".mha", ".nii")

# Real ADC / Z-ADC pairs differ by ~1e-4 mm of origin rounding; anything a hundred times larger than that
# is still far below a voxel but catches a genuinely different grid.
ORIGIN_ATOL_MM = 1e-2
SPACING_RTOL = 1e-4
DIRECTION_ATOL = 1e-4


def image_suffix(path: str | Path) -> str | None:
    """The supported image suffix of ``path`` ('.nii.gz', '.mha', '.nii'), or None."""
    name = str(path).lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_suffix(path: str | Path) -> str:
    """File name without its image suffix: 'a/b.nii.gz' -> 'b'."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


@dataclass(frozen=True)
class Geometry:
    """Physical grid of a 3D image, in SimpleITK's (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.size))  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(reversed(self.spacing))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def differences(self, other: "Geometry") -> list[str]:
        """What differs beyond rounding between two grids; empty when they describe the same grid."""
        diffs = []
        if self.size != other.size:
            diffs.append(f"size {self.size} vs {other.size}")
        if not np.allclose(self.spacing, other.spacing, rtol=SPACING_RTOL, atol=0):
            diffs.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_ATOL_MM):
            diffs.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_ATOL):
            diffs.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return diffs

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (N, 3) in (x, y, z) order to physical points (N, 3) in mm."""
        d = np.asarray(self.direction).reshape(3, 3)
        return np.asarray(self.origin) + (np.asarray(index_xyz) * np.asarray(self.spacing)) @ d.T

    def to_json(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def read_image(path: str | Path, dtype: type | None = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read a 3D scalar image as a (z, y, x) array of ``dtype`` (None: the file's own pixel type) and its geometry.

    Raises InputError (naming the file) for a missing, unsupported, unreadable, non-3D or non-scalar image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if image_suffix(path) is None:
        raise InputError(path, f"unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    problem = precheck(path)  # empty, header-only, truncated, missing data file: before ITK reads anything
    if problem:
        raise InputError(path, f"cannot read image: {problem}")
    image = _read_with_itk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
    if image.GetDimension() != 3:
        raise InputError(path, f"expected a 3D image, got {image.GetDimension()}D of size {image.GetSize()}")
    try:
        array = sitk.GetArrayFromImage(image)
        if dtype is not None:
            array = array.astype(dtype, copy=False)
    except RuntimeError as exc:
        raise InputError(path, f"cannot read image: {explain(path, exc)}") from None
    return array, Geometry.of(image)


def _read_with_itk(path: Path) -> sitk.Image:
    """The image, its header checked first (voxel limit); failures explained in words (hieseg.inputs.imagecheck)."""
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings name its source files; our errors say why
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        problem = too_many_voxels(reader.GetSize(), reader.GetNumberOfComponents())
        if problem:
            raise InputError(path, f"cannot read image: {problem}")
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read image: {explain(path, exc)}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)


def image_from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) array with exactly ``geometry``."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    return geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, compress: bool = True) -> Path:
    """Write a (z, y, x) array with ``geometry`` atomically, synced and verified (see hieseg.files)."""
    return write_image_atomic(image_from_array(array, geometry), path, compress)


def write_mask(mask: np.ndarray, geometry: Geometry, path: str | Path, compress: bool = True) -> Path:
    """Write a binary mask as uint8 {0, 1} with exactly ``geometry``."""
    return write_image((np.asarray(mask) > 0).astype(np.uint8), geometry, path, compress)


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically, synced and verified."""
    return write_bytes_atomic(text.encode(), path)


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


def write_json(data: Any, path: str | Path) -> Path:
    return write_bytes_atomic(json_bytes(data), path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
