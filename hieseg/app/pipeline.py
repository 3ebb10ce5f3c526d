"""One library call per case: ``Segmenter(model_dir).segment_case(case)``, then ``write_outputs``; the CLIs and the
Python API are thin layers over it. Stage timings are returned by each stage and collected in the case's result;
the report is assembled in one place (``Segmenter.case_report``) and written once, with the case's other files."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from hieseg.engine import preprocess
from hieseg.engine.ensemble import (
    LoadedMember,
    load_members,
    member_providers,
    member_rows,
    run_ensemble,
)
from hieseg.engine.manifest import Manifest, load_manifest
from hieseg.engine.postprocess import postprocess
from hieseg.engine.providers import CUDA, ProviderPlan, default_threads, gpu_versions, provider_plan
from hieseg.files import OutputSet
from hieseg.inputs import domain
from hieseg.inputs.cases import Case
from hieseg.inputs.io import Geometry, image_from_array, json_bytes, read_image
from hieseg.inputs.validate import validate_pair
from hieseg.outputs.paths import CaseOutputs
from hieseg.outputs.report import lesion_statistics
from hieseg.version import __version__

log = logging.getLogger(__name__)


T = TypeVar("T")
Pair = tuple[np.ndarray, Geometry, np.ndarray, Geometry]  # ADC, its geometry, Z-ADC, its geometry


def timed(func: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``func(*args)`` and the seconds it took."""
    t0 = time.perf_counter()
    value = func(*args)
    return value, time.perf_counter() - t0


@dataclass
class CaseResult:
    """One segmented case: mask and probability on the native grid, and what its report is made of."""

    case: Case
    mask: np.ndarray  # uint8 {0, 1}, native grid (z, y, x)
    probability: np.ndarray  # float32 fused probability, native grid
    geometry: Geometry
    adc: np.ndarray
    timings: dict[str, float]  # seconds per stage, in the order they ran
    domain: domain.DomainCheck
    statistics: dict[str, Any]  # report.lesion_statistics of the mask


def without_flips(manifest: Manifest) -> Manifest:
    """The fast mode's model: every member on the identity only (no flip TTA). docs/benchmark.md measures what it
    saves and what it costs; the manifest's own choice of flips is the default."""
    members = tuple(dataclasses.replace(m, tta_flips=((),)) for m in manifest.members)
    return dataclasses.replace(manifest, members=members)


