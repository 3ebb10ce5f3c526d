"""Know the memory limit before hitting it: the container's limit, a case's estimated peak, and the refusal.

A case that cannot fit must be refused in one line before its image data is read, never end in an OOM kill with
half-written output (issue 24, item 3). Pure functions:

- ``memory_limit_bytes()``: the smallest of the cgroup limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``,
  also along this process's own cgroup path), the RLIMIT_AS / RLIMIT_DATA soft limits and the physical memory.
- ``estimate_case_bytes(shape_zyx, spacing_zyx, model=memory_model(manifest))``: a conservative (upper-bound)
  estimate of the peak resident memory of one case, from its grid alone (the image header) and the model's
  members as its manifest describes them (tiling, target spacing, domain): the model and interpreter, plus the
  larger of two phases: reading (the ADC, the Z-ADC and SimpleITK's copy of it while it is read) and running (the
  full-resolution arrays kept, each member's work on the model grid, and ONNX Runtime's activations for the
  largest tile).
- ``check_fits(shape_zyx, spacing_zyx, limit)``: raises ``CaseTooLarge`` (an ``InputError`` and a
  ``MemoryError``) with one line naming the grid, its voxels, the estimate and the limit.

Calibration (development machine, CPU provider, onnxruntime 1.24.4, the shipped 10-member ``cv5`` model, shared
CPU arena; peak RSS of ``/usr/bin/time -v .venv/bin/python inference.py --input ... --output ...``), 2026-12-06:

===========================================================  ===========  ==========
run                                                          peak RSS     estimate
===========================================================  ===========  ==========
interpreter + numpy / scipy / SimpleITK / onnxruntime        162 MiB
+ the 10 sessions loaded (``Segmenter("model")``)            255 MiB
bundled sample, 112 x 112 x 22 at 1.6 / 1.5 / 4.5 mm         519 MiB      0.99 GiB
real case MGHNICU_014, 128 x 128 x 23 at 1.56 / 1.56 / 4 mm  631 MiB      1.16 GiB
512 x 512 x 300 at 0.5 mm (MGHNICU_014 resampled), 36 s      1.42 GiB     1.97 GiB
the same on OpenVINO bf16 (the default CPU engine), 11 s     1.24 GiB     1.97 GiB
===========================================================  ===========  ==========

(The huge case took 4.9-5.1 GB at a4d4bdd, before issue 24's fix, 1.77 GiB on ONNX Runtime at cdb4db5 and
1.59 GiB on OpenVINO at 73b7a7a; 1.42 / 1.24 GiB once the pipeline ran the members, the post-processing and the
statistics on the brain's box and kept neither the full-size Z-ADC nor the native probability map.)
The estimate is above every measurement by design: the model constant covers the CUDA provider's host side too,
and the tile term assumes the largest brain crop of the training cases plus margin, not this case's crop.
``CALIBRATION`` holds these numbers; the tests check that the estimate stays above them.
"""

from __future__ import annotations

import logging
import math
import os
import resource
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from hieseg.engine.manifest import Manifest, load_manifest
from hieseg.errors import InputError
from hieseg.inputs.domain import member_spacing

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages: 2^63 - 4096 with 4 KiB pages, 2^63 - 65536 with 64 KiB
# pages (some kernels print other values just below 2^63). No real limit comes near 2^62 bytes (4 EiB).
V1_UNLIMITED_FROM = 1 << 62

# ---- the estimate's constants ----------------------------------------------------------------------------------
# What the process holds whatever the case: the interpreter, the libraries and the sessions. Measured 255 MiB on
# ONNX Runtime's CPU provider (10 sessions, 162 MiB of it the imports), ~0.35 GiB on OpenVINO (2 fused sessions,
# RSS after reading minus the two arrays on the 512 x 512 x 300 case); the CUDA provider adds its host side (CUDA
# context, cuDNN / cuBLAS code, staging buffers), not measured here, and its activations are in GPU memory (the
# activation term, >= 0.5 GiB on any real grid, is left out there). Taken: 0.45 GiB, for every provider.
MODEL_RESIDENT_BYTES = int(0.45 * GIB)

