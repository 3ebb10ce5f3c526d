"""The committed cross-validation split (case ids only): 5 folds, every case once, strata spread."""

import json
from collections import Counter
from pathlib import Path

SPLITS = Path(__file__).resolve().parent.parent / "training" / "splits.json"


def test_split_is_a_partition_of_40_cases():
    split = json.loads(SPLITS.read_text())
    folds = split["folds"]
    assert split["n_folds"] == len(folds) == 5
    ids = [c for f in folds for c in f]
    assert len(ids) == len(set(ids)) == 40
    assert all(c.startswith("MGHNICU_") for c in ids)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_split_spreads_strata():
    split = json.loads(SPLITS.read_text())
    strata = split["strata"]
    assert set(strata) == {c for f in split["folds"] for c in f}
    empty_folds = [k for k, f in enumerate(split["folds"]) for c in f if strata[c] == "empty"]
    assert len(empty_folds) == 3 and len(set(empty_folds)) == 3
    total = Counter(strata.values())
    for fold in split["folds"]:
        counts = Counter(strata[c] for c in fold)
        for name, n in total.items():
            if name != "empty":  # each stratum within one case of an even share
                assert abs(counts[name] - n / 5) <= 1, (name, counts)
