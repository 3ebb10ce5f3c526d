"""The execution provider decision, made once per process (``provider_plan``) and used by every session.

``--device`` values: ``auto``, ``cpu``, ``openvino``, ``cuda`` (GPU 0) and ``cuda:N`` (GPU N); ``--precision``:
``auto``, ``bf16``, ``f32``.

- ``auto``: CUDA (onnxruntime-gpu with a working driver), else native OpenVINO on the CPU (the ``openvino``
  package; bf16 where the CPU has native bf16 units, f32 elsewhere), else ONNX Runtime's own CPU provider.
- ``cpu``: ONNX Runtime's CPU provider, always f32 (the reference the others are gated against).
- ``openvino``: native OpenVINO, or a DeviceError when the package is missing.
- ``cuda`` / ``cuda:N``: ONNX Runtime's CUDA provider on GPU N, or a DeviceError naming what is missing.

ONNX Runtime's OpenVINO execution provider is not used: it was slower than native OpenVINO here and could not
take a bf16 hint without falling back (issue 23).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hieseg.engine.openvino_engine import OPENVINO_NATIVE, cpu_has_native_bf16, openvino_available, resolve_precision
from hieseg.errors import DeviceError

log = logging.getLogger(__name__)

DEVICE_KINDS = ("auto", "cpu", "cuda", "openvino")
DEVICE_HELP = "auto | cpu | openvino | cuda | cuda:N"
PRECISION_HELP = "auto | bf16 | f32"

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OPENVINO = OPENVINO_NATIVE


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


@dataclass(frozen=True)
class ProviderPlan:
    """Where and how every session of this process runs: the provider, why it was chosen (for the one log line),
    the GPU, the threads per session and the inference precision ('f32' or 'bf16')."""

    provider: str
    why: str
    device_id: int = 0
    threads: int | None = None
    precision: str = "f32"
    gpu_mem_limit_bytes: int | None = None
    required: bool = False  # asked for by name (--device cuda / openvino): a silent fallback is an error

    @property
    def engine(self) -> str:
        """The report's words: 'OpenVINO (native) bf16', 'CPUExecutionProvider f32', ..."""
        return f"{self.provider} {self.precision}"

    def ort_providers(self) -> list[Any]:
        """The provider list to hand ONNX Runtime (for the ORT providers only)."""
        if self.provider == CUDA:
            return [(CUDA, cuda_provider_options(self.gpu_mem_limit_bytes, self.device_id)), CPU]
        return [CPU]

    def on_cpu(self) -> "ProviderPlan":
        """The plan for a graph the chosen engine cannot take: ONNX Runtime's CPU provider, f32."""
        return ProviderPlan(CPU, f"fallback from {self.provider}", threads=self.threads)


def gpu_versions() -> dict[str, str | bool | None]:
    """The NVIDIA driver, the CUDA version it supports and cuDNN, for the report of a CUDA run: as the GPU image's
    entrypoint read them (docker/entrypoint.sh exports HIESEG_NVIDIA_DRIVER, ...), else from nvidia-smi."""
    driver = os.environ.get("HIESEG_NVIDIA_DRIVER") or None
    if driver is None:
        import shutil
        import subprocess

        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20)
                driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
            except (OSError, subprocess.TimeoutExpired):
                driver = None
    return {"driver": driver, "driver_cuda": os.environ.get("HIESEG_NVIDIA_DRIVER_CUDA") or None,
            "cudnn": os.environ.get("HIESEG_CUDNN_VERSION") or None,
            "forward_compat": bool(os.environ.get("HIESEG_CUDA_COMPAT"))}


def choose_provider(device: str, available: Sequence[str], driver_present: bool, openvino_present: bool
                    ) -> tuple[str, str]:
    """The provider for ``device`` and why, in words (see the module docstring for the order).

    ``available`` is what the installed onnxruntime build offers, ``driver_present`` whether libcuda loads,
    ``openvino_present`` whether the openvino package imports.
    """
    device = parse_device(device)[0]  # DeviceError for anything but auto | cpu | openvino | cuda | cuda:N
    if device == "cpu":
        return CPU, "--device cpu"
    if device == "cuda":
        if CUDA not in available:
            raise DeviceError(f"--device cuda: this onnxruntime build has no CUDA provider ({_installed(available)});"
                              " install onnxruntime-gpu or use --device cpu")
        # Without a driver, onnxruntime-gpu would print a screen of library-loading errors per session.
        if not driver_present:
            raise DeviceError("--device cuda: no NVIDIA driver found (libcuda.so.1 is not loadable); "
                              "in a container, run with --gpus all, or use --device cpu")
        return CUDA, "--device cuda"
    if device == "openvino":
        if not openvino_present:
            raise DeviceError("--device openvino: the openvino package is not installed "
                              "(pip install openvino, or hieseg[cpu]); or use --device cpu")
        return OPENVINO, "--device openvino"
    if CUDA in available and driver_present:
        return CUDA, "auto: CUDA provider and NVIDIA driver present"
    no_cuda = "no NVIDIA driver" if CUDA in available else "no CUDA provider"
    if openvino_present:
        return OPENVINO, f"auto: {no_cuda}; native OpenVINO on the CPU"
    return CPU, f"auto: {no_cuda}, no openvino package ({_installed(available)})"


def choose_precision(provider: str, precision: str, has_bf16: bool) -> str:
    """'bf16' or 'f32' for ``provider``: bf16 only on OpenVINO (``resolve_precision``: auto = bf16 where the CPU
    has native bf16); the ONNX Runtime providers run f32, and asking them for bf16 is a DeviceError."""
    if provider == OPENVINO:
        try:
            return resolve_precision(precision, has_bf16)
        except ValueError as exc:
            raise DeviceError(f"--{exc}") from None
    choice = str(precision).strip().lower()
    if choice not in ("auto", "f32", "bf16"):
        raise DeviceError(f"--precision must be one of {PRECISION_HELP}, not {precision!r}")
    if choice == "bf16":
        raise DeviceError(f"--precision bf16 needs native OpenVINO (--device openvino or auto); {provider} runs f32")
    return "f32"


def provider_plan(device: str = "auto", gpu_mem_limit_bytes: int | None = None, threads: int | None = None,
                  precision: str = "auto") -> ProviderPlan:
    """The one provider decision of a process; raises DeviceError when ``device`` or ``precision`` cannot run."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    kind, device_id = parse_device(device)
    provider, why = choose_provider(device, available, CUDA in available and nvidia_driver_present(),
                                    kind in ("auto", "openvino") and openvino_available())
    has_bf16 = provider == OPENVINO and cpu_has_native_bf16()
    chosen = choose_precision(provider, precision, has_bf16)
    if provider == OPENVINO and str(precision).lower() == "auto":
        why += f", {chosen} ({'native bf16 on this CPU' if has_bf16 else 'no native bf16 on this CPU'})"
    return ProviderPlan(provider, why, device_id if provider == CUDA else 0, threads, chosen,
                        gpu_mem_limit_bytes if provider == CUDA else None, required=kind != "auto")


def _installed(available: Sequence[str]) -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}: {', '.join(available)}"


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
