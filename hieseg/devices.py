"""The ``--device`` values: ``auto``, ``cpu``, ``openvino``, ``cuda`` (GPU 0) and ``cuda:N`` (GPU N)."""

from __future__ import annotations

import re

from .errors import DeviceError

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
