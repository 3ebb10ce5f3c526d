"""Why an image file cannot be read, said in words from its own bytes (ITK's errors name its source files).

``precheck`` runs before ITK touches a file and catches what a header shows cheaply: an empty file, a MetaImage
without pixel data, truncated, or pointing at a missing data file, an uncompressed NIfTI shorter than its header
promises, more voxels than can be processed. ``explain`` turns an ITK failure into a cause (a sheared NIfTI
affine, truncated gzip data, ...) and never returns ITK's source path.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

# A hard limit, checked on the header before any pixel is read: 10^9 float32 voxels are 4 GB per map and the
# pair alone would not fit the machines this runs on. Everything below is handled (see hieseg.inputs.domain).
MAX_VOXELS = 10**9

_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}
_HEADER_LINE = re.compile(rb"^\s*([A-Za-z_][A-Za-z0-9_\[\]]*)\s*[=:]\s*(.*?)\s*$")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def too_many_voxels(size: tuple[int, ...], components: int = 1) -> str | None:
    voxels = math.prod(int(n) for n in size) * max(int(components), 1)
    if voxels > MAX_VOXELS:
        return (f"{voxels:.3g} voxels (size {' x '.join(map(str, size))}) exceed the limit of {MAX_VOXELS:.0e}: "
                "too large to process; crop or resample the image first")
    return None


def metaimage_header(data: bytes) -> tuple[dict[str, str], int] | None:
    """Key/value lines of a MetaImage header and the byte offset where its pixel data starts; None when the bytes
    do not start like a MetaImage header."""
    fields: dict[str, str] = {}
    offset = 0
    for line in data.splitlines(keepends=True):
        if not line.strip():
            offset += len(line)
            continue
        match = _HEADER_LINE.match(line.rstrip(b"\r\n"))
        if not match:
            return None if not fields else (fields, -1)
        try:
            key, value = match.group(1).decode("ascii"), match.group(2).decode("ascii", "replace")
        except UnicodeDecodeError:
            return None
        fields[key] = value
        offset += len(line)
        if key == "ElementDataFile":
            return fields, offset
    return (fields, -1) if fields else None


def _metaimage_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    parsed = metaimage_header(head)
    if parsed is None or "NDims" not in parsed[0]:
        return "not a MetaImage file (no 'NDims = ...' header at its start): garbage or another format"
    fields, data_start = parsed
    if data_start < 0:
        return "MetaImage header incomplete (no 'ElementDataFile = ...' line)"
    try:
        dims = tuple(int(v) for v in fields.get("DimSize", "").split())
    except ValueError:
        return f"MetaImage header has an unreadable DimSize {fields.get('DimSize')!r}"
    if not dims:
        return "MetaImage header has no DimSize"
    channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    problem = too_many_voxels(dims, channels)
    if problem:
        return problem
    element = _MET_BYTES.get(fields.get("ElementType", ""), 0)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    expected = (int(fields["CompressedDataSize"]) if compressed and fields.get("CompressedDataSize", "").isdigit()
                else None if compressed else math.prod(dims) * channels * element)
    source = fields["ElementDataFile"].strip()
    if source == "LOCAL":
        held = size - data_start
        if held == 0:
            return ("no pixel data: the file ends after its header"
                    + (f" (the header says {_plural(expected, 'byte')} follow)" if expected else ""))
        if expected and held < expected:
            return f"truncated data: the header says {_plural(expected, 'byte')} of pixel data, the file holds {held:,}"
        return None
    if source.startswith("LIST") or "%" in source:
        return None
    data_file = path.parent / source
    if not data_file.is_file():
        return f"missing data file {data_file} (named by the header's ElementDataFile)"
    if expected and data_file.stat().st_size < expected:
        return (f"truncated data: the header says {_plural(expected, 'byte')} of pixel data, {data_file.name} "
                f"holds {data_file.stat().st_size:,}")
    return None


def nifti_problem(header: bytes, held: int | None) -> str | None:
    """A NIfTI-1/2 header's own consistency: a complete header, and ``held`` bytes (the whole file, decompressed)
    at least as many as its dimensions and data type promise."""
    if len(header) < 4:
        return "truncated header: fewer than 4 bytes"
    sizes = {struct.unpack(order + "i", header[:4])[0] for order in "<>"} & {348, 540}
    if not sizes:
        return "not a NIfTI file (its first 4 bytes are not a NIfTI header size)"
    fields = _nifti_fields(header)
    if fields is None:
        return f"truncated header: {len(header)} of {min(sizes)} bytes"
    dims = fields[1]
    if not 1 <= dims[0] <= 7:
        return f"NIfTI header has an invalid dimension count {dims[0]}"
    problem = too_many_voxels(tuple(max(int(n), 1) for n in dims[1:dims[0] + 1]))
    if problem:
        return problem
    expected = _nifti_total_bytes(header)
    if held is not None and expected is not None and held < expected:
        return f"truncated data: the header says {_plural(expected, 'byte')} in all, the file holds {held:,}"
    return None


def _nifti_fields(header: bytes) -> tuple[int, tuple[int, ...], int, float] | None:
    """(header size, dims, bitpix, vox_offset) of a NIfTI-1/2 header, either byte order; None if not NIfTI."""
    if len(header) < 4:
        return None
    for order in "<>":
        sizeof_hdr = struct.unpack(order + "i", header[:4])[0]
        if sizeof_hdr in (348, 540) and len(header) >= sizeof_hdr:
            if sizeof_hdr == 348:
                return (348, struct.unpack(order + "8h", header[40:56]), struct.unpack(order + "h", header[72:74])[0],
                        struct.unpack(order + "f", header[108:112])[0])
            return (540, struct.unpack(order + "8q", header[16:80]), struct.unpack(order + "h", header[14:16])[0],
                    struct.unpack(order + "q", header[168:176])[0])
    return None


def _nifti_total_bytes(header: bytes) -> int | None:
    fields = _nifti_fields(header)
    if fields is None or not 1 <= fields[1][0] <= 7:
        return None
    _, dims, bitpix, vox_offset = fields
    return int(vox_offset) + math.prod(max(int(n), 1) for n in dims[1:dims[0] + 1]) * max(bitpix, 8) // 8


def precheck(path: Path) -> str | None:
    """A problem visible from the file's size and header, before ITK reads it; None when none is seen."""
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    name = path.name.lower()
    if name.endswith(".mha"):
        return _metaimage_problem(path, size)
    if name.endswith(".nii"):
        with open(path, "rb") as fh:
            return nifti_problem(fh.read(540), size)
    if name.endswith(".nii.gz"):
        return _gzip_trailer_problem(path)
    return None


