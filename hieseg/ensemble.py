"""The ensemble: one ONNX session per manifest member, run one after another and fused on the native grid."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from . import preprocess
from .inferers import predict_volume, with_flips
from .manifest import Manifest, Member
from .sessions import CPU, CUDA, create_session, default_threads, is_out_of_memory, provider_plan

log = logging.getLogger(__name__)


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _raise_oom(exc: Exception, member: str) -> None:
    if is_out_of_memory(exc):
        raise MemoryError(f"out of memory running member {member}") from None


def plain_runner(session: Any, member: str) -> Callable[[np.ndarray], np.ndarray]:
    """``batch -> probabilities`` through ``session.run``; casts to the graph's input type (fp16 members)."""
    inp = session.get_inputs()[0]
    dtype = _NUMPY_TYPES.get(inp.type, np.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, {inp.name: batch.astype(dtype, copy=False)})[0].astype(np.float32, copy=False)
        except Exception as exc:  # ORT's allocation failures are plain runtime errors
            _raise_oom(exc, member)
            raise

    return run


def bound_runner(session: Any, member: str, device: str = "cuda", device_id: int = 0
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """``batch -> probabilities`` with I/O binding: the output is allocated on ``device`` by ORT and copied back
    once, and one binding object is reused across the tiles of a sliding window (same tile shape each time)."""
    import onnxruntime as ort

    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    dtype = _NUMPY_TYPES.get(inp.type, np.float32)
    binding = session.io_binding()

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch, dtype=dtype), device, device_id)
            binding.bind_ortvalue_input(inp.name, value)
            binding.bind_output(out.name, device, device_id)
            session.run_with_iobinding(binding)
            result = binding.copy_outputs_to_cpu()[0]
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            return result.astype(np.float32, copy=False)
        except Exception as exc:
            _raise_oom(exc, member)
            raise

    return run


@dataclass
class LoadedMember:
    member: Member
    session: Any
    provider: str

    def predict_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        if self.provider == CUDA:
            return bound_runner(self.session, self.member.name, "cuda")
        return plain_runner(self.session, self.member.name)


def load_members(manifest: Manifest, device: str = "auto", gpu_mem_limit_bytes: int | None = None,
                 threads: int | None = None) -> list[LoadedMember]:
    """Create every member's session once (per process), each from checksum-verified bytes."""
    loaded = []
    threads = threads or default_threads(len(manifest.members))
    _, why = provider_plan(device, gpu_mem_limit_bytes, threads)
    for member in manifest.members:
        session, provider = create_session(member.path, member.sha256, device, gpu_mem_limit_bytes, threads)
        loaded.append(LoadedMember(member, session, provider))
    line = provider_summary({m.member.name: m.provider for m in loaded})
    if device == "auto" and {m.provider for m in loaded} == {CPU}:
        log.warning("running on CPU: %s (%s)", line, why)
    else:
        log.info("execution provider: %s (%s)", line, why)
    return loaded


def provider_summary(providers: dict[str, str]) -> str:
    """One phrase for the members' providers: 'X for all 10 members' or 'X for a, b; Y for c'."""
    by_provider: dict[str, list[str]] = {}
    for name, provider in providers.items():
        by_provider.setdefault(provider, []).append(name)
    if len(by_provider) == 1:
        provider, names = next(iter(by_provider.items()))
        return f"{provider} for all {len(names)} members"
    return "; ".join(f"{provider} for {', '.join(names)}" for provider, names in sorted(by_provider.items()))


def prep_key(member: Member) -> str:
    return json.dumps([member.channels, member.target_spacing_zyx], sort_keys=True)


def member_probability(loaded: LoadedMember, prepared: preprocess.Prepared) -> np.ndarray:
    """One member's TTA-averaged probabilities on its own grid (z, y, x)."""
    m = loaded.member
    fn = loaded.predict_fn()
    return with_flips(prepared.image,
                      lambda img: predict_volume(img, fn, m.kind, m.patch_size, m.divisible_by, m.batch_size),
                      m.tta_flips)


def run_ensemble(
    members: Sequence[LoadedMember],
    adc: np.ndarray,
    zadc: np.ndarray,
    spacing_zyx: Sequence[float],
    crop: tuple[slice, slice, slice],
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Weighted mean of the members' probabilities, each restored to the native grid (float32, z, y, x).

    Members run one after another and are summed as they finish, so peak memory is one member's. Members with
    the same channels and spacing (e.g. the folds of one network) share one preprocessed input.
    """
    timings = {} if timings is None else timings
    fused = np.zeros(adc.shape, dtype=np.float32)
    total_weight = sum(m.member.weight for m in members)
    cache: dict[str, preprocess.Prepared] = {}
    for loaded in members:
        m = loaded.member
        t0 = time.perf_counter()
        key = prep_key(m)
        if key not in cache:
            cache[key] = preprocess.prepare(adc, zadc, spacing_zyx, m.channels, m.target_spacing_zyx, crop)
        prepared = cache[key]
        t1 = time.perf_counter()
        prob = member_probability(loaded, prepared)
        t2 = time.perf_counter()
        fused += (m.weight / total_weight) * preprocess.restore(prob, prepared)
        t3 = time.perf_counter()
        timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0)
        timings[f"member:{m.name}"] = t2 - t1
        timings["fuse"] = timings.get("fuse", 0.0) + (t3 - t2)
        log.debug("member %s on %s: %.2f s", m.name, loaded.provider, t2 - t1)
    return fused
