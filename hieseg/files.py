"""The write path that cannot lie: every output file is staged, made durable, verified, then renamed into place.

- A file is first written to a temporary in its destination folder (``.hieseg-tmp-<pid>-<random>-<name>``), flushed
  and fsync'ed, and verified: an image is read back (size, spacing, origin, direction and every voxel must match),
  other files must have the expected length. SimpleITK reports no error when the disk fills up (it leaves a 0-byte
  file), so nothing is trusted that was not read back.
- ``OutputSet`` commits a case's files together: all are staged first, renamed only when every one is verified,
  and all temporaries are removed when anything fails, so an error never leaves a mask without its report.
- A full disk or an exceeded quota is one line: ``no space left on <mount> while writing <file>``.
- ``preflight`` runs before the model loads: output folders created, no symbolic link leading out of the output
  folder, leftover temporaries of interrupted runs removed, and a real test write (fsync'ed) in each folder.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from hieseg.errors import ModelError, OutputError

log = logging.getLogger(__name__)

TEMP_PREFIX = ".hieseg-tmp-"
# The preflight test write: more than a case's mask and report take on real data (a few KiB each, compressed),
# so a disk with only a few KiB left fails before the model loads instead of after the inference.
PROBE_BYTES = 64 * 1024
# Temporaries whose process is gone are removed at the start of a run; ones of a live process only when older
# than this (a PID reused, or a run in another container that shares the folder and crashed long ago).
STALE_SECONDS = 24 * 3600
_OURS = re.compile(r"^\.hieseg-tmp-(\d+)-[0-9a-f]{8}-.+$")
# Temporaries of earlier versions (mkstemp names: '.<name>.<8 random>.tmp<suffix>', '.hieseg-write-test-<8>').
_LEGACY = re.compile(r"^(\..+\.[a-z0-9_]{8}\.tmp(\.nii\.gz|\.mha|\.nii)?|\.hieseg-write-test-[a-z0-9_]{8})$")
_NO_SPACE = {errno.ENOSPC: "", errno.EDQUOT: " (disk quota exceeded)"}


def mount_point(path: Path) -> Path:
    """The mount point holding ``path`` (the nearest existing ancestor's file system)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def write_error(exc: OSError, final: Path) -> OutputError:
    """One line for an OS error while writing ``final``: the disk-full and quota cases in words."""
    if exc.errno in _NO_SPACE:
        return OutputError(f"no space left on {mount_point(final.parent)} while writing {final}"
                           f"{_NO_SPACE[exc.errno]}")
    return OutputError(f"{final}: cannot write ({exc.strerror or exc})")


def temp_path(final: Path) -> Path:
    return final.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{final.name}"


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the files themselves are synced
        pass
    finally:
        os.close(fd)


def _write_durable(data: bytes, tmp: Path) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _probe(folder: Path, nbytes: int) -> None:
    """Write and sync ``nbytes`` in ``folder`` (then remove them): the OS tells whether there is room."""
    probe = temp_path(folder / "write-test")
    try:
        _write_durable(b"\0" * nbytes, probe)
    finally:
        probe.unlink(missing_ok=True)


def stage_bytes(data: bytes, final: Path) -> Path:
    """``data`` durably in a temporary beside ``final``; its length verified. Returns the temporary."""
    tmp = temp_path(final)
    try:
        _write_durable(data, tmp)
        size = tmp.stat().st_size
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, final) from None
    if size != len(data):
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{final}: written {size} of {len(data)} bytes")
    return tmp


def _same_image(written: sitk.Image, expected: sitk.Image) -> str:
    """What differs between a re-read image and the one meant to be written ('' when nothing)."""
    if written.GetSize() != expected.GetSize():
        return f"size {written.GetSize()} instead of {expected.GetSize()}"
    if written.GetPixelID() != expected.GetPixelID():
        return f"pixel type {written.GetPixelIDTypeAsString()} instead of {expected.GetPixelIDTypeAsString()}"
    for what in ("Spacing", "Origin", "Direction"):
        a, b = getattr(written, f"Get{what}")(), getattr(expected, f"Get{what}")()
        if not np.allclose(a, b, rtol=1e-5, atol=1e-4):  # NIfTI stores the affine in float32
            return f"{what.lower()} {a} instead of {b}"
    if not np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected)):
        return "voxel values differ"
    return ""


def stage_image(image: sitk.Image, final: Path, compress: bool = True) -> Path:
    """``image`` in a temporary beside ``final`` (its format from ``final``'s suffix), synced and read back."""
    tmp = temp_path(final)
    # SimpleITK picks the writer from the suffix: keep the final name's (.mha, .nii, .nii.gz) on the temporary.
    try:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        fsync_file(tmp)
        problem = _same_image(sitk.ReadImage(str(tmp)), image)
    except (RuntimeError, OSError) as exc:
        problem = (exc.strerror if isinstance(exc, OSError) else None) or "could not be written or read back"
    if problem:
        tmp.unlink(missing_ok=True)
        nbytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
        try:  # ITK does not say why a write failed (a full disk even passes silently): ask the OS
            _probe(final.parent, min(max(nbytes, PROBE_BYTES), 8 * 2**20))
        except OSError as exc:
            raise write_error(exc, final) from None
        raise OutputError(f"{final}: the written image failed verification ({problem})")
    return tmp