def _gzip_trailer_problem(path: Path) -> str | None:
    """ITK reads a truncated .nii.gz without an error (the missing voxels come back as zeros). A gzip stream ends
    with its uncompressed length mod 2^32: when that disagrees with the header, decompress it all to find out."""
    try:
        with gzip.open(path, "rb") as fh:
            header = fh.read(540)
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            isize = struct.unpack("<I", fh.read(4))[0]
    except (OSError, EOFError, zlib.error):
        return _gzip_nifti_problem(path)
    problem = nifti_problem(header, None)
    if problem:
        return problem
    expected = _nifti_total_bytes(header)
    if expected is not None and isize != expected % 2**32:
        return _gzip_nifti_problem(path)
    return None


def _gzip_nifti_problem(path: Path) -> str | None:
    try:
        with gzip.open(path, "rb") as fh:
            header = fh.read(540)
            held = len(header)
            for block in iter(lambda: fh.read(1 << 20), b""):
                held += len(block)
    except (OSError, EOFError, zlib.error) as exc:
        text = str(exc).lower()
        if isinstance(exc, EOFError) or "end-of-stream" in text or "truncated" in text:
            return "truncated data: the gzip stream ends early (an incomplete copy or download?)"
        return f"corrupt gzip data ({exc})"
    return nifti_problem(header, held)


def itk_reason(exc: Exception) -> str:
    """The human part of an ITK/SimpleITK error: without 'Exception thrown in ... .cxx:NNN:' and object addresses."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    kept = []
    for line in lines:
        line = re.sub(r"^Exception thrown in .*?:\s*", "", line)
        line = re.sub(r"^\S+\.(cxx|h|hxx|cpp):\d+:\s*", "", line)
        line = re.sub(r"^(sitk::ERROR|ITK ERROR):\s*", "", line)
        line = re.sub(r"^\w+\(0x[0-9a-f]+\):\s*", "", line)
        if line:
            kept.append(line)
    return " ".join(kept)


def explain(path: Path, exc: Exception) -> str:
    """Why ITK could not read ``path``, in words."""
    problem = precheck(path)
    if problem:
        return problem
    reason = itk_reason(exc)
    if "orthonormal" in reason.lower():
        return ("unsupported shear: the NIfTI affine (sform/qform) has sheared or skewed axes, which cannot be "
                "represented as spacing and direction; resample it to an orthogonal grid first")
    if path.name.lower().endswith(".nii.gz"):
        problem = _gzip_nifti_problem(path)
        if problem:
            return problem
    if "unable to determine imageio reader" in reason.lower():
        return "not a readable image: the content matches no supported format (garbage or a different format)"
    return reason or "unreadable or corrupt file"
