"""One library call per case: ``Segmenter(model_dir).segment_case(case)``, then ``write_outputs``; the CLIs and the
Python API are thin layers over it. Stage timings are returned by each stage and collected in the case's result;
the report is assembled in one place (``Segmenter.case_report``) and written once, with the case's other files.

Memory (issue 24): a case's estimated peak is checked against the memory limit on its headers, before any voxel
is read (``check_memory``: one line naming the file, the grid, the estimate and the limit); after validation the
members run on the brain's box only, and post-processing and statistics stay on that box, so the full-resolution
arrays held are the ADC, the Z-ADC until the box is cut out of it, and the uint8 mask (the native probability map
is built only when asked for). The resident-set size after each stage and the process's peak go in the report.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
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
from hieseg.engine.memory import GIB, MemoryModel, check_fits, estimate_case_bytes, memory_limit, memory_model
from hieseg.engine.postprocess import postprocess
from hieseg.engine.providers import CUDA, ProviderPlan, default_threads, gpu_versions, provider_plan
from hieseg.files import OutputSet
from hieseg.inputs import domain
from hieseg.inputs.cases import Case
from hieseg.inputs.io import Geometry, image_from_array, image_suffix, json_bytes, read_image
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


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark so far (getrusage's ru_maxrss: KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_bytes() -> int | None:
    """This process's resident-set size now (/proc/self/statm), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def _gib(n: int | None) -> float | None:
    return None if n is None else round(n / GIB, 3)


def image_grid(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]] | None:
    """The (z, y, x) size and spacing of a 3D image from its header alone (no voxel is read); None when the
    header cannot be read or is not 3D: reading the image says why, in its own words (hieseg.inputs.io)."""
    import SimpleITK as sitk

    if not path.is_file() or image_suffix(path) is None:
        return None
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size, spacing = reader.GetSize(), reader.GetSpacing()
    except RuntimeError:
        return None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if len(size) != 3 or len(spacing) != 3 or min(size) < 1:
        return None
    return (tuple(int(v) for v in reversed(size)),  # type: ignore[return-value]
            tuple(float(v) for v in reversed(spacing)))


def check_case_memory(case: Case, on_gpu: bool = False, model: MemoryModel | None = None) -> dict[str, Any]:
    """Refuse a case that cannot fit before its voxels are read: each image's grid from its header, its
    estimated peak (hieseg.engine.memory) against the memory limit; raises CaseTooLarge, one line naming the
    file, its grid, the estimate and the limit. Returns the report's memory figures (GiB; None: unknown).

    Needs no sessions, only the manifest's view of the members (``model``; default: the bundled model's):
    ``inference.py`` calls it before the sessions are built (``on_gpu=True``, the smaller estimate, refuses in
    seconds what cannot fit on any provider), ``segment_case`` again on its provider."""
    found = memory_limit()
    limit, source = found if found is not None else (None, None)
    need = None
    for path in (case.adc, case.zadc):
        grid = image_grid(Path(path))
        if grid is None:
            continue  # an unreadable header: reading the image says why
        need = max(need or 0, check_fits(*grid, limit, path=path, limit_source=source, on_gpu=on_gpu, model=model))
    return {"estimate_gib": _gib(need), "limit_gib": _gib(limit), "limit_source": source}


