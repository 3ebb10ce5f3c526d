"""The Python API: ``hieseg.segment(adc, zadc)`` for one case, ``hieseg.Segmenter`` for many.

Inputs are file paths (``.mha``, ``.nii``, ``.nii.gz``) or ``SimpleITK.Image`` objects; the mask comes back as a
``SimpleITK.Image`` (uint8 0/1) on exactly the ADC's grid (size, spacing, origin, direction), with the report dict
the CLI writes to ``reports/<case>.json`` (volumes, burden class, components, model, providers, seconds).
Bad input raises :class:`hieseg.errors.InputError` (a one-line message naming the file or image).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Union

import numpy as np
import SimpleITK as sitk

from . import pipeline
from .cases import Case, pair_case
from .errors import InputError
from .io import Geometry, read_image
from .validate import validate_pair

ImageLike = Union[str, Path, sitk.Image]


def _image_array(image: sitk.Image, label: Path) -> tuple[np.ndarray, Geometry]:
    """A SimpleITK image as the float32 (z, y, x) array and geometry that ``io.read_image`` gives for a file."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(label, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
    if image.GetDimension() != 3:
        raise InputError(label, f"expected a 3D image, got {image.GetDimension()}D of size {image.GetSize()}")
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False), Geometry.of(image)


def _load(image: ImageLike, what: str) -> tuple[np.ndarray, Geometry, Path]:
    """Array, geometry and the name errors and reports use: the path, or '<adc image>' for an in-memory image."""
    if isinstance(image, sitk.Image):
        label = Path(f"<{what} image>")
        return (*_image_array(image, label), label)
    if isinstance(image, (str, Path)):
        return (*read_image(image), Path(image))
    raise TypeError(f"{what}: expected a path or a SimpleITK.Image, got {type(image).__name__}")


class Segmenter(pipeline.Segmenter):
    """The ensemble with its ONNX Runtime sessions created once, for segmenting many cases in one process.

    >>> seg = hieseg.Segmenter(device="auto")                    # the shipped model (see hieseg.segment)
    >>> for adc, zadc in pairs:
    ...     mask, report = seg(adc, zadc)
    """

    def __init__(self, model: str | Path | None = None, device: str = "auto", *,
                 gpu_mem_limit: int | None = None, threads: int | None = None) -> None:
        """Load the model and build its sessions.

        Args:
            model: model folder with ``manifest.json``; None: ``$HIESEG_MODEL_DIR``, else Grand Challenge's
                ``/opt/ml/model`` when it holds a manifest, else the model shipped with the package.
            device: ``auto`` (CUDA when it really works, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
            gpu_mem_limit: cap in bytes on ONNX Runtime's CUDA memory arena.
            threads: CPU threads per session (default: the CPUs this process may use).
        """
        super().__init__(model, device, gpu_mem_limit, threads)

    def __call__(self, adc: ImageLike, zadc: ImageLike, *, case_id: str | None = None
                 ) -> tuple[sitk.Image, dict[str, Any]]:
        """Segment one case: the mask image (uint8 0/1, the ADC's exact grid) and its report dict.

        Args:
            adc: skull-stripped ADC map (path or SimpleITK image).
            zadc: its Z-ADC map, on the same grid.
            case_id: the report's ``case_id`` (default: from the ADC file name, or 'case' for an image).
        """
        if isinstance(adc, (str, Path)) and isinstance(zadc, (str, Path)):
            case = pair_case(adc, zadc)
            if case_id is not None:
                case = Case(case_id, case.adc, case.zadc, f"{case_id}_lesion")
            result = self.segment_case(case)  # exactly what `hieseg predict` runs on these files
        else:
            result = self._segment_images(adc, zadc, case_id or "case")
        report = dict(result.report)
        report["seconds"] = {k: round(v, 3) for k, v in result.timings.items()}
        report["seconds"]["total"] = round(sum(result.timings.values()), 3)
        mask = np.ascontiguousarray(result.mask, dtype=np.uint8)
        return result.geometry.apply(sitk.GetImageFromArray(mask)), report

    def _segment_images(self, adc: ImageLike, zadc: ImageLike, case_id: str) -> pipeline.CaseResult:
        """``segment_case`` for in-memory images (or a mix of an image and a path)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        adc_array, geometry, adc_label = _load(adc, "adc")
        zadc_array, zadc_geometry, zadc_label = _load(zadc, "zadc")
        t1 = time.perf_counter()
        validate_pair(adc_array, geometry, adc_label, zadc_array, zadc_geometry, zadc_label)
        timings.update(read=t1 - t0, validate=time.perf_counter() - t1)
        mask, prob = self.segment(adc_array, zadc_array, geometry, timings)
        result = pipeline.CaseResult(Case(case_id, adc_label, zadc_label, f"{case_id}_lesion"), mask, prob,
                                     geometry, adc_array, timings)
        t2 = time.perf_counter()
        result.report = self.case_report(result)
        timings["report"] = time.perf_counter() - t2
        return result

    predict = __call__


def segment(adc: ImageLike, zadc: ImageLike, *, model: str | Path | None = None,
            device: str = "auto") -> tuple[sitk.Image, dict[str, Any]]:
    """Segment HIE lesions in one case.

    Args:
        adc: skull-stripped ADC map: a file path or a ``SimpleITK.Image``.
        zadc: its Z-ADC map, on the same grid (path or image).
        model: model folder with ``manifest.json``; None: ``$HIESEG_MODEL_DIR``, else ``/opt/ml/model`` when it
            holds a manifest, else the model shipped with the package.
        device: ``auto`` (CUDA when it really works, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        ``(mask, report)``: the lesion mask as a ``SimpleITK.Image`` (uint8 0/1) with the ADC's size, spacing,
        origin and direction, and the case report (``lesion_volume_ml``, ``burden_class``, ``model``, ...).

    Loads the model for this one call; for many cases create one :class:`Segmenter` and call it per case.
    """
    return Segmenter(model, device)(adc, zadc)


__all__ = ["ImageLike", "Segmenter", "segment"]
