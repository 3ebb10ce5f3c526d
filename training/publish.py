"""Atomic publication of a model folder (torch-free, so it is tested without the training environment).

``export_all`` writes the new networks and manifest into a sibling staging folder (``model.new-<pid>``), validates
and loads it there, and ``publish_model_dir`` swaps it in: the staged files are fsynced, then the two folders are
exchanged in one ``renameat2(RENAME_EXCHANGE)`` call where the kernel has it (Linux), so ``model`` is always either
the old complete folder or the new one. Without it, the old folder is renamed aside (``model.old-<pid>``) and the new
one into place; a failure between the two renames puts the old one back, and ``recover_model_dir`` (run before each
export) restores it if the process died in that window. The old folder is removed only once the new one is in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from hieseg.files import fsync_dir, fsync_file

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def staging_dir(target: Path) -> Path:
    """The fresh, empty sibling folder a new model is written into before it is published."""
    staged = target.parent / f"{target.name}.new-{os.getpid()}"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    return staged


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            fsync_file(path)
    fsync_dir(folder)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem or kernel lacks it
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _swap_by_renames(staged: Path, target: Path, old: Path) -> None:
    os.rename(target, old)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(old, target)  # put the old model back
        raise


def publish_model_dir(staged: Path, target: Path) -> None:
    """Replace ``target`` by the complete folder ``staged`` (same parent) so that at every instant ``target`` is
    the old complete model or the new one; ``staged`` is gone afterwards."""
    staged, target = Path(staged), Path(target)
    if staged.parent.resolve() != target.parent.resolve():
        raise ValueError(f"{staged}: must be a sibling of {target} (a rename cannot cross folders)")
    _fsync_tree(staged)
    if not target.exists():
        os.rename(staged, target)
        fsync_dir(target.parent)
        return
    old = target.parent / f"{target.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    if _exchange(staged, target):
        os.rename(staged, old)  # staged now holds the old model
    else:
        _swap_by_renames(staged, target, old)
    fsync_dir(target.parent)
    shutil.rmtree(old)


def recover_model_dir(target: Path) -> None:
    """Undo what an interrupted export left beside ``target``: restore the old model if the process died between
    the two fallback renames (``target`` missing, ``target.old-*`` present), then drop stale staging folders."""
    target = Path(target)
    olds = sorted(target.parent.glob(f"{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds:
        os.rename(olds.pop(), target)
    for stale in [*olds, *target.parent.glob(f"{target.name}.new-*")]:
        shutil.rmtree(stale, ignore_errors=True)