# Bytes per native voxel while the pair is read (no member has run yet): the ADC and the Z-ADC as float32 and
# SimpleITK's own copy of the Z-ADC until it is converted, 12 B, and validation's bool temporaries. Measured
# 12.2 B/voxel on the 512 x 512 x 300 case (OpenVINO: 1.24 GiB peak at the read, 0.35 GiB model). Taken: 14 B.
READ_BYTES_PER_VOXEL = 14

# Bytes per voxel of the native grid while the members run and the outputs are written: the pipeline keeps the ADC
# (float32) and the uint8 mask at full resolution, the writer's copy of the mask and its read-back come and go;
# the Z-ADC, the fused probability, the post-processing and the statistics live on the brain's box only (its
# copies are within the activation term's slack). Taken: 8 B. Before issue 24's fix the pipeline held ~60 B/voxel
# (5 GB on the 512 x 512 x 300 case).
NATIVE_BYTES_PER_VOXEL = 8

# Bytes per voxel of the model grid (the crop resampled to the member spacing): the prepared inputs of the two
# member kinds (2 + 3 float32 channels, 20 B), the resampling's per-axis temporaries (8 B), the member's
# probability, its flip-TTA sum and the tiled inference's accumulator and weights (16 B): 44 B; 48 B taken.
MODEL_GRID_BYTES_PER_VOXEL = 48

# ONNX Runtime's CPU activations per voxel of one forward pass, for the largest tile of any member (the sessions
# share one CPU arena, so the peak is the largest member's, not the sum). Measured: one member of the shipped model
# on random input, peak RSS minus the loaded model. 3D U-Net (2 channels): 373-408 B/voxel after one pass
# (16x128x128 .. 64x256x256), 724-744 B/voxel after repeated passes (24x152x152, 64x256x256: the arena grows in
# power-of-two steps). 2D U-Net++ (3 channels), per voxel of the batch (slices x rows x columns): 1414-1665 B/voxel
# after one pass (16 slices of 64^2 .. 256^2), 2733-2797 B/voxel after repeated passes (16 x 128^2, 16 x 256^2).
# Taken: the repeated-pass figures rounded up. With the CUDA provider the activations live in GPU memory
# (``on_gpu=True`` leaves them out). Without the shared arena (an older onnxruntime) each session keeps its own
# peak and this term would grow with the member count.
ACTIVATION_BYTES_PER_VOXEL_3D = 768
ACTIVATION_BYTES_PER_VOXEL_2D = 2816

# The tiling (patch, padding, batch, target spacing) of each member kind and the training domain's spacing range
# come from the model's manifest (``memory_model``): the domain guard runs every member at the nearest spacing
# inside that range, so a finer grid is coarsened and a coarser one refined. Only the activation figures above
# are per architecture (kind), measured on the shipped networks.
ACTIVATION_BYTES_PER_VOXEL = {"3d": ACTIVATION_BYTES_PER_VOXEL_3D, "2d": ACTIVATION_BYTES_PER_VOXEL_2D}

# The members see the brain's bounding box plus the crop margin (8 mm), never more of the field of view. Over the
# 40 training cases that box spans at most 120 / 143 / 126 mm (z / y / x; medians 106 / 132 / 110 mm); the
# 512 x 512 x 300 case's box spans 106 / 135 / 120 mm. Taken: 176 mm per axis (the largest plus 23 %). An input
# that is not skull-stripped (background > 0) has a larger box; pass ``crop_extent_mm=None`` for no credit.
MAX_CROP_EXTENT_MM = (176.0, 176.0, 176.0)

# The measurements above (peak RSS, MiB) with their grids: the tests assert the estimate stays above each.
CALIBRATION: dict[str, dict[str, object]] = {
    "sample": {"shape_zyx": (22, 112, 112), "spacing_zyx": (4.5, 1.5, 1.6), "peak_mib": 519},
    "real_MGHNICU_014": {"shape_zyx": (23, 128, 128), "spacing_zyx": (4.0, 1.5625, 1.5625), "peak_mib": 631},
    "huge_512x512x300_0.5mm": {"shape_zyx": (300, 512, 512), "spacing_zyx": (0.5, 0.5, 0.5), "peak_mib": 1455},
}


