"""Probe: how a fusion tuned on single-network OOF maps acts on an average of networks (issue 11, item 1).

The shipped model averages the five fold networks of each member, but every OOF map comes from one network (the
other four trained on the case), so the gap cannot be measured directly. What can be measured out of fold: each
fold was trained twice per member (the CPU run, training/runs/cv, and the GPU run, training/runs/gpu; both on the
other folds only), so a two-network average is out of fold too. A lent GPU trains several networks per fold with
different seeds (training/device_cv.py) and returns their mean OOF maps (workdir ``seeds``) and seed 0's alone
(``seeds-single``): ``--single training/runs/seeds-single --average training/runs/seeds`` compares those.
On the 40 cases:

- the shipped choice (tuned on single networks) applied to single-network maps and to two-network averages;
- the choice re-tuned on the averages (in-sample, like the first) and its threshold;
- both procedures nested (chosen on the other folds).

    training/.venv/bin/python -m training.probes.average   # -> training/probes/average.json
    training/.venv/bin/python -m training.probes.average --single training/runs/seeds-single \
        --average training/runs/seeds --out training/probes/average_seeds.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from training import tune as T  # the Dice-only grid these records were made with

from .. import config
from ..data import REPO
from ..study import load_study, make_config

log = logging.getLogger("training")
OUT = REPO / "training" / "probes" / "average.json"


def _per_flip(study, name: str, case_id: str, workdir: Path) -> np.ndarray:
    return np.load(study.oof_path(name, case_id, workdir))["per_flip"].astype(np.float32)


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_absolute() and path.is_relative_to(REPO) else path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.probes.average", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runs = REPO / "training" / "runs"
    p.add_argument("--single", type=Path, default=runs / "cv", help="workdir of one network per fold")
    p.add_argument("--average", type=Path, nargs="+", default=[runs / "cv", runs / "gpu"],
                   help="workdir(s) whose OOF maps, averaged, are the several-network maps")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    study = load_study(make_config())
    cases = []
    for k, ids in enumerate(study.folds):
        for cid in ids:
            c = study.cases[cid]
            maps = {}
            for n in study.members:
                maps[f"{n}@single"] = _per_flip(study, n, cid, args.single)
                maps[f"{n}@average"] = np.mean([_per_flip(study, n, cid, wd) for wd in args.average], axis=0)
            cases.append(T.CaseData.from_arrays(cid, k, maps, c.label, c.brain, c.spacing_zyx, c.burden))
    result = {}
    for label in ("single", "average"):
        members = tuple(f"{n}@{label}" for n in study.members)
        grid = T.score_grid(cases, config.TTA_FLIPS, members=[members], log=log.info)
        ev = T.evaluate(grid)
        result[label] = {"in_sample_choice": ev["in_sample_choice"].describe(grid.flip_axes),
                         "in_sample": ev["in_sample"], "nested": ev["nested"]}
        if label == "single":
            single_choice = ev["in_sample_choice"]
        else:
            transferred = replace(single_choice, members=members)
            result["single_choice_on_average"] = T.summarise(T.case_rows(grid, lambda c: transferred))
        log.info(f"{label}: {result[label]}")
    result["single_source"] = _relative(args.single)
    result["average_sources"] = [_relative(d) for d in args.average]
    result["note"] = ("single = one network per member and fold (as the OOF stage sees); average = the mean maps of "
                      "several networks of the same fold (all out of fold): of the average sources' maps, and a "
                      "seeds workdir's maps are themselves the mean of its seeds. in_sample figures are optimistic; "
                      "nested ones honest. single_choice_on_average: the choice tuned on single maps applied "
                      "unchanged to the averages.")
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log.info(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