def commit(staged: list[tuple[Path, Path]]) -> None:
    """Rename staged temporaries onto their final names, in order; on failure undo what was renamed."""
    done: list[Path] = []
    try:
        for tmp, final in staged:
            os.replace(tmp, final)
            done.append(final)
    except OSError as exc:
        for final in done:
            final.unlink(missing_ok=True)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        failed = staged[len(done)][1]
        raise write_error(exc, failed) from None
    for folder in {final.parent for _, final in staged}:
        fsync_dir(folder)


class OutputSet:
    """Files committed together: stage each, then ``commit()``; leaving the ``with`` block uncommitted (an error)
    removes every temporary, so either all of a case's files appear or none does."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> "OutputSet":
        return self

    def add_bytes(self, data: bytes, final: Path) -> None:
        _mkdir(final.parent)
        self.staged.append((stage_bytes(data, final), final))

    def add_image(self, image: sitk.Image, final: Path, compress: bool = True) -> None:
        _mkdir(final.parent)
        self.staged.append((stage_image(image, final, compress), final))

    def commit(self) -> None:
        staged, self.staged = self.staged, []
        commit(staged)

    def __exit__(self, *exc_info) -> None:
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)
        self.staged = []


def write_bytes_atomic(data: bytes, final: str | Path) -> Path:
    final = Path(final)
    with OutputSet() as out:
        out.add_bytes(data, final)
        out.commit()
    return final


def write_image_atomic(image: sitk.Image, final: str | Path, compress: bool = True) -> Path:
    final = Path(final)
    with OutputSet() as out:
        out.add_image(image, final, compress)
        out.commit()
    return final


# ----------------------------------------------------------------------------------------------- preflight


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """A temporary this tool left behind: of an earlier version, of a process that is gone, or very old."""
    if _LEGACY.match(path.name):
        return True
    match = _OURS.match(path.name)
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    return not _pid_alive(pid) or age > STALE_SECONDS


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove this tool's leftover temporaries directly in ``folder``; each removal is logged."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        if path.name.startswith(".") and not path.is_dir() and is_stale_temporary(path):
            try:
                path.unlink()
            except OSError as exc:
                log.warning("%s: cannot remove a leftover temporary file (%s)", path, exc.strerror or exc)
                continue
            log.info("removed %s, a temporary file left by an interrupted run", path)
            removed.append(path)
    return removed


def _existing_part(root: Path, folder: Path) -> Path:
    """The deepest existing folder on the way from ``root`` to ``folder``; refuses a file in the way and a
    symbolic link that leads out of ``root`` (a pre-existing ``reports`` link must not take the outputs away)."""
    real_root = root.resolve()
    current = root
    try:
        parts = folder.relative_to(root).parts
    except ValueError:  # not under root: check it on its own
        return folder if folder.is_dir() else root
    for part in parts:
        nxt = current / part
        if nxt.is_symlink():
            target = nxt.resolve()
            if target != real_root and real_root not in target.parents:
                raise OutputError(f"{nxt}: a symbolic link to {target}, outside the output folder {root}; refusing "
                                  "to write through it (remove the link or choose another output folder)")
        if not nxt.exists():
            return current
        if not nxt.is_dir():
            raise OutputError(f"{nxt}: cannot write output here (a file stands where a folder is needed)")
        current = nxt
    return current


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{folder}: cannot write output here (a file stands where a folder is needed)") from None
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise write_error(exc, folder) from None
        raise OutputError(f"{folder}: cannot write output here ({exc.strerror or exc})") from None
    if not folder.is_dir():
        raise OutputError(f"{folder}: cannot write output here (not a folder)")


def preflight(root: Path, folders: Iterable[Path] = ()) -> None:
    """Make sure ``root`` and the ``folders`` under it can take this run's files, before any model is loaded.

    Only ``root`` is created; a missing subfolder is checked through its deepest existing parent (it is created
    when the first file is committed), so a refused run leaves no empty folders behind.
    """
    root = Path(root)
    _mkdir(root)
    for folder in dict.fromkeys(_existing_part(root, Path(f)) for f in [root, *folders]):
        remove_stale_temporaries(folder)
        try:
            _probe(folder, PROBE_BYTES)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise OutputError(f"no space left on {mount_point(folder)} while writing a test file in {folder} "
                                  f"(checked before the model loads){_NO_SPACE[exc.errno]}") from None
            raise OutputError(f"{folder}: cannot write output here ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------------------------- digests
# The one SHA-256 of the project: model files, manifests, data archives and wheels are all checked with these.


def file_digest(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed (``hashlib.file_digest``: no whole-file copy in memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def bytes_digest(data: bytes) -> str:
    """Hex SHA-256 of bytes already in memory."""
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, sha256: str) -> bytes:
    """The model file's bytes, refused when they do not hash to the manifest's sha256.

    Sessions are built from these same bytes, so a file swapped after the check cannot be run.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
    actual = bytes_digest(data)
    if actual != sha256.lower():
        raise ModelError(f"{path}: checksum mismatch (sha256 {actual[:12]}…, manifest says {sha256[:12]}…): "
                         "the model file was modified or corrupted")
    return data
