"""The ensemble: one ONNX session per manifest member, run one after another and fused on the native grid."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hieseg.engine import preprocess
from hieseg.engine.fused import fused_graph, group_member, group_members, onnx_available
from hieseg.engine.inferers import predict_volume, with_flips
from hieseg.engine.manifest import Manifest, Member
from hieseg.engine.openvino_engine import return_freed_memory_to_os
from hieseg.engine.providers import CUDA, OPENVINO, ProviderPlan, default_threads, provider_plan
from hieseg.engine.sessions import create_session, is_out_of_memory, session_from_bytes
from hieseg.files import read_verified
from hieseg.inputs.domain import member_spacing

log = logging.getLogger(__name__)


# OpenVINO keeps buffers for a session's largest batch: 8 slices per pass instead of 16 lowered peak RSS on real
# cases at the same speed within the noise (exploratory runs; docs/benchmark.md has the reference figures).
OPENVINO_MAX_2D_BATCH = 8

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
    """A session and the member it runs; a shared session runs several manifest members (``parts``) as one
    member whose output is their weighted mean (see shared_sessions)."""

    member: Member
    session: Any
    provider: str
    device_id: int = 0  # the GPU of 'cuda:N'
    parts: tuple[Member, ...] = ()

    @property
    def members(self) -> tuple[Member, ...]:
        return self.parts or (self.member,)

    @property
    def batch_size(self) -> int:
        """Items per forward pass: the manifest's, except OpenVINO's 2D slices, capped at OPENVINO_MAX_2D_BATCH
        (an OpenVINO session keeps buffers for its largest batch; slices are independent, so the result is the
        same)."""
        if self.provider == OPENVINO and self.member.kind == "2d":
            return min(self.member.batch_size, OPENVINO_MAX_2D_BATCH)
        return self.member.batch_size

    def predict_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        if self.provider == CUDA:
            return bound_runner(self.session, self.member.name, "cuda", self.device_id)
        return plain_runner(self.session, self.member.name)

    def runner(self) -> "Runner":
        # Native OpenVINO sessions keep their buffers at the largest input seen; released after each case's last
        # pass, the ensemble's peak is its largest session's instead of the sum of all of them.
        return Runner(self.member, self.predict_fn(), self.batch_size, self.provider,
                      getattr(self.session, "release_memory", None))


def load_members(manifest: Manifest, device: str = "auto", gpu_mem_limit_bytes: int | None = None,
                 threads: int | None = None, share: bool | None = None, precision: str = "auto",
                 plan: ProviderPlan | None = None) -> list[LoadedMember]:
    """Create the sessions once (per process), each from checksum-verified bytes, all on one provider plan
    (``plan``, or the one ``provider_plan`` makes of the other arguments): one session per member, or one per
    network under OpenVINO (see fused; ``share`` overrides that choice, e.g. for parity tests)."""
    if plan is None:
        plan = provider_plan(device, gpu_mem_limit_bytes, threads or default_threads(len(manifest.members)),
                             precision)
    if plan.provider == OPENVINO:
        return_freed_memory_to_os()  # released session buffers go back to the OS (see LoadedMember.runner)
    loaded = []
    for group in member_groups(manifest.members, plan, share):
        if len(group) == 1:
            session, provider = create_session(group[0].path, group[0].sha256, plan)
            loaded.append(LoadedMember(group[0], session, provider, plan.device_id))
            continue
        member = group_member(group)
        data = fused_graph([read_verified(m.path, m.sha256) for m in group], [m.weight for m in group])
        session, provider = session_from_bytes(data, member.name, plan)
        loaded.append(LoadedMember(member, session, provider, plan.device_id, parts=tuple(group)))
    line = provider_summary(member_providers(loaded))
    if device == "auto" and CUDA not in {m.provider for m in loaded}:  # a GPU host would want to know
        log.warning("running on CPU: %s, %s (%s)", line, plan.precision, plan.why)
    else:
        log.info("execution provider: %s, %s (%s)", line, plan.precision, plan.why)
    return loaded


def member_groups(members: Sequence[Member], plan: ProviderPlan, share: bool | None = None
                  ) -> list[list[Member]]:
    """One group per session: the folds of a network together under OpenVINO (when onnx can build the fused
    graph), else every member alone (the CPU provider's sessions already share one memory arena)."""
    if not (plan.provider == OPENVINO if share is None else share):
        return [[m] for m in members]
    if not onnx_available():
        log.info("the onnx package is missing: one OpenVINO session per member (more memory; pip install onnx)")
        return [[m] for m in members]
    return group_members(members)


def member_providers(loaded: Sequence[LoadedMember]) -> dict[str, str]:
    """Manifest member name -> the provider that runs it."""
    return {part.name: lm.provider for lm in loaded for part in lm.members}


def member_rows(loaded: Sequence[LoadedMember]) -> list[dict[str, Any]]:
    """The report's ``members``: every manifest member with its kind, provider, weight and session."""
    return [{"name": part.name, "kind": part.kind, "provider": lm.provider, "weight": part.weight,
             "session": lm.member.name} for lm in loaded for part in lm.members]


def provider_summary(providers: dict[str, str]) -> str:
    """One phrase for the members' providers: 'X for all 10 members' or 'X for a, b; Y for c'."""
    by_provider: dict[str, list[str]] = {}
    for name, provider in providers.items():
        by_provider.setdefault(provider, []).append(name)
    if len(by_provider) == 1:
        provider, names = next(iter(by_provider.items()))
        return f"{provider} for all {len(names)} members"
    return "; ".join(f"{provider} for {', '.join(names)}" for provider, names in sorted(by_provider.items()))


Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Runner:
    """One member ready to run: its manifest entry (channels, spacing, tiling, flips, weight), a predictor
    ``batch -> probabilities`` (an ONNX Runtime session, a torch module, anything) and the items per pass."""

    member: Member
    predict: Predictor
    batch_size: int
    provider: str = ""
    release: Callable[[], None] | None = None  # frees the predictor's buffers after the member's last pass


@dataclass
class EnsembleOutput:
    """The fused probability map (float32, native grid) and the seconds each step took; with ``keep_flips``,
    also every member's map per TTA flip on the native grid (the training OOF stage tunes the flips on them)."""

    probability: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    per_flip: dict[str, list[np.ndarray]] = field(default_factory=dict)


def member_probability(runner: Runner, image: np.ndarray,
                       flips: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """One member's probabilities on its own grid (z, y, x) for its prepared image (C, z, y, x), averaged over
    ``flips`` (default: the member's TTA flips)."""
    m = runner.member
    flips = m.tta_flips if flips is None else flips
    return with_flips(image, lambda img: predict_volume(img, runner.predict, m.kind, m.patch_size, m.divisible_by,
                                                        runner.batch_size), flips)


def prepared_inputs(members: Sequence[Member], adc: np.ndarray, zadc: np.ndarray, spacing_zyx: Sequence[float],
                    crop: tuple[slice, slice, slice],
                    run_spacing_zyx: Sequence[float | None] = (None, None, None),
                    ) -> Iterator[tuple[Member, preprocess.Prepared, float]]:
    """``(member, its prepared input, seconds spent preparing it)`` in order; members with the same channels and
    spacing (e.g. the folds of one network) share one preprocessed input, computed when first needed.
    ``run_spacing_zyx`` (the domain guard's) replaces the native spacing on the axes a member takes natively."""
    cache: dict[str, preprocess.Prepared] = {}
    for m in members:
        t0 = time.perf_counter()
        key = json.dumps([m.channels, m.target_spacing_zyx], sort_keys=True)
        if key not in cache:
            target = member_spacing(m.target_spacing_zyx, run_spacing_zyx)
            cache[key] = preprocess.prepare(adc, zadc, spacing_zyx, m.channels, target, crop)
        yield m, cache[key], time.perf_counter() - t0


def run_ensemble(
    runners: Sequence[Runner],
    adc: np.ndarray,
    zadc: np.ndarray,
    spacing_zyx: Sequence[float],
    crop: tuple[slice, slice, slice],
    run_spacing_zyx: Sequence[float | None] = (None, None, None),
    keep_flips: bool = False,
) -> EnsembleOutput:
    """Weighted mean of the members' probabilities, each restored to the native grid (float32, z, y, x).

    The one ensemble loop: the runtime (ONNX Runtime sessions), the training OOF stage and the torch-eager
    benchmark all call it with their own predictors. Members run one after another and are summed as they
    finish, so peak memory is one member's (plus, with ``keep_flips``, the per-flip maps kept).
    """
    timings: dict[str, float] = {}
    per_flip: dict[str, list[np.ndarray]] = {}
    fused = np.zeros(adc.shape, dtype=np.float32)
    total_weight = sum(r.member.weight for r in runners)
    inputs = prepared_inputs([r.member for r in runners], adc, zadc, spacing_zyx, crop, run_spacing_zyx)
    for runner, (m, prepared, prep_s) in zip(runners, inputs):
        t1 = time.perf_counter()
        if keep_flips:
            flips = [preprocess.resample_linear(member_probability(runner, prepared.image, [f]),
                                                prepared.crop_shape) for f in (m.tta_flips or [()])]
            per_flip[m.name] = [_on_native_grid(f, prepared) for f in flips]
            t2 = time.perf_counter()
            restored = np.mean(flips, axis=0) if len(flips) > 1 else flips[0]
        else:
            prob = member_probability(runner, prepared.image)
            t2 = time.perf_counter()
            restored = preprocess.resample_linear(prob, prepared.crop_shape)
        if runner.release is not None:
            runner.release()
        # Added inside the crop only (restore() is zero outside it): no full-size temporaries on large grids.
        fused[prepared.crop] += (m.weight / total_weight) * restored
        t3 = time.perf_counter()
        timings["preprocess"] = timings.get("preprocess", 0.0) + prep_s
        timings[f"member:{m.name}"] = t2 - t1
        timings["fuse"] = timings.get("fuse", 0.0) + (t3 - t2)
        log.debug("member %s on %s: %.2f s", m.name, runner.provider, t2 - t1)
    return EnsembleOutput(fused, timings, per_flip)


def _on_native_grid(prob_crop: np.ndarray, prepared: preprocess.Prepared) -> np.ndarray:
    out = np.zeros(prepared.native_shape, dtype=np.float32)
    out[prepared.crop] = prob_crop
    return out
