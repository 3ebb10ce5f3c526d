"""Sessions built from verified model bytes on the plan's provider (``providers.provider_plan`` decides, once),
and the checks that say which provider really runs them: ONNX Runtime for CUDA and its CPU provider, native
OpenVINO (``openvino_engine``) for the CPU's fast path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hieseg.engine.openvino_engine import create_openvino_session
from hieseg.engine.providers import CPU, CUDA, OPENVINO, ProviderPlan, available_cpus
from hieseg.errors import DeviceError, ModelError
from hieseg.files import read_verified

log = logging.getLogger(__name__)

_shared_arena: bool | None = None


def use_shared_cpu_arena(enabled: bool) -> None:
    """Whether sessions created from now on share one CPU arena (the default) or keep their own, as ONNX Runtime
    does by default: the seam for the benchmark's "before the optimisations" baseline."""
    global _shared_arena
    if not enabled:
        _shared_arena = False
    elif _shared_arena is False:
        _shared_arena = None  # registered again on the next session (a second registration is refused quietly)


def shared_cpu_arena() -> bool:
    """Register one CPU memory arena for all sessions of this process (once).

    Each session otherwise keeps its own arena at its peak size, so an ensemble's memory grows with its member
    count (measured: 6 members, 2.3 GiB); sharing one arena keeps peak memory near one member's (0.65 GiB) and is
    no slower.
    """
    global _shared_arena
    if _shared_arena is None:
        import onnxruntime as ort

        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena = True
        except Exception as exc:  # an older ORT, or already registered by the host application
            log.debug("shared CPU arena not registered: %s", exc)
            _shared_arena = False
    return _shared_arena


def session_options(threads: int | None = None):
    """ONNX Runtime session options: one shared CPU arena, full graph optimisation, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if shared_cpu_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or available_cpus()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # ORT's own warnings (e.g. unused initialisers) are noise for users
    return opts


def create_session(path: Path, sha256: str, plan: ProviderPlan) -> tuple[Any, str]:
    """A session for one verified model file on ``plan``, and the provider that actually runs it."""
    return session_from_bytes(read_verified(path, sha256), path.name, plan)


def session_from_bytes(data: bytes, name: str, plan: ProviderPlan) -> tuple[Any, str]:
    """A session for verified model bytes (``name`` labels messages) on ``plan``, and the provider that runs it.

    ``get_available_providers`` only says a provider was compiled in; whether CUDA really initialised (driver,
    libcudart, cuDNN present) shows only in the created session's ``get_providers``. Under ``auto`` a graph the
    chosen engine cannot take runs on ONNX Runtime's CPU provider, with a warning naming it and the reason; a
    device asked for by name (``plan.required``) raises DeviceError instead.
    """
    if plan.provider == OPENVINO:
        try:
            return create_openvino_session(data, name, plan.precision, plan.threads), OPENVINO
        except ModelError as exc:
            if plan.required:
                raise DeviceError(f"--device openvino: {exc}") from None
            log.warning("%s: OpenVINO cannot run this graph (%s); it runs on %s", name, exc, CPU)
            return session_from_bytes(data, name, plan.on_cpu())
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, sess_options=session_options(plan.threads),
                                       providers=plan.ort_providers())
    except Exception as exc:  # ORT raises several private exception types
        if is_out_of_memory(exc):
            raise MemoryError(f"out of memory creating the ONNX Runtime session for {name}") from None
        if plan.provider == CUDA and plan.required:
            raise DeviceError(f"--device cuda: CUDA session for {name} failed ({_first_line(exc)})") from None
        if plan.provider == CUDA:  # auto: CUDA was offered but cannot build this session; the CPU can
            log.warning("%s: CUDA session failed (%s); it runs on %s", name, _first_line(exc), CPU)
            return session_from_bytes(data, name, plan.on_cpu())
        raise ModelError(f"{name}: not a loadable ONNX model ({_first_line(exc)})") from None
    used = session.get_providers()[0]
    if plan.provider == CUDA and plan.required and used != CUDA:
        raise DeviceError(f"--device cuda: CUDA is not usable here (onnxruntime fell back to {used}); "
                          "check the NVIDIA driver, CUDA 12 and cuDNN 9 libraries, and `--gpus all`")
    return session, used


_MEMORY_SIGNS = ("error code: 12", "bad_alloc", "failed to allocate", "out of memory", "cannot allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    """ORT reports allocation failures (e.g. under Grand Challenge's RLIMIT_DATA) as generic runtime errors."""
    return isinstance(exc, MemoryError) or any(sign in str(exc).lower() for sign in _MEMORY_SIGNS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
