"""Native OpenVINO sessions: ONNX model bytes compiled by OpenVINO's CPU plugin, behind the small part of ONNX
Runtime's ``InferenceSession`` interface that the runtime uses (``get_inputs``, ``get_outputs``, ``run``,
``get_providers``).

Why native and not ONNX Runtime's OpenVINO execution provider: the provider was slower here and falls back when
given a bf16 hint (issue 23). Native OpenVINO runs the whole graph or refuses it, so there is no silent mix of
devices to guard against.

Precision is an explicit choice (``resolve_precision``): bf16 only where the CPU has native bf16 units (AMX-BF16
or AVX512_BF16), because OpenVINO would otherwise emulate it slowly; f32 everywhere else. OpenVINO's own default on
such CPUs is bf16, so the hint is always set, never left to the plugin.

Memory: a dynamic-shape session keeps its buffers at its largest input's size; ``release_memory`` after a member's
last pass of a case, with ``return_freed_memory_to_os`` set once per process, makes the ensemble's peak its
largest session's rather than the sum over sessions.

Nothing here reads files or manifests: the caller verifies the model's checksum on the bytes it passes in.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hieseg.errors import DeviceError, ModelError

log = logging.getLogger(__name__)

OPENVINO_NATIVE = "OpenVINO (native)"
PRECISIONS = ("auto", "bf16", "f32")

# The CPU flags that give OpenVINO's CPU plugin native bf16 arithmetic (AMX tiles, or AVX512 dot products).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

# Large buffers (an infer request's intermediate tensors) come from mmap above this size, so what a session frees
# goes back to the OS instead of staying in glibc's heap (see return_freed_memory_to_os).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)

_ONNX_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "bf16": "tensor(bfloat16)"}


@dataclass(frozen=True)
class TensorInfo:
    """What ``InferenceSession.get_inputs()`` / ``get_outputs()`` items give: name, ONNX type, shape (None for a
    dynamic dimension, as ONNX Runtime gives for an unnamed one)."""

    name: str
    type: str
    shape: list[int | None]


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports (it is optional; the ONNX Runtime CPU provider needs nothing)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    except Exception as exc:  # a broken install (e.g. a missing shared library) is reported, not raised
        log.warning("the openvino package failed to load (%s)", exc)
        return False
    return True


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The bf16 flags (``BF16_CPU_FLAGS``) this CPU lists; empty where the file is unreadable (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return flags & set(BF16_CPU_FLAGS)


def cpu_has_native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here.

    OpenVINO's own report (``OPTIMIZATION_CAPABILITIES`` containing ``BF16``) decides, because it is what the plugin
    acts on; /proc/cpuinfo's flags are logged as the explanation and decide only when OpenVINO is not installed.
    """
    flags = cpu_bf16_flags()
    if openvino_available():
        try:
            capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception as exc:  # no CPU plugin: nothing OpenVINO can run, bf16 or not
            log.debug("OpenVINO CPU capabilities unreadable (%s)", exc)
            return False
        native = "BF16" in capabilities
        log.debug("OpenVINO CPU capabilities %s; /proc/cpuinfo bf16 flags: %s", list(capabilities),
                  ", ".join(sorted(flags)) or "none")
        return native
    return bool(flags)


def resolve_precision(precision: str, has_bf16: bool) -> str:
    """``'bf16'`` or ``'f32'`` for a requested ``'auto'``, ``'bf16'`` or ``'f32'``.

    ``auto`` is bf16 where the CPU has native bf16 and f32 elsewhere; ``bf16`` on a CPU without it is refused
    (ValueError, one line) instead of running an emulation several times slower than f32.
    """
    choice = str(precision).strip().lower()
    if choice not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if choice == "auto":
        return "bf16" if has_bf16 else "f32"
    if choice == "bf16" and not has_bf16:
        raise ValueError("precision bf16: this CPU has no native bf16 (neither AMX-BF16 nor AVX512_BF16); "
                         "use precision f32 or auto")
    return choice