class Segmenter:
    """The ensemble described by a model folder's manifest, with its sessions built once per process."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "auto",
                 gpu_mem_limit_bytes: int | None = None, threads: int | None = None, precision: str = "auto",
                 fast: bool = False, share: bool | None = None) -> None:
        t0 = time.perf_counter()
        # Checksums are verified on the very bytes each session is built from (see sessions.read_verified).
        self.manifest: Manifest = load_manifest(model_dir, verify=False)
        self.fast = fast
        if fast:
            self.manifest = without_flips(self.manifest)
        # The one provider decision of this Segmenter: every session is built on it, the report names it.
        self.plan: ProviderPlan = provider_plan(device, gpu_mem_limit_bytes,
                                                threads or default_threads(len(self.manifest.members)), precision)
        # share: one session per network (its folds fused) or per member; None: the engine's default (fused under
        # OpenVINO). A seam for parity tests and the benchmark's one-session-per-member row.
        self.members: list[LoadedMember] = load_members(self.manifest, device, share=share, plan=self.plan)
        self.gpu = gpu_versions() if CUDA in self.providers.values() else None  # read once, named in every report
        self.device = device
        self.load_seconds = time.perf_counter() - t0
        log.info("model %s %s: %d members loaded in %.2f s", self.manifest.name, self.manifest.version,
                 len(self.members), self.load_seconds)

    @property
    def engine(self) -> dict[str, Any]:
        """The report's ``engine``: provider, precision, why, threads, fast mode; the NVIDIA driver, CUDA and cuDNN
        versions when a member runs on CUDA."""
        engine = {"provider": self.plan.provider, "precision": self.plan.precision, "why": self.plan.why,
                  "threads": self.plan.threads, "fast": self.fast}
        if self.gpu is not None:
            engine["gpu"] = self.gpu
        return engine

    @property
    def providers(self) -> dict[str, str]:
        return member_providers(self.members)

    def segment(self, adc: np.ndarray, zadc: np.ndarray, geometry: Geometry,
                guard: domain.DomainCheck | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mask (uint8) and fused probability (float32) on the native grid of a validated ADC / Z-ADC pair.

        ``guard`` is the domain guard's verdict on the pair (computed here when not given): members run at its
        spacing on out-of-domain axes; implausible intensities raise InputError.
        """
        prob, _ = self.fused_probability(adc, zadc, geometry, guard)
        return self.mask_from_probability(prob, adc, geometry), prob

    def fused_probability(self, adc: np.ndarray, zadc: np.ndarray, geometry: Geometry,
                          guard: domain.DomainCheck | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """The ensemble's fused probability (float32, native grid) and the seconds of its stages."""
        spacing = geometry.spacing_zyx
        if guard is None:
            guard = domain.check_case(adc, zadc, spacing, self.manifest.domain)
        crop = preprocess.crop_to_brain(adc, spacing, self.manifest.crop_margin_mm)
        out = run_ensemble([m.runner() for m in self.members], adc, zadc, spacing, crop, guard.run_spacing_zyx)
        return out.probability, out.timings

    def mask_from_probability(self, prob: np.ndarray, adc: np.ndarray, geometry: Geometry) -> np.ndarray:
        """The manifest's mask rule applied to a fused probability (uint8 {0, 1})."""
        return postprocess(prob, preprocess.brain_mask(adc), geometry.spacing_zyx,
                           self.manifest.mask_rule).astype(np.uint8)

    def segment_case(self, case: Case) -> CaseResult:
        """One case from its files to mask, probability and report statistics."""
        return self.segment_pair(case, lambda: (*read_image(case.adc), *read_image(case.zadc)))

    def segment_pair(self, case: Case, load: Callable[[], Pair]) -> CaseResult:
        """One case from the pair ``load()`` returns (timed as 'read'; ``case.adc`` and ``case.zadc`` name the
        images in messages): validated, guarded, segmented, its statistics computed."""
        (adc, geometry, zadc, zadc_geometry), read_seconds = timed(load)
        t0 = time.perf_counter()
        validate_pair(adc, geometry, case.adc, zadc, zadc_geometry, case.zadc)
        guard = domain.check_case(adc, zadc, geometry.spacing_zyx, self.manifest.domain, case.adc, case.zadc)
        domain.log_check(case.case_id, guard)
        timings = {"read": read_seconds, "validate": time.perf_counter() - t0}
        prob, ensemble_timings = self.fused_probability(adc, zadc, geometry, guard)
        del zadc  # a full-size float32 array the postprocessing does not need: it bounds the peak on large grids
        timings.update(ensemble_timings)
        mask, timings["postprocess"] = timed(self.mask_from_probability, prob, adc, geometry)
        statistics, timings["report"] = timed(lesion_statistics, mask > 0, preprocess.brain_mask(adc),
                                              geometry.spacing_zyx)
        return CaseResult(case, mask, prob, geometry, adc, timings, guard, statistics)

    def case_report(self, result: CaseResult, outputs: CaseOutputs | None = None,
                    write_seconds: float | None = None) -> dict[str, Any]:
        """The case's report, assembled here only: statistics, members, model, geometry, domain, and, for a case
        being written, its ``outputs`` and the seconds its files took to write; ``seconds`` last."""
        timings = result.timings if write_seconds is None else {**result.timings, "write": write_seconds}
        report = {
            "case_id": result.case.case_id,
            "inputs": {"adc": str(result.case.adc), "zadc": str(result.case.zadc)},
            **result.statistics,
            "engine": self.engine,
            "members": member_rows(self.members),
            "model": self.manifest.summary(),
            "threshold": self.manifest.mask_rule.threshold,
            "geometry": result.geometry.to_json(),
            "domain": {**result.domain.to_json(), "training_domain": self.manifest.domain.origin},
            "hieseg_version": __version__,
        }
        if outputs is not None:
            report["outputs"] = outputs.to_json()
        report["seconds"] = {**{k: round(v, 3) for k, v in timings.items()}, "total": round(sum(timings.values()), 3)}
        return report

    def write_outputs(self, result: CaseResult, outputs: CaseOutputs) -> dict[str, Any]:
        """Write a case's files together (see hieseg.files.OutputSet) and return its report: each is staged,
        synced and verified, and they are renamed into place only when all are, the report last; on any error
        none of them appears."""
        with OutputSet() as staged:
            _, write_seconds = timed(_stage_images, staged, result, outputs)
            report = self.case_report(result, outputs, write_seconds)
            staged.add_bytes(json_bytes(report), outputs.report)
            staged.commit()
        return report


def _stage_images(staged: OutputSet, result: CaseResult, outputs: CaseOutputs) -> None:
    """Stage the mask and, when asked for, the probability map and the QC montage."""
    staged.add_image(image_from_array((result.mask > 0).astype(np.uint8), result.geometry), outputs.mask)
    if outputs.probability is not None:
        staged.add_image(image_from_array(result.probability.astype(np.float32), result.geometry),
                         outputs.probability)
    if outputs.qc is not None:
        from hieseg.outputs.qc import montage_png

        staged.add_bytes(montage_png(result.adc, result.mask, title=f"{result.case.case_id}: prediction",
                                     spacing_zyx=result.geometry.spacing_zyx), outputs.qc)