@dataclass(frozen=True)
class Tiling:
    """How members of one kind run, as far as memory goes (from their manifest entries): the spacing they
    resample to (None: the guard's spacing on that axis), the tile, its padding and the tiles (3d) or slices (2d)
    per forward pass."""

    kind: str
    target_spacing_zyx: tuple[float | None, float | None, float | None]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]
    batch_size: int


@dataclass(frozen=True)
class MemoryModel:
    """What the estimate needs to know of a model: its members' distinct tilings and its domain's spacing range."""

    tilings: tuple[Tiling, ...]
    spacing_min_zyx: tuple[float, float, float]
    spacing_max_zyx: tuple[float, float, float]


def memory_model(manifest: Manifest) -> MemoryModel:
    """The estimate's view of ``manifest``: one Tiling per distinct member tiling, in member order."""
    tilings: dict[Tiling, None] = {}
    for m in manifest.members:
        tilings[Tiling(m.kind, m.target_spacing_zyx, m.patch_size, m.divisible_by, m.batch_size)] = None
    return MemoryModel(tuple(tilings), manifest.domain.spacing_min_zyx, manifest.domain.spacing_max_zyx)


@lru_cache(maxsize=1)
def bundled_memory_model() -> MemoryModel:
    """The bundled model's (its manifest read, its weights not checked): the default of the estimate."""
    return memory_model(load_manifest(verify=False))


class CaseTooLarge(InputError, MemoryError):
    """A case whose estimated peak memory exceeds the memory limit (refused before its data is read)."""


# ---- the limit -------------------------------------------------------------------------------------------------


def _read_limit(path: Path, unlimited_from: int | None = None) -> int | None:
    """A cgroup memory limit file: bytes, or None for 'max', a value >= ``unlimited_from``, or no readable file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        log.debug("%s: not a memory limit: %r", path, text[:40])
        return None
    if value <= 0 or (unlimited_from is not None and value >= unlimited_from):
        return None
    return value


def _own_cgroup_paths(self_cgroup: Path | None) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's memory controller (from /proc/self/cgroup)."""
    v2 = v1 = None
    if self_cgroup is None:
        return v2, v1
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _along(base: Path, cgroup_path: str | None) -> list[Path]:
    """``base`` and the folders from it down to this process's cgroup (each level's limit applies)."""
    folders = [base]
    if cgroup_path:
        current = base
        for part in Path(cgroup_path.strip("/")).parts:
            if part in ("", ".", ".."):
                continue
            current = current / part
            folders.append(current)
    return folders


def cgroup_limit_bytes(root: Path = CGROUP_ROOT, self_cgroup: Path | None = PROC_SELF_CGROUP) -> int | None:
    """The cgroup memory limit (bytes), or None when there is none.

    cgroup v2: ``root/memory.max`` ("max": no limit), and the ``memory.max`` of every level down to this
    process's cgroup (``0::/path`` in ``self_cgroup``), for hosts without a cgroup namespace. cgroup v1:
    ``root/memory/memory.limit_in_bytes`` (values near 2^63: no limit) and the same along the memory
    controller's path. The smallest limit found wins.
    """
    v2_path, v1_path = _own_cgroup_paths(self_cgroup)
    limits = [_read_limit(folder / "memory.max") for folder in _along(root, v2_path)]
    limits += [_read_limit(folder / "memory.limit_in_bytes", V1_UNLIMITED_FROM)
               for folder in _along(root / "memory", v1_path)]
    found = [v for v in limits if v is not None]
    return min(found) if found else None


def rlimit_bytes() -> int | None:
    """The smaller of the RLIMIT_AS and RLIMIT_DATA soft limits (address space bounds resident memory too)."""
    found = []
    for name in ("RLIMIT_AS", "RLIMIT_DATA"):
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            soft, _ = resource.getrlimit(which)
        except (OSError, ValueError):
            continue
        if soft != resource.RLIM_INFINITY and soft > 0:
            found.append(int(soft))
    return min(found) if found else None


