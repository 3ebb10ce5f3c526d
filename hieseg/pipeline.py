"""One library call per case: ``Segmenter(model_dir).segment_case(case)``; the CLIs are thin layers over it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, domain, preprocess
from .cases import Case
from .ensemble import LoadedMember, load_members, member_providers, member_rows, run_ensemble
from .io import Geometry, image_from_array, json_bytes, read_image
from .manifest import Manifest, load_manifest
from .postprocess import postprocess
from .report import lesion_statistics
from .validate import validate_pair
from .writer import OutputSet

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
    domain: domain.DomainCheck = field(default_factory=domain.DomainCheck)


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
                timings: dict[str, float] | None = None,
                guard: domain.DomainCheck | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mask (uint8) and fused probability (float32) on the native grid of a validated ADC / Z-ADC pair.

        ``guard`` is the domain guard's verdict on the pair (computed here when not given): members run at its
        spacing on out-of-domain axes; implausible intensities raise InputError.
        """
        timings = {} if timings is None else timings
        prob = self.fused_probability(adc, zadc, geometry, timings, guard)
        return self.mask_from_probability(prob, adc, geometry, timings), prob

    def fused_probability(self, adc: np.ndarray, zadc: np.ndarray, geometry: Geometry,
                          timings: dict[str, float] | None = None,
                          guard: domain.DomainCheck | None = None) -> np.ndarray:
        spacing = geometry.spacing_zyx
        if guard is None:
            guard = domain.check_case(adc, zadc, spacing, self.manifest.domain)
        crop = preprocess.crop_to_brain(adc, spacing, self.manifest.crop_margin_mm)
        out = run_ensemble([m.runner() for m in self.members], adc, zadc, spacing, crop, guard.run_spacing_zyx)
        if timings is not None:
            timings.update(out.timings)
        return out.probability

    def mask_from_probability(self, prob: np.ndarray, adc: np.ndarray, geometry: Geometry,
                              timings: dict[str, float] | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        mask = postprocess(prob, preprocess.brain_mask(adc), geometry.spacing_zyx, self.manifest.fusion)
        if timings is not None:
            timings["postprocess"] = time.perf_counter() - t0
        return mask.astype(np.uint8)

    def segment_case(self, case: Case) -> CaseResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        adc, geometry = read_image(case.adc)
        zadc, zadc_geometry = read_image(case.zadc)
        t1 = time.perf_counter()
        validate_pair(adc, geometry, case.adc, zadc, zadc_geometry, case.zadc)
        guard = domain.check_case(adc, zadc, geometry.spacing_zyx, self.manifest.domain, case.adc, case.zadc)
        domain.log_check(case.case_id, guard)
        t2 = time.perf_counter()
        timings.update(read=t1 - t0, validate=t2 - t1)
        prob = self.fused_probability(adc, zadc, geometry, timings, guard)
        del zadc  # a full-size float32 array the postprocessing does not need: it bounds the peak on large grids
        mask = self.mask_from_probability(prob, adc, geometry, timings)
        result = CaseResult(case, mask, prob, geometry, adc, timings, domain=guard)
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
            "domain": {**result.domain.to_json(), "training_domain": self.manifest.domain.origin},
            "hieseg_version": __version__,
        }


def write_case_outputs(result: CaseResult, mask_path: Path, report_path: Path | None = None,
                       probability_path: Path | None = None, qc_path: Path | None = None) -> dict[str, Any]:
    """Write a case's files together (see hieseg.writer.OutputSet): each is staged, synced and verified, and
    they are renamed into place only when all are, the report last; on any error none of them appears."""
    t0 = time.perf_counter()
    with OutputSet() as out:
        out.add_image(image_from_array((result.mask > 0).astype(np.uint8), result.geometry), mask_path)
        if probability_path is not None:
            out.add_image(image_from_array(result.probability.astype(np.float32), result.geometry),
                          probability_path)
        if qc_path is not None:
            from .qc import montage_png

            out.add_bytes(montage_png(result.adc, result.mask, title=f"{result.case.case_id}: prediction",
                                      spacing_zyx=result.geometry.spacing_zyx), qc_path)
        report = dict(result.report, outputs={"mask": str(mask_path),
                                              "probability": str(probability_path) if probability_path else None,
                                              "qc": str(qc_path) if qc_path else None})
        result.timings["write"] = time.perf_counter() - t0
        report["seconds"] = _rounded(result.timings)
        report["seconds"]["total"] = round(sum(result.timings.values()), 3)
        if report_path is not None:
            out.add_bytes(json_bytes(report), report_path)
        out.commit()
    result.report = report
    return report


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timings.items()}
