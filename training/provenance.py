"""The export's provenance gate: a model is exported from a clean tree, or the dirt is recorded (``--allow-dirty``).

A manifest that says "trained from commit X" is only reproducible when the code that trained and exported it is
X's: uncommitted changes to ``training/`` or ``hieseg/`` (the OOF stage runs the runtime's code) make the record
wrong. Files the pipeline itself rewrites (RESULTS.md, the learning-curve pictures) do not count.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .study import TrainingError

REPO = Path(__file__).resolve().parents[1]
CHECKED_PATHS = ("training", "hieseg")
GENERATED = ("training/RESULTS.md", "training/*.png")


class DirtyTreeError(TrainingError):
    """Raised when the tree is dirty and --allow-dirty was not given (the CLI prints it as one line)."""


def _git(*args: str, repo: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout


def dirty_paths(repo: Path = REPO, paths: tuple[str, ...] = CHECKED_PATHS,
                generated: tuple[str, ...] = GENERATED) -> list[str]:
    """Modified, staged, deleted or untracked (not ignored) files under ``paths``, generated outputs excepted."""
    spec = [*paths, *(f":(exclude,glob){g}" for g in generated)]
    out = _git("status", "--porcelain", "--untracked-files=all", "--", *spec, repo=repo)
    return sorted(line[3:].strip() for line in out.splitlines() if line.strip())


def check_clean_tree(allow_dirty: bool, repo: Path = REPO) -> dict:
    """The provenance record of the tree an export runs from; refuses a dirty tree unless ``allow_dirty``.

    Returns ``{"commit", "dirty", "dirty_paths", "allow_dirty"}`` for the manifest (``dirty_paths`` capped at 50);
    raises DirtyTreeError (one line naming the files) when dirty and not allowed.
    """
    commit = _git("rev-parse", "HEAD", repo=repo).strip()
    dirty = dirty_paths(repo)
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise DirtyTreeError(f"export: the tree has uncommitted changes under {'/, '.join(CHECKED_PATHS)}/ "
                             f"({shown}): commit them, or pass --allow-dirty to export anyway (recorded in the "
                             "manifest)")
    return {"commit": commit, "dirty": bool(dirty), "dirty_paths": dirty[:50], "allow_dirty": bool(allow_dirty)}
