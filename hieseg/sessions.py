"""ONNX Runtime sessions: provider choice, thread count and the checks that say which provider really runs.

Provider order for ``--device auto``: CUDA (onnxruntime-gpu with a driver), then OpenVINO (onnxruntime-openvino,
CPUs), then ONNX Runtime's own CPU provider; ``choose_provider`` is the one place that decides.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

from .devices import DEVICE_KINDS, parse_device
from .errors import DeviceError, ModelError

log = logging.getLogger(__name__)

DEVICES = DEVICE_KINDS  # plus 'cuda:N' (see devices.parse_device)
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota (containers' --cpus)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    for path in ("/sys/fs/cgroup/cpu.max",):  # cgroup v2
        try:
            quota, period = Path(path).read_text().split()[:2]
            if quota != "max":
                count = min(count, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            count = min(count, max(1, math.ceil(quota / period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def pids_limit() -> int | None:
    """The cgroup's cap on processes + threads (docker --pids-limit), if any."""
    for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        return None if text == "max" else int(text)
    return None


def default_threads(n_sessions: int) -> int:
    """Intra-op threads per session: every usable CPU, but never so many that the sessions' thread pools together
    exceed a --pids-limit (Grand Challenge runs with 256), where thread creation would fail or hang."""
    threads = available_cpus()
    limit = pids_limit()
    if limit is not None:
        threads = min(threads, max(1, (limit - 32) // max(n_sessions, 1)))
    return threads


def nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver library is loadable (it is mounted into containers only with --gpus)."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cuda_provider_options(gpu_mem_limit_bytes: int | None = None, device_id: int = 0) -> dict[str, Any]:
    """CUDA provider options: heuristic conv algorithm search (exhaustive search costs seconds per new shape)."""
    options: dict[str, Any] = {
        "device_id": device_id,
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": True,
    }
    if gpu_mem_limit_bytes:
        options["gpu_mem_limit"] = int(gpu_mem_limit_bytes)
    return options


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


def choose_provider(device: str, available: Sequence[str], driver_present: bool) -> tuple[str, str]:
    """The execution provider for ``device`` and why, in words: CUDA -> OpenVINO -> CPU.

    ``available`` is what the installed onnxruntime build offers; ``driver_present`` whether libcuda loads.
    ``auto`` takes the first that can run; ``cpu`` forces ONNX Runtime's own CPU provider; ``cuda`` (or ``cuda:N``)
    and ``openvino`` raise DeviceError when their provider cannot run at all.
    """
    device = parse_device(device)[0]  # DeviceError for anything but auto | cpu | openvino | cuda | cuda:N
    if device == "cpu":
        return CPU, "--device cpu"
    installed = _installed(available)
    if device == "cuda":
        if CUDA not in available:
            raise DeviceError(f"--device cuda: this onnxruntime build has no CUDA provider ({installed}); "
                              "install onnxruntime-gpu or use --device cpu")
        # Without a driver, onnxruntime-gpu would print a screen of library-loading errors per session.
        if not driver_present:
            raise DeviceError("--device cuda: no NVIDIA driver found (libcuda.so.1 is not loadable); "
                              "in a container, run with --gpus all, or use --device cpu")
        return CUDA, "--device cuda"
    if device == "openvino":
        if OPENVINO not in available:
            raise DeviceError(f"--device openvino: this onnxruntime build has no OpenVINO provider ({installed}); "
                              "install hieseg[openvino] (requirements-openvino.txt) or use --device cpu")
        return OPENVINO, "--device openvino"
    if CUDA in available and driver_present:
        return CUDA, "auto: CUDA provider and NVIDIA driver present"
    no_cuda = "no NVIDIA driver" if CUDA in available else "no CUDA provider"
    if OPENVINO in available:
        return OPENVINO, f"auto: {no_cuda}; onnxruntime-openvino offers OpenVINO"
    return CPU, f"auto: {no_cuda}, no OpenVINO provider ({installed})"


def _installed(available: Sequence[str]) -> str:
    import onnxruntime as ort

    return f"installed: {ort.__version__}, providers: {', '.join(available)}"


def openvino_provider_options(threads: int | None = None) -> dict[str, str]:
    """OpenVINO on the CPU in float32 (never a bf16/fp16 inference precision: the parity bar is 1e-4), with
    the session's thread count. No ``cache_dir``: for these in-memory, dynamic-shape graphs it wrote blobs but did
    not shorten session creation when tried."""
    return {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(threads or available_cpus())}


def requested_providers(device: str, gpu_mem_limit_bytes: int | None = None, threads: int | None = None
                        ) -> list[Any]:
    """The provider list to ask ONNX Runtime for (with options); raises DeviceError when ``device`` cannot run."""
    return provider_plan(device, gpu_mem_limit_bytes, threads)[0]


def provider_plan(device: str, gpu_mem_limit_bytes: int | None = None, threads: int | None = None
                  ) -> tuple[list[Any], str]:
    """``requested_providers`` and the reason for its first entry (for the one log line)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    provider, why = choose_provider(device, available, CUDA in available and nvidia_driver_present())
    if provider == CUDA:
        device_id = parse_device(device)[1]  # 'cuda:N' picks GPU N
        return [(CUDA, cuda_provider_options(gpu_mem_limit_bytes, device_id)), CPU], why
    if provider == OPENVINO:
        # Alone: create_session forbids partial placement, so a graph runs wholly on OpenVINO or wholly on CPU.
        return [(OPENVINO, openvino_provider_options(threads))], why
    return [CPU], why


def read_verified(path: Path, sha256: str) -> bytes:
    """The model file's bytes, refused when they do not hash to the manifest's sha256.

    Sessions are built from these same bytes, so a file swapped after the check cannot be run.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise ModelError(f"{path}: checksum mismatch (sha256 {actual[:12]}…, manifest says {sha256[:12]}…): "
                         "the model file was modified or corrupted")
    return data


def create_session(path: Path, sha256: str, device: str = "auto", gpu_mem_limit_bytes: int | None = None,
                   threads: int | None = None):
    """An InferenceSession for one verified model file, and the provider that actually runs it."""
    return session_from_bytes(read_verified(path, sha256), path.name, device, gpu_mem_limit_bytes, threads)


def session_from_bytes(data: bytes, name: str, device: str = "auto", gpu_mem_limit_bytes: int | None = None,
                       threads: int | None = None):
    """An InferenceSession for verified model bytes (``name`` labels messages), and the provider that runs it.

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