def physical_memory_bytes() -> int | None:
    """The machine's physical memory (SC_PHYS_PAGES x SC_PAGE_SIZE), or None where sysconf cannot tell."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
    return int(pages) * int(page_size) if pages > 0 and page_size > 0 else None


def memory_limit(root: Path = CGROUP_ROOT, self_cgroup: Path | None = PROC_SELF_CGROUP) -> tuple[int, str] | None:
    """The memory this process may use and where that limit comes from ('cgroup', 'rlimit', 'physical memory'):
    the smallest of them; None when none can be read."""
    candidates = [(cgroup_limit_bytes(root, self_cgroup), "cgroup memory limit"), (rlimit_bytes(), "rlimit"),
                  (physical_memory_bytes(), "physical memory")]
    found = [(value, source) for value, source in candidates if value is not None]
    if not found:
        return None
    value, source = min(found, key=lambda item: item[0])
    log.debug("memory limit %s (%s)", format_bytes(value), source)
    return value, source


def memory_limit_bytes(root: Path = CGROUP_ROOT, self_cgroup: Path | None = PROC_SELF_CGROUP) -> int | None:
    """The memory this process may use (bytes): the smallest of the cgroup limit (v2 or v1), the RLIMIT_AS /
    RLIMIT_DATA soft limits and the physical memory; None when none of them can be read."""
    found = memory_limit(root, self_cgroup)
    return None if found is None else found[0]


# ---- the estimate ----------------------------------------------------------------------------------------------


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def _padded(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def member_grids(shape_zyx: Sequence[int], spacing_zyx: Sequence[float] | None,
                 crop_extent_mm: Sequence[float] | None = MAX_CROP_EXTENT_MM,
                 model: MemoryModel | None = None) -> tuple[tuple[Tiling, tuple[int, int, int]], ...]:
    """Each tiling of ``model`` (default: the bundled one) with the grid its members run on (z, y, x voxels): the
    native extent, capped at ``crop_extent_mm`` per axis (the brain's box; None: no cap), at the domain guard's
    spacing (the native one clamped to the model's training range) on the axes the member takes natively, at its
    target spacing on the others. Rounded up.

    Without ``spacing_zyx`` (unknown) the native grid itself, uncapped, for every tiling."""
    model = model or bundled_memory_model()
    shape = tuple(int(n) for n in shape_zyx)
    if spacing_zyx is None:
        return tuple((t, shape) for t in model.tilings)  # type: ignore[misc]
    cap = crop_extent_mm if crop_extent_mm is not None else (math.inf,) * 3
    extent = [min(n * s, c) for n, s, c in zip(shape, spacing_zyx, cap)]
    run = [_clamp(s, lo, hi) for s, lo, hi in zip(spacing_zyx, model.spacing_min_zyx, model.spacing_max_zyx)]
    grids = []
    for tiling in model.tilings:
        spacing = member_spacing(tiling.target_spacing_zyx, run)
        grids.append((tiling, tuple(max(1, math.ceil(e / r - 1e-6)) for e, r in zip(extent, spacing))))
    return tuple(grids)  # type: ignore[arg-type]


def tile_voxels(tiling: Tiling, grid_zyx: Sequence[int]) -> int:
    """Voxels of the largest forward pass of ``tiling`` on its grid, padded as the inferers pad it: a batch of 3D
    patches (each the whole grid when smaller), or a batch of slices x the slice patch (2D)."""
    grid = [int(v) for v in grid_zyx]
    if len(tiling.patch_size) == 3:
        tile = [_padded(min(n, p), d) for n, p, d in zip(grid, tiling.patch_size, tiling.divisible_by)]
        return tiling.batch_size * math.prod(tile)
    tile = [_padded(min(n, p), d) for n, p, d in zip(grid[1:], tiling.patch_size, tiling.divisible_by)]
    return min(grid[0], tiling.batch_size) * math.prod(tile)


def estimate_case_bytes(shape_zyx: Sequence[int], spacing_zyx: Sequence[float] | None = None, *,
                        on_gpu: bool = False,
                        crop_extent_mm: Sequence[float] | None = MAX_CROP_EXTENT_MM,
                        model_bytes: int = MODEL_RESIDENT_BYTES,
                        native_bytes_per_voxel: int = NATIVE_BYTES_PER_VOXEL,
                        model_grid_bytes_per_voxel: int = MODEL_GRID_BYTES_PER_VOXEL,
                        model: MemoryModel | None = None) -> int:
    """A conservative estimate (bytes) of the peak resident memory one case needs, from its grid alone:

    ``model_bytes`` (interpreter, libraries, sessions) + the larger of the read phase (``READ_BYTES_PER_VOXEL`` x
    native voxels) and the run phase: ``native_bytes_per_voxel`` x native voxels (the full-resolution arrays kept)
    + ``model_grid_bytes_per_voxel`` x the larger member grid's voxels (see ``member_grids``) + on CPU, ONNX
    Runtime's activations for the largest tile of any member (``on_gpu``: they are in GPU memory, left out).
    ``crop_extent_mm``: the largest brain box the members can see (mm per axis; the case's own box once known,
    None for no credit). Without ``spacing_zyx`` the members' grids are taken as the native grid. ``model``: the
    members' tilings and spacing range (``memory_model(manifest)``; default: the bundled model's).
    """
    shape = [int(v) for v in shape_zyx]
    if len(shape) != 3 or any(n <= 0 for n in shape):
        raise ValueError(f"shape_zyx must be 3 positive sizes, not {tuple(shape_zyx)}")
    if spacing_zyx is not None and (len(spacing_zyx) != 3 or not all(float(s) > 0 for s in spacing_zyx)):
        raise ValueError(f"spacing_zyx must be 3 positive spacings, not {tuple(spacing_zyx)}")
    grids = member_grids(shape, spacing_zyx, crop_extent_mm, model)
    run = math.prod(shape) * native_bytes_per_voxel
    run += max(math.prod(g) for _, g in grids) * model_grid_bytes_per_voxel
    if not on_gpu:
        run += max(tile_voxels(t, g) * ACTIVATION_BYTES_PER_VOXEL[t.kind] for t, g in grids)
    return int(model_bytes + max(math.prod(shape) * READ_BYTES_PER_VOXEL, run))


# ---- the decision ----------------------------------------------------------------------------------------------


def format_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 4 else f"{n / MIB:.0f} MiB"


def check_fits(shape_zyx: Sequence[int], spacing_zyx: Sequence[float] | None, limit: int | None, *,
               path: str | Path | None = None, limit_source: str | None = None, on_gpu: bool = False,
               crop_extent_mm: Sequence[float] | None = MAX_CROP_EXTENT_MM, model: MemoryModel | None = None) -> int:
    """Raise ``CaseTooLarge`` when the case's estimated peak exceeds ``limit`` (bytes; None: unknown, no check).

    The message is one line naming the grid (z x y x voxels), its voxels, the estimate and the limit, e.g.
    ``grid 300 x 512 x 512 (78.6 M voxels, 0.29 GiB per float32 copy) needs about 1.97 GiB of memory, above the
    limit of 1.50 GiB (cgroup memory limit): ...``. Returns the estimate (bytes) when the case fits.
    """
    need = estimate_case_bytes(shape_zyx, spacing_zyx, on_gpu=on_gpu, crop_extent_mm=crop_extent_mm, model=model)
    if limit is None or need <= limit:
        log.debug("grid %s: estimated peak %s, limit %s", tuple(shape_zyx), format_bytes(need),
                  "unknown" if limit is None else format_bytes(limit))
        return need
    z, y, x = (int(v) for v in shape_zyx)
    source = f" ({limit_source})" if limit_source else ""
    voxels = z * y * x
    raise CaseTooLarge(path, f"grid {z} x {y} x {x} ({voxels / 1e6:.1f} M voxels, {format_bytes(4 * voxels)} per "
                             f"float32 copy) needs about {format_bytes(need)} of memory, above the limit of "
                             f"{format_bytes(limit)}{source}: give the container more memory or resample the case")
