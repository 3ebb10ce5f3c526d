"""One library call per case: ``Segmenter(model_dir).segment_case(case)``; the CLIs are thin layers over it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, preprocess
from .cases import Case
from .ensemble import LoadedMember, load_members, member_providers, member_rows, run_ensemble
from .io import Geometry, read_image, write_image, write_json, write_mask
from .manifest import Manifest, load_manifest
from .postprocess import postprocess
from .report import lesion_statistics
from .validate import validate_pair

log = logging.getLogger(__name__)


@dataclass
class CaseResult:
    case: Case
    mask: np.ndarray  # uint8 {0, 1}, native grid (z, y, x)
    probability: np.ndarray  # float32 fused probability, native grid
    geometry: Geometry
    adc: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


class Segmenter:
    """The ensemble described by a model folder's manifest, with its sessions built once per process."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "auto",
                 gpu_mem_limit_bytes: int | None = None, threads: int | None = None) -> None:
        t0 = time.perf_counter()
        # Checksums are verified on the very bytes each session is built from (see sessions.read_verified).
        self.manifest: Manifest = load_manifest(model_dir, verify=False)
        self.members: list[LoadedMember] = load_members(self.manifest, device, gpu_mem_limit_bytes, threads)
        self.device = device
        self.load_seconds = time.perf_counter() - t0
        log.info("model %s %s: %d members loaded in %.2f s", self.manifest.name, self.manifest.version,
                 len(self.members), self.load_seconds)

    @property
    def providers(self) -> dict[str, str]:
        return member_providers(self.members)

    def segment(self, adc: np.ndarray, zadc: np.ndarray, geometry: Geometry,
                timings: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mask (uint8) and fused probability (float32) on the native grid of a validated ADC / Z-ADC pair."""
        timings = {} if timings is None else timings
        spacing = geometry.spacing_zyx
        crop = preprocess.crop_to_brain(adc, spacing, self.manifest.crop_margin_mm)
        prob = run_ensemble(self.members, adc, zadc, spacing, crop, timings)
        t0 = time.perf_counter()
        mask = postprocess(prob, preprocess.brain_mask(adc), spacing, self.manifest.fusion).astype(np.uint8)
        timings["postprocess"] = time.perf_counter() - t0
        return mask, prob

    def segment_case(self, case: Case) -> CaseResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        adc, geometry = read_image(case.adc)
        zadc, zadc_geometry = read_image(case.zadc)
        t1 = time.perf_counter()
        validate_pair(adc, geometry, case.adc, zadc, zadc_geometry, case.zadc)
        t2 = time.perf_counter()
        timings.update(read=t1 - t0, validate=t2 - t1)
        mask, prob = self.segment(adc, zadc, geometry, timings)
        result = CaseResult(case, mask, prob, geometry, adc, timings)
        t3 = time.perf_counter()
        result.report = self.case_report(result)
        timings["report"] = time.perf_counter() - t3
        return result

    def case_report(self, result: CaseResult) -> dict[str, Any]:
        stats = lesion_statistics(result.mask > 0, preprocess.brain_mask(result.adc), result.geometry.spacing_zyx)
        return {
            "case_id": result.case.case_id,
            "inputs": {"adc": str(result.case.adc), "zadc": str(result.case.zadc)},
            **stats,
            "members": member_rows(self.members),
            "model": self.manifest.summary(),
            "threshold": self.manifest.fusion.threshold,
            "geometry": result.geometry.to_json(),
            "hieseg_version": __version__,
        }


def write_case_outputs(result: CaseResult, mask_path: Path, report_path: Path | None = None,
                       probability_path: Path | None = None, qc_path: Path | None = None) -> dict[str, Any]:
    """Write a case's files (each atomically); the report records seconds per stage, writing included."""
    t0 = time.perf_counter()
    write_mask(result.mask, result.geometry, mask_path)
    if probability_path is not None:
        write_image(result.probability.astype(np.float32), result.geometry, probability_path)
    if qc_path is not None:
        from .qc import write_montage

        write_montage(result.adc, result.mask, qc_path, title=f"{result.case.case_id}: prediction",
                      spacing_zyx=result.geometry.spacing_zyx)
    report = dict(result.report, outputs={"mask": str(mask_path),
                                          "probability": str(probability_path) if probability_path else None,
                                          "qc": str(qc_path) if qc_path else None})
    if report_path is not None:
        write_json(report, report_path)
    result.timings["write"] = time.perf_counter() - t0
    report["seconds"] = _rounded(result.timings)
    report["seconds"]["total"] = round(sum(result.timings.values()), 3)
    if report_path is not None:  # the same content, now with the write stage timed
        write_json(report, report_path)
    result.report = report
    return report


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timings.items()}
