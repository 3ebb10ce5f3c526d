"""Probe: how a fusion tuned on single-network OOF maps acts on an average of networks (issue 11, item 1).

The shipped model averages the five fold networks of each member, but every OOF map comes from one network (the
other four trained on the case), so the gap cannot be measured directly. What can be measured out of fold: each
fold was trained twice per member (the CPU run, training/runs/cv, and the GPU run, training/runs/gpu; both on the
other folds only), so a two-network average is out of fold too. This compares, on the 40 cases:

- the shipped choice (tuned on single networks) applied to single-network maps and to two-network averages;
- the choice re-tuned on the averages (in-sample, like the first) and its threshold;
- both procedures nested (chosen on the other folds).

    training/.venv/bin/python -m training.probe_average   # -> training/probe_average.json
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace

import numpy as np

from . import config
from . import tune as T
from .data import REPO
from .study import load_study, make_config

log = logging.getLogger("training")
OUT = REPO / "training" / "probe_average.json"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    study = load_study(make_config())
    runs = {"cv": REPO / "training" / "runs" / "cv", "gpu": REPO / "training" / "runs" / "gpu"}
    cases = []
    for k, ids in enumerate(study.folds):
        for cid in ids:
            c = study.cases[cid]
            maps = {}
            for n in study.members:
                single = np.load(study.oof_path(n, cid, runs["cv"]))["per_flip"].astype(np.float32)
                other = np.load(study.oof_path(n, cid, runs["gpu"]))["per_flip"].astype(np.float32)
                maps[f"{n}@single"] = single
                maps[f"{n}@average"] = (single + other) / 2
            cases.append(T.CaseData.from_arrays(cid, k, maps, c.label, c.brain, c.spacing_zyx, c.burden))
    result = {}
    for label in ("single", "average"):
        members = tuple(f"{n}@{label}" for n in study.members)
        grid = T.score_grid(cases, config.TTA_FLIPS, members=[members], log=log.info)
        cache: dict = {}
        chosen = T.select(grid, range(len(cases)), cache)
        result[label] = {"in_sample_choice": chosen["choice"].describe(grid.flip_axes),
                         "in_sample": T.summarise(T.case_rows(grid, lambda c: chosen["choice"])),
                         "nested": T.summarise(T.nested(grid, cache, log=lambda *_: None)["rows"])}
        if label == "single":
            single_choice = chosen["choice"]
        else:
            transferred = replace(single_choice, members=members)
            result["single_choice_on_average"] = T.summarise(T.case_rows(grid, lambda c: transferred))
        log.info(f"{label}: {result[label]}")
    result["note"] = ("single = one CPU-trained network per member (as the OOF stage sees); average = mean of the "
                      "CPU- and GPU-trained networks of the same fold (both out of fold). in_sample figures are "
                      "optimistic; nested ones honest. single_choice_on_average: the choice tuned on single maps "
                      "applied unchanged to the averages.")
    OUT.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log.info(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
