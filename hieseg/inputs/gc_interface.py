"""Grand Challenge's interface for BONBID-HIE: the sockets, their paths, and ``/input/inputs.json``.

This is the one module that names Grand Challenge's sockets and files; the rest of hieseg imports them from here.

Grand Challenge (since its 2025 algorithm template, grand-challenge-forge) writes ``/input/inputs.json``: a list
with one *socket value* per input, as its ``ComponentInterfaceValueSerializer`` renders it::

    [{"socket":    {"slug": "skull-stripped-adc", "kind": "Image", "super_kind": "Image",
                    "relative_path": "images/skull-stripped-adc-brain-mri", "title": ..., "pk": ..., ...},
      "interface": {... the same object, kept by Grand Challenge for older algorithms ...},
      "image": {"pk": "<uuid>", "name": "<the uploaded file's name>"}, "value": null, "file": null, "pk": 123},
     ...]

An image socket's file is placed in ``/input/<relative_path>/`` (named after the stored image file, not after
``image.name``), so the file is the single image in that folder. Without ``inputs.json`` the folder layout alone is
read (the 2023 challenge's runtime, local runs).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hieseg.errors import InputError

log = logging.getLogger(__name__)

# Input sockets: slug -> the folder Grand Challenge places the image in (relative to /input).
ADC_SOCKET = "skull-stripped-adc"
ZADC_SOCKET = "z-score-apparent-diffusion-coefficient-map"
GC_ADC_DIR = Path("images/skull-stripped-adc-brain-mri")
GC_ZADC_DIR = Path("images/z-score-adc")
INPUT_SOCKETS: dict[str, Path] = {ADC_SOCKET: GC_ADC_DIR, ZADC_SOCKET: GC_ZADC_DIR}

# The container's folders: Grand Challenge mounts the inputs at /input and collects the outputs from /output.
GC_INPUT_ROOT = Path("/input")
GC_OUTPUT_ROOT = Path("/output")

# Output socket: the lesion mask, written under /output. The challenge reads an .mha file only.
OUTPUT_SOCKET = "hypoxic-ischemic-encephalopathy-lesion-segmentation"
GC_OUTPUT_DIR = Path("images/hie-lesion-segmentation")
GC_OUTPUT = GC_OUTPUT_DIR / "overlay.mha"
GC_OUTPUT_FORMAT = "mha"

# Our own files beside the output socket (Grand Challenge ignores files it has no socket for): the report, and
# on request the probability map and the QC montage.
GC_REPORT = Path("hieseg-report.json")
GC_PROBABILITY = Path("probability.mha")
GC_QC = Path("qc.png")

INPUTS_JSON = "inputs.json"


@dataclass(frozen=True)
class SocketInput:
    """One listed input socket: its slug and the folder its file was placed in."""

    slug: str
    folder: Path
    image_name: str | None


def _socket_of(entry: Any, where: Path, index: int) -> dict[str, Any]:
    """The socket description of one socket value ('socket' today, 'interface' in older files)."""
    socket = entry.get("socket") or entry.get("interface") if isinstance(entry, dict) else None
    if not isinstance(socket, dict) or not isinstance(socket.get("slug"), str):
        raise InputError(where, f"entry {index} has no socket slug (expected 'socket' or 'interface' with 'slug')")
    return socket


def parse_inputs_json(raw: Any, input_dir: Path, where: Path) -> dict[str, SocketInput]:
    """The two expected input sockets of ``inputs.json``; one clear error for anything else.

    Refuses an unexpected socket, a missing or repeated one, and a socket that is not an image.
    """
    if not isinstance(raw, list):
        raise InputError(where, f"expected a list of socket values, got {type(raw).__name__}")
    found: dict[str, SocketInput] = {}
    for index, entry in enumerate(raw):
        socket = _socket_of(entry, where, index)
        slug = socket["slug"]
        if slug not in INPUT_SOCKETS:
            raise InputError(where, f"unexpected socket {slug!r} (this algorithm reads "
                                    f"{' and '.join(repr(s) for s in INPUT_SOCKETS)})")
        if slug in found:
            raise InputError(where, f"socket {slug!r} is listed twice")
        if socket.get("super_kind", "Image") != "Image":
            raise InputError(where, f"socket {slug!r} is a {socket.get('super_kind')}, expected an Image")
        relative = Path(socket.get("relative_path") or INPUT_SOCKETS[slug])
        if relative.is_absolute() or ".." in relative.parts:
            raise InputError(where, f"socket {slug!r}: relative_path {str(relative)!r} leaves the input folder")
        image = entry.get("image") if isinstance(entry.get("image"), dict) else {}
        found[slug] = SocketInput(slug, input_dir / relative, image.get("name"))
    missing = [slug for slug in INPUT_SOCKETS if slug not in found]
    if missing:
        raise InputError(where, "missing socket " + " and ".join(repr(s) for s in missing))
    return found


def read_inputs_json(input_dir: Path) -> dict[str, SocketInput] | None:
    """The checked sockets of ``input_dir/inputs.json``, or None when there is no such file."""
    where = input_dir / INPUTS_JSON
    if not where.is_file():
        return None
    try:
        raw = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(where, f"cannot parse ({exc})") from None
    sockets = parse_inputs_json(raw, input_dir, where)
    log.info("%s: sockets %s", where, ", ".join(sorted(sockets)))
    return sockets


def socket_file(socket: SocketInput, image_files: Callable[[Path], list[Path]]) -> Path:
    """The image file of an input socket: the single image in its folder (the listed name wins among several)."""
    files = image_files(socket.folder)
    if not files:
        raise InputError(socket.folder, f"socket {socket.slug!r} is listed in {INPUTS_JSON} but its image file "
                                        "is absent")
    if len(files) > 1:
        named = [f for f in files if socket.image_name and f.name == socket.image_name]
        if len(named) == 1:
            return named[0]
        raise InputError(socket.folder, f"socket {socket.slug!r}: expected one image, found {len(files)}: "
                                        + ", ".join(f.name for f in files))
    return files[0]
