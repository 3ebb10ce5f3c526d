"""ONNX Runtime sessions: provider choice, thread count and the checks that say which provider really runs.

Provider order for ``--device auto``: CUDA (onnxruntime-gpu with a driver), then OpenVINO (onnxruntime-openvino,
CPUs), then ONNX Runtime's own CPU provider; ``choose_provider`` is the one place that decides.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hieseg.engine.providers import (
    CPU,
    CUDA,
    DEVICE_KINDS,
    OPENVINO,
    available_cpus,
    parse_device,
    requested_providers,
)
from hieseg.errors import DeviceError, ModelError
from hieseg.files import read_verified

log = logging.getLogger(__name__)

DEVICES = DEVICE_KINDS  # plus 'cuda:N' (see devices.parse_device)
_shared_arena: bool | None = None


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


def session_options(threads: int | None = None, whole_graph: bool = False):
    """ORT session options; ``whole_graph`` forbids placing nodes on the CPU provider behind the first one's back
    (used for OpenVINO, whose unsupported nodes would otherwise run on CPU unnoticed), so creation fails instead."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if shared_cpu_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or available_cpus()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # ORT's own warnings (e.g. unused initialisers) are noise for users
    if whole_graph:
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        opts.log_severity_level = 4  # its refusal is reported by create_session in one line, not ORT's screen
    return opts


def create_session(path: Path, sha256: str, device: str = "auto", gpu_mem_limit_bytes: int | None = None,
                   threads: int | None = None):
    """An InferenceSession for one verified model file, and the provider that actually runs it."""
    return session_from_bytes(read_verified(path, sha256), path.name, device, gpu_mem_limit_bytes, threads)


def session_from_bytes(data: bytes, name: str, device: str = "auto", gpu_mem_limit_bytes: int | None = None,
                       threads: int | None = None):
    """An InferenceSession for verified model bytes (``name`` labels messages), and the provider that runs it.

from hieseg.engine.providers import CPU, CUDA, OPENVINO, available_cpus, requested_providers
from hieseg.files import read_verified
    ``get_available_providers`` only says a provider was compiled in; whether CUDA really initialised
    (driver, libcudart, cuDNN present) shows only in the created session's ``get_providers``. An OpenVINO
    session must take the whole graph (CPU-EP fallback disabled); when it cannot, the graph runs on ONNX
    Runtime's CPU provider and a warning names it and the reason.
    """
    import onnxruntime as ort

    providers = requested_providers(device, gpu_mem_limit_bytes, threads)
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    device = parse_device(device)[0]  # 'cuda:N' is 'cuda' for the checks below
    try:
        session = ort.InferenceSession(data, sess_options=session_options(threads, whole_graph=first == OPENVINO),
                                       providers=providers)
    except Exception as exc:  # ORT raises several private exception types
        if is_out_of_memory(exc):
            raise MemoryError(f"out of memory creating the ONNX Runtime session for {name}") from None
        if device == "cuda":
            raise DeviceError(f"--device cuda: CUDA session for {name} failed ({_first_line(exc)})") from None
        if first == CPU:
            raise ModelError(f"{name}: not a loadable ONNX model ({_first_line(exc)})") from None
        session = session_from_bytes(data, name, "cpu", threads=threads)[0]
        log.warning("%s: %s cannot run this graph (%s); it runs on %s", name, first, _first_line(exc), CPU)
    used = session.get_providers()[0]
    if device == "cuda" and used != CUDA:
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
