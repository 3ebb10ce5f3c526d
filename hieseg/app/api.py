"""The Python API: ``hieseg.segment(adc, zadc)`` for one case, ``hieseg.Segmenter`` for many.

Inputs are file paths (``.mha``, ``.nii``, ``.nii.gz``) or ``SimpleITK.Image`` objects; the mask comes back as a
``SimpleITK.Image`` (uint8 0/1) on exactly the ADC's grid (size, spacing, origin, direction), with the report dict
the CLI writes to ``reports/<case>.json`` (volumes, burden class, components, model, providers, seconds).
Bad input raises :class:`hieseg.errors.InputError` (a one-line message naming the file or image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import SimpleITK as sitk

from hieseg.app import pipeline
from hieseg.errors import InputError
from hieseg.inputs.cases import Case, pair_case
from hieseg.inputs.io import Geometry, read_image
from hieseg.inputs.naming import mask_stem

ImageLike = Union[str, Path, sitk.Image]


def _image_array(image: sitk.Image, label: Path) -> tuple[np.ndarray, Geometry]:
    """A SimpleITK image as the float32 (z, y, x) array and geometry that ``io.read_image`` gives for a file."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(label, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
    if image.GetDimension() != 3:
        raise InputError(label, f"expected a 3D image, got {image.GetDimension()}D of size {image.GetSize()}")
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False), Geometry.of(image)


def _label(image: ImageLike, what: str) -> Path:
    """The name errors and reports use: the path, or '<adc image>' for an in-memory image."""
    if isinstance(image, sitk.Image):
        return Path(f"<{what} image>")
    if isinstance(image, (str, Path)):
        return Path(image)
    raise TypeError(f"{what}: expected a path or a SimpleITK.Image, got {type(image).__name__}")


def _load(image: ImageLike, label: Path) -> tuple[np.ndarray, Geometry]:
    """Array and geometry of a path or an in-memory image."""
    return _image_array(image, label) if isinstance(image, sitk.Image) else read_image(image)


class Segmenter(pipeline.Segmenter):
    """The ensemble with its sessions created once, for segmenting many cases in one process.

    >>> seg = hieseg.Segmenter(device="auto")                    # the shipped model (see hieseg.segment)
    >>> for adc, zadc in pairs:
    ...     mask, report = seg(adc, zadc)
    """

    def __init__(self, model: str | Path | None = None, device: str = "auto", *,
                 gpu_mem_limit: int | None = None, threads: int | None = None, precision: str = "auto",
                 fast: bool = False) -> None:
        """Load the model and build its sessions.

        Args:
            model: model folder with ``manifest.json``; None: ``$HIESEG_MODEL_DIR``, else Grand Challenge's
                ``/opt/ml/model`` when it holds a manifest, else the model shipped with the package.
            device: ``auto`` (CUDA when it really works, else native OpenVINO when installed, else ONNX Runtime's
                CPU provider), ``cpu`` (ONNX Runtime's CPU provider), ``openvino``, ``cuda`` or ``cuda:N``.
            gpu_mem_limit: cap in bytes on ONNX Runtime's CUDA memory arena.
            threads: CPU threads per session (default: the CPUs this process may use).
            precision: ``auto`` (bf16 on OpenVINO where the CPU has native bf16, else f32), ``bf16`` or ``f32``.
            fast: no flip test-time augmentation (faster, slightly less accurate: docs/benchmark.md).
        """
        super().__init__(model, device, gpu_mem_limit, threads, precision, fast)

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
                case = Case(case_id, case.adc, case.zadc, mask_stem(case_id))
            result = self.segment_case(case)  # exactly what `hieseg predict` runs on these files
        else:
            case_id = case_id or "case"
            case = Case(case_id, _label(adc, "adc"), _label(zadc, "zadc"), mask_stem(case_id))
            result = self.segment_pair(case, lambda: (*_load(adc, case.adc), *_load(zadc, case.zadc)))
        mask = np.ascontiguousarray(result.mask, dtype=np.uint8)
        return result.geometry.apply(sitk.GetImageFromArray(mask)), self.case_report(result)

    predict = __call__


def segment(adc: ImageLike, zadc: ImageLike, *, model: str | Path | None = None,
            device: str = "auto", precision: str = "auto") -> tuple[sitk.Image, dict[str, Any]]:
    """Segment HIE lesions in one case.

    Args:
        adc: skull-stripped ADC map: a file path or a ``SimpleITK.Image``.
        zadc: its Z-ADC map, on the same grid (path or image).
        model: model folder with ``manifest.json``; None: ``$HIESEG_MODEL_DIR``, else ``/opt/ml/model`` when it
            holds a manifest, else the model shipped with the package.
        device: ``auto`` (CUDA when it really works, else native OpenVINO when installed, else ONNX Runtime's CPU
            provider), ``cpu``, ``openvino``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 on OpenVINO where the CPU has native bf16, else f32), ``bf16`` or ``f32``.

    Returns:
        ``(mask, report)``: the lesion mask as a ``SimpleITK.Image`` (uint8 0/1) with the ADC's size, spacing,
        origin and direction, and the case report (``lesion_volume_ml``, ``burden_class``, ``model``, ...).

    Loads the model for this one call; for many cases create one :class:`Segmenter` and call it per case.
    """
    return Segmenter(model, device, precision=precision)(adc, zadc)


__all__ = ["ImageLike", "Segmenter", "segment"]
