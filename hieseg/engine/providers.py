"""The ``--device`` values: ``auto``, ``cpu``, ``openvino``, ``cuda`` (GPU 0) and ``cuda:N`` (GPU N)."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from hieseg.errors import DeviceError

log = logging.getLogger(__name__)

DEVICE_KINDS = ("auto", "cpu", "cuda", "openvino")
DEVICE_HELP = "auto | cpu | openvino | cuda | cuda:N"


def parse_device(device: str) -> tuple[str, int]:
    """``(kind, device_id)`` of a device string: 'cuda:1' -> ('cuda', 1); the other kinds use device 0."""
    match = re.fullmatch(r"(auto|cpu|cuda|openvino)(?::(\d+))?", str(device).strip().lower())
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"--device must be one of {DEVICE_HELP}, not {device!r}")
    return match.group(1), int(match.group(2) or 0)


def device_arg(text: str) -> str:
    """argparse type for ``--device``: the normalised string, or a usage error naming the accepted values."""
    import argparse

    try:
        kind, device_id = parse_device(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"cuda:{device_id}" if kind == "cuda" and ":" in text else kind


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
