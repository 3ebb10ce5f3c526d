"""Listing the image files of an input folder, saying once why every other entry is skipped.

A file that looks like an image but is not read (an unsupported format, a hidden copy, a broken link, one in a
subfolder) is a warning: it is probably a case the user expects to be segmented. Other entries are info lines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hieseg.inputs.io import IMAGE_SUFFIXES, image_suffix

log = logging.getLogger(__name__)

# Suffixes of medical image files hieseg does not read, or parts of image pairs: skipping one deserves a warning.
IMAGE_LIKE_SUFFIXES = IMAGE_SUFFIXES + (".mhd", ".raw", ".nrrd", ".nhdr", ".dcm", ".ima", ".img", ".hdr", ".mgz",
                                        ".mnc", ".gz", ".zraw")
_SUPPORTED = ", ".join(IMAGE_SUFFIXES)
_logged: set[tuple[str, str]] = set()


def looks_like_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_LIKE_SUFFIXES)


def _images_below(folder: Path, limit: int = 1000) -> tuple[int, int]:
    """(entries, image-like files) below ``folder``, counting at most ``limit`` entries."""
    entries = images = 0
    for _, dirs, files in os.walk(folder):
        for name in files:
            entries += 1
            images += looks_like_image(name)
        entries += len(dirs)
        if entries >= limit:
            break
    return entries, images


def skip_reason(entry: Path) -> tuple[str, bool] | None:
    """Why ``entry`` of an input folder is not read as an image, and whether that deserves a warning; None when
    it is read."""
    name = entry.name
    image_like = looks_like_image(name)
    if entry.is_symlink() and not entry.exists():
        return f"broken symbolic link (its target {os.readlink(entry)} does not exist)", image_like
    if name.startswith("."):
        return ("hidden folder" if entry.is_dir() else "hidden file") + " (names starting with '.' are skipped)", \
            image_like
    if entry.is_dir():
        if image_like:
            return "a folder named like an image, not an image file", True
        entries, images = _images_below(entry)
        what = f"{images} image-like file(s)" if images else f"{entries} entr{'y' if entries == 1 else 'ies'}"
        return (f"a subfolder ({what} inside): only files directly in {entry.parent.name}/ are read",
                images > 0)
    if not entry.is_file():
        return "not a regular file", image_like
    if image_suffix(entry) is None:
        if image_like:
            return f"unsupported image format (convert it to one of {_SUPPORTED})", True
        return f"not an image file (expected {_SUPPORTED})", False
    return None


def image_files(folder: Path, log_skipped: bool = True) -> list[Path]:
    """Supported image files directly in ``folder``, sorted; every other entry is logged once with the reason
    (unless ``log_skipped`` is false: e.g. a predictions folder, whose reports/ and summary.csv are expected)."""
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        skipped = skip_reason(entry)
        if skipped is None:
            found.append(entry)
            continue
        reason, warn = skipped
        if log_skipped and (str(entry), reason) not in _logged:
            _logged.add((str(entry), reason))
            log.log(logging.WARNING if warn else logging.INFO, "skipped %s: %s", entry, reason)
    return found