def compile_properties(precision: str, threads: int | None) -> dict[str, Any]:
    """The CPU plugin properties of a session (``precision`` already resolved to 'bf16' or 'f32')."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    properties: dict[str, Any] = {
        # Always explicit: the plugin's own default on bf16-capable CPUs is bf16, which f32 must not inherit.
        hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
        # One request at a time (the ensemble loop is sequential): latency mode, one stream using all threads.
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        props.num_streams: 1,
    }
    # No property lowers a dynamic-shape session's memory: CPU_RUNTIME_CACHE_CAPACITY=0 changed neither peak RSS
    # nor time on the shipped networks over 14 real shapes; what does is release_memory between members.
    if threads:
        properties[props.inference_num_threads] = int(threads)
    return properties


class OpenVINOSession:
    """A compiled OpenVINO model with ``InferenceSession``'s ``get_inputs``, ``get_outputs``, ``run`` and
    ``get_providers``; one infer request, serialised by a lock (its buffers are reused between calls)."""

    def __init__(self, compiled: Any, name: str, precision: str, threads: int | None) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self.name = name
        self.precision = precision
        self.threads = threads
        self._inputs = [_tensor_info(port) for port in compiled.inputs]
        self._outputs = [_tensor_info(port) for port in compiled.outputs]

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [OPENVINO_NATIVE]

    def release_memory(self) -> None:
        """Free the intermediate buffers, which a dynamic-shape session otherwise keeps at its largest input's size
        until it is destroyed; the next ``run`` allocates them again. Called after a member's last pass of a case,
        the ensemble's peak is its largest session's instead of the sum of all (with return_freed_memory_to_os)."""
        with self._lock:
            self._compiled.release_memory()

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray],
            run_options: Any = None) -> list[np.ndarray]:
        """Outputs (numpy arrays owned by the caller) for ``output_names`` (None: all), like ``InferenceSession``.

        ``run_options`` is accepted for signature compatibility and ignored.
        """
        known = {info.name for info in self._inputs}
        unknown = set(input_feed) - known
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {sorted(unknown)}; the model takes {sorted(known)}")
        wanted = [info.name for info in self._outputs] if output_names is None else list(output_names)
        with self._lock:
            # share_inputs: no copy of the (large) input; share_outputs=False: the request reuses its output
            # buffers on the next call, so what is returned must be a copy the caller owns.
            result = self._request.infer({k: np.ascontiguousarray(v) for k, v in input_feed.items()},
                                         share_inputs=True, share_outputs=False)
            by_name = {name: value for port, value in result.items() for name in port.get_names()}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(f"{self.name}: unknown output(s) {missing}")
        return [by_name[n] for n in wanted]


def create_openvino_session(data: bytes, name: str, precision: str = "auto", threads: int | None = None,
                            properties: Mapping[str, Any] | None = None) -> OpenVINOSession:
    """A native OpenVINO CPU session for ONNX model ``data`` (already verified; ``name`` labels messages).

    ``precision`` is 'auto', 'bf16' or 'f32' (``resolve_precision``); ``threads`` sets OpenVINO's thread count
    (None: the plugin's choice); ``properties`` adds or overrides CPU plugin properties (for measurements).
    Dynamic input dimensions stay dynamic: each new input shape is prepared on its first run.
    """
    if not openvino_available():
        raise DeviceError("native OpenVINO needs the openvino package (pip install openvino)")
    resolved = resolve_precision(precision, cpu_has_native_bf16())
    core = _core()
    try:
        # ONNX bytes go straight to the ONNX frontend (no temporary file, no second copy of the checksummed bytes).
        model = core.read_model(model=bytes(data))
    except Exception as exc:  # OpenVINO raises its own exception types
        raise ModelError(f"{name}: not a loadable ONNX model for OpenVINO ({_first_line(exc)})") from None
    config = compile_properties(resolved, threads)
    config.update(properties or {})
    try:
        compiled = core.compile_model(model, "CPU", config)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise MemoryError(f"out of memory compiling {name} with OpenVINO") from None
        raise ModelError(f"{name}: OpenVINO cannot compile this graph ({_first_line(exc)})") from None
    log.debug("%s: OpenVINO %s, %s threads, precision %s", name, _version(), threads or "default", resolved)
    return OpenVINOSession(compiled, name, resolved, threads)


def return_freed_memory_to_os(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc serve allocations above ``threshold_bytes`` with mmap, for the whole process; True when set.

    glibc raises its mmap threshold each time a large mmapped block is freed, so after the first release a
    session's buffers land in the heap, where freeing them lowers no RSS. A fixed threshold keeps them mmapped.
    Process-wide, so the application calls it once at start-up; a no-op (False) where libc is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    """One ``ov.Core`` per process: it loads the CPU plugin once and holds no per-model state."""
    import openvino as ov

    return ov.Core()


def _version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]


def _tensor_info(port: Any) -> TensorInfo:
    shape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    element = port.get_element_type().get_type_name()
    return TensorInfo(port.get_any_name(), _ONNX_TYPES.get(element, f"tensor({element})"), dims)


_MEMORY_SIGNS = ("bad_alloc", "out of memory", "cannot allocate", "failed to allocate")


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(sign in str(exc).lower() for sign in _MEMORY_SIGNS)


def _first_line(exc: BaseException) -> str:
    # OpenVINO's messages start with "Exception from src/...cpp:NN:" lines; the last non-empty line says what failed.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
