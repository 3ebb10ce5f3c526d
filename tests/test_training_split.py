"""The committed cross-validation split (training/splits.json) against the data it was made from.

The lesion burden of every real case is recomputed here from the files (label voxels over brain voxels, brain =
ADC > 0, read with SimpleITK), its stratum from the thresholds written out below; the committed strata must equal
them, ``training.data.make_split`` must reproduce the committed file exactly, and the folds must spread the strata.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from realdata import real_cases_dir

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the training package lives at the repo root, beside hieseg/
    sys.path.insert(0, str(REPO))
SPLITS = REPO / "training" / "splits.json"


def _stratum(burden: float) -> str:
    """none: no label voxel; <1%: below 1% of the brain; 1-5%: 1% to 5% inclusive; >5%: above."""
    if burden == 0:
        return "none"
    return "<1%" if burden < 0.01 else "1-5%" if burden <= 0.05 else ">5%"


@pytest.fixture(scope="module")
def burdens() -> dict[str, float]:
    root = real_cases_dir()
    out = {}
    for label_file in sorted((root / "3LABEL").glob("*.mha")):
        case_id = label_file.name.split("-")[0]
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        adc = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "1ADC_ss" / f"{case_id}-VISIT_01-ADC_ss.mha")))
        out[case_id] = float(np.count_nonzero(label > 0.5) / np.count_nonzero(adc > 0))
    assert len(out) == 40
    return out


@pytest.fixture(scope="module")
def split() -> dict:
    return json.loads(SPLITS.read_text())


def test_split_is_a_partition_of_the_40_cases(split, burdens):
    folds = split["folds"]
    assert split["n_folds"] == len(folds) == 5
    ids = [c for f in folds for c in f]
    assert len(ids) == len(set(ids)) == 40 and set(ids) == set(burdens)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_committed_strata_are_the_data_s(split, burdens):
    assert split["strata"] == {c: _stratum(b) for c, b in burdens.items()}
    assert Counter(split["strata"].values()) == {"none": 3, "<1%": 23, "1-5%": 6, ">5%": 8}


def test_make_split_reproduces_the_committed_file(split, burdens):
    from training.data import make_split

    assert make_split(burdens) == split


def test_split_spreads_strata(split, burdens):
    strata = {c: _stratum(b) for c, b in burdens.items()}
    empty_folds = [k for k, f in enumerate(split["folds"]) for c in f if strata[c] == "none"]
    assert len(empty_folds) == 3 and len(set(empty_folds)) == 3
    total = Counter(strata.values())
    for fold in split["folds"]:
        counts = Counter(strata[c] for c in fold)
        for name, n in total.items():
            if name != "none":  # each stratum within one case of an even share
                assert abs(counts[name] - n / 5) <= 1, (name, counts)