@dataclass
class CaseResult:
    """One segmented case: mask on the native grid, the fused probability on the brain's box (``crop`` of the
    native grid; ``probability`` puts it on the native grid when asked for), and what its report is made of."""

    case: Case
    mask: np.ndarray  # uint8 {0, 1}, native grid (z, y, x)
    probability_crop: np.ndarray  # float32 fused probability inside ``crop``; 0 outside it
    crop: tuple[slice, slice, slice]
    geometry: Geometry
    adc: np.ndarray
    timings: dict[str, float]  # seconds per stage, in the order they ran
    domain: domain.DomainCheck
    statistics: dict[str, Any]  # report.lesion_statistics of the mask
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)  # estimate, limit, RSS after each stage

    @property
    def probability(self) -> np.ndarray:
        """The fused probability on the native grid (float32; a new full-size array on each call)."""
        out = np.zeros(self.geometry.shape_zyx, dtype=np.float32)
        out[self.crop] = self.probability_crop
        return out


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
        self.memory_model: MemoryModel = memory_model(self.manifest)  # the estimate's view of the members, once
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

    def segment(self, adc: np.ndarray, zadc: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """Mask (uint8) and fused probability (float32) on the native grid of an ADC / Z-ADC pair on one grid:
        ``segment_pair`` on arrays."""
        case = Case("arrays", Path("adc"), Path("zadc"), "mask")
        result = self.segment_pair(case, lambda: (adc, geometry, zadc, geometry))
        return result.mask, result.probability

    def check_memory(self, case: Case) -> dict[str, Any]:
        """``check_case_memory`` on this Segmenter's provider (activations in GPU memory on CUDA)."""
        return check_case_memory(case, on_gpu=self.plan.provider == CUDA, model=self.memory_model)

    def segment_case(self, case: Case) -> CaseResult:
        """One case from its files to mask, probability and report statistics (its memory checked first)."""
        memory = self.check_memory(case)
        result = self.segment_pair(case, lambda: (*read_image(case.adc), *read_image(case.zadc)))
        result.memory = {**memory, **result.memory}
        return result

    def segment_pair(self, case: Case, load: Callable[[], Pair]) -> CaseResult:
        """One case from the pair ``load()`` returns (timed as 'read'; ``case.adc`` and ``case.zadc`` name the
        images in messages): validated, guarded, segmented, its statistics computed.

        After validation only the brain's box (``crop_to_brain``) of the Z-ADC is kept; the members, the fusion,
        the post-processing and the statistics run on that box (every brain voxel is inside it and the
        probability outside it is 0, so the mask is the one the native grid gives, bit for bit), and the mask is
        put back on the native grid (uint8) last."""
        rss: dict[str, float | None] = {}
        (adc, geometry, zadc, zadc_geometry), read_seconds = timed(load)
        rss["read"] = _gib(rss_bytes())
        t0 = time.perf_counter()
        validate_pair(adc, geometry, case.adc, zadc, zadc_geometry, case.zadc)
        guard = domain.check_case(adc, zadc, geometry.spacing_zyx, self.manifest.domain, case.adc, case.zadc)
        domain.log_check(case.case_id, guard)
        timings = {"read": read_seconds, "validate": time.perf_counter() - t0}
        rss["validate"] = _gib(rss_bytes())
        t0 = time.perf_counter()
        crop = preprocess.crop_to_brain(adc, geometry.spacing_zyx, self.manifest.crop_margin_mm)
        # the box as copies: the full-size Z-ADC is released here (it bounds the peak on large grids)
        adc_box, zadc_box = np.ascontiguousarray(adc[crop]), np.ascontiguousarray(zadc[crop])
        del zadc
        whole = tuple(slice(0, n) for n in adc_box.shape)
        timings["crop"] = time.perf_counter() - t0
        rss["crop"] = _gib(rss_bytes())
        out = run_ensemble([m.runner() for m in self.members], adc_box, zadc_box, geometry.spacing_zyx, whole,
                           guard.run_spacing_zyx)
        del zadc_box
        timings.update(out.timings)
        rss["ensemble"] = _gib(rss_bytes())
        prob, spacing = out.probability, geometry.spacing_zyx
        # Outside the box there is no brain and the probability is 0, below every threshold (the manifest's is
        # > 0): the mask on the box, put back on the native grid, is the native grid's, bit for bit.
        brain_box = preprocess.brain_mask(adc_box)
        del adc_box
        mask_box, timings["postprocess"] = timed(postprocess, prob, brain_box, spacing, self.manifest.mask_rule)
        statistics, timings["report"] = timed(lesion_statistics, mask_box, brain_box, spacing)
        del brain_box
        t0 = time.perf_counter()
        mask = np.zeros(geometry.shape_zyx, dtype=np.uint8)
        mask[crop] = mask_box
        timings["restore"] = time.perf_counter() - t0
        rss["postprocess"] = _gib(rss_bytes())
        return CaseResult(case, mask, prob, crop, geometry, adc, timings, guard, statistics,
                          {"rss_after_gib": rss})

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
            "memory": self.memory_report(result),
            "hieseg_version": __version__,
        }
        if outputs is not None:
            report["outputs"] = outputs.to_json()
        report["seconds"] = {**{k: round(v, 3) for k, v in timings.items()}, "total": round(sum(timings.values()), 3)}
        return report

    def memory_report(self, result: CaseResult) -> dict[str, Any]:
        """The report's ``memory``: the process's peak resident set so far (ru_maxrss: in a multi-case run the
        largest case's so far; assembled after the images are staged, so it includes writing them), the case's
        estimate and the limit it was checked against (GiB; None where unknown), the RSS after each stage."""
        memory = dict(result.memory)
        if "estimate_gib" not in memory:  # a pair given as arrays (API): estimated from its grid, not checked
            found = memory_limit()
            memory["estimate_gib"] = _gib(estimate_case_bytes(result.geometry.shape_zyx,
                                                              result.geometry.spacing_zyx,
                                                              on_gpu=self.plan.provider == CUDA,
                                                              model=self.memory_model))
            memory["limit_gib"], memory["limit_source"] = ((None, None) if found is None
                                                           else (_gib(found[0]), found[1]))
        return {"peak_rss_gib": _gib(peak_rss_bytes()), **memory}

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
    mask = result.mask if result.mask.dtype == np.uint8 else (result.mask > 0).astype(np.uint8)  # {0, 1}
    staged.add_image(image_from_array(mask, result.geometry), outputs.mask)
    if outputs.probability is not None:
        staged.add_image(image_from_array(result.probability, result.geometry), outputs.probability)
    if outputs.qc is not None:
        from hieseg.outputs.qc import montage_png

        staged.add_bytes(montage_png(result.adc, result.mask, title=f"{result.case.case_id}: prediction",
                                     spacing_zyx=result.geometry.spacing_zyx), outputs.qc)
