"""Real BONBID-HIE cases for tests: found beside the repository, extracted into the git-ignored ``.cache/``.

``real_cases_dir()`` returns ``.cache/data/BONBID2023_Train`` (with ``1ADC_ss/``, ``2Z_ADC/``, ``3LABEL/``), extracting
``../shared/data/bonbid2023-train-40cases.tar.gz`` first when needed and checking every file against
``../shared/data/SHA256SUMS``. Without the tarball the calling test is skipped, except in CI (environment variable
``CI`` set to true or 1), where missing real data fails the test: a CI run must not pass by skipping what it checks.
Nothing derived from these files may be committed: write test outputs under ``tmp_path`` or ``.cache/``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

from hieseg.files import file_digest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TARBALL = SHARED_DATA / "bonbid2023-train-40cases.tar.gz"
SUMS = SHARED_DATA / "SHA256SUMS"
CACHE = REPO / ".cache" / "data"
RELEASE = "BONBID2023_Train"


def _expected() -> dict[str, str]:
    """Relative path -> SHA-256 from SHA256SUMS."""
    sums = {}
    for line in SUMS.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def _bad_files(root: Path, sums: dict[str, str]) -> list[str]:
    return [name for name, digest in sums.items() if not (root / name).is_file() or file_digest(root / name) != digest]


def _extract() -> None:
    """Extract into a temporary folder beside the cache, then move into place (safe against a concurrent run)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=CACHE))
    try:
        with tarfile.open(TARBALL) as tar:
            tar.extractall(tmp, filter="data")
        target = CACHE / RELEASE
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp / RELEASE, target)
        except OSError:
            if not target.is_dir():  # another process won the race only if the folder is now there
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _prepare() -> Path | None:
    if not TARBALL.is_file() or not SUMS.is_file():
        return None
    sums = _expected()
    if _bad_files(CACHE, sums):
        _extract()
        bad = _bad_files(CACHE, sums)
        if bad:
            raise RuntimeError(f"{len(bad)} files extracted from {TARBALL} fail SHA256SUMS, e.g. {bad[0]}")
    return CACHE / RELEASE


def in_ci() -> bool:
    """True where the environment says this is a CI run (``CI=true`` or ``CI=1``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the calling test for a missing input, or fail it in CI, where that input is required."""
    if in_ci():
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason)


def real_cases_dir() -> Path:
    """The BONBID release root with the 40 real cases; skips the calling test when the tarball is absent (fails in
    CI)."""
    root = _prepare()
    if root is None:
        skip_unless_ci(f"real cases not available: {TARBALL} (and SHA256SUMS) not found")
    return root


def case_ids() -> list[str]:
    """``MGHNICU_<id>`` of every real case, sorted."""
    return sorted(p.name.split("-")[0] for p in (real_cases_dir() / "3LABEL").iterdir() if p.suffix == ".mha")
