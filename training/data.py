"""Training data: the BONBID tarball extracted to a git-ignored cache and verified, case loading, the fold split."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hieseg.files import file_digest
from hieseg.lesions import STRATA, burden_stratum

REPO = Path(__file__).resolve().parent.parent
TARBALL = REPO.parent / "shared" / "data" / "bonbid2023-train-40cases.tar.gz"
CACHE = REPO / ".cache" / "data"
DATA_ROOT_NAME = "BONBID2023_Train"
SPLITS = Path(__file__).resolve().parent / "splits.json"


def ensure_data(tarball: Path = TARBALL, cache: Path = CACHE, verify: bool = True) -> Path:
    """Extract ``tarball`` into ``cache`` when missing and verify every file against SHA256SUMS beside it."""
    root = cache / DATA_ROOT_NAME
    sums_file = tarball.parent / "SHA256SUMS"
    sums = [ln.split(None, 1) for ln in sums_file.read_text().splitlines() if ln.strip()] if sums_file.is_file() else []
    marker = cache / ".verified"
    missing = [rel for _, rel in sums if not (cache / rel.strip()).is_file()]
    if not root.is_dir() or missing:
        if not tarball.is_file():
            raise FileNotFoundError(f"{tarball}: training tarball not found")
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(cache, filter="data")
        marker.unlink(missing_ok=True)
    if verify and sums and not marker.is_file():
        bad = [rel for digest, rel in sums if file_digest(cache / rel.strip()) != digest]
        if bad:
            raise RuntimeError(f"{len(bad)} extracted files differ from SHA256SUMS, e.g. {bad[0]}")
        marker.write_text(file_digest(sums_file) + "\n")
    return root


@dataclass
class RawCase:
    case_id: str
    adc: np.ndarray
    zadc: np.ndarray
    label: np.ndarray  # bool, native grid
    spacing_zyx: tuple[float, float, float]

    @property
    def brain(self) -> np.ndarray:
        return self.adc > 0

    @property
    def burden(self) -> float:
        return float(self.label.sum() / max(self.brain.sum(), 1))

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing_zyx))


def label_path(root: Path, case_id: str) -> Path:
    return root / "3LABEL" / f"{case_id}-VISIT_01_lesion.mha"


def load_cases(root: Path, ids: list[str] | None = None) -> dict[str, RawCase]:
    # imported here: the GPU machine runs this package from packed arrays, without SimpleITK
    from hieseg.inputs.cases import find_cases
    from hieseg.inputs.io import read_image

    out = {}
    for case in find_cases(root):
        if ids is not None and case.case_id not in ids:
            continue
        adc, geom = read_image(case.adc)
        zadc, _ = read_image(case.zadc)
        label, _ = read_image(label_path(root, case.case_id))
        out[case.case_id] = RawCase(case.case_id, adc, zadc, label > 0.5, geom.spacing_zyx)
    return out


def make_split(burdens: dict[str, float], n_folds: int = 5) -> dict:
    """Stratified folds: cases ordered by stratum (hieseg.lesions.STRATA) and by burden within it are dealt
    round-robin, so fold sizes differ by at most one and every fold spans the burden range (the empty cases
    land in different folds)."""
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    order = sorted(burdens, key=lambda c: (STRATA.index(burden_stratum(burdens[c])), burdens[c], c))
    for i, cid in enumerate(order):
        folds[i % n_folds].append(cid)
    return {
        "n_folds": n_folds,
        "stratified_by": "lesion burden (label voxels / brain voxels, brain = ADC > 0): none, <1%, 1-5%, >5%",
        "folds": [sorted(f) for f in folds],
        "strata": {cid: burden_stratum(b) for cid, b in sorted(burdens.items())},
    }


def load_split(path: Path = SPLITS) -> dict:
    return json.loads(path.read_text())
