"""Probe (issue 11, item 1): does a fusion that needs both members to agree beat the weighted mean?

Most false-positive voxels lie in components far from any lesion (the issue's error anatomy), and the candidate
probe found member disagreement informative on one network set. A fusion that demands agreement uses it without a
learned stage. Three fusions of the 3D and the 2D member's probabilities (p3, p2), each with the tuning's weight
grid (w = the 3D member's share) and threshold grid:

- ``mean``: w p3 + (1 - w) p2, the runtime's fusion today;
- ``geometric``: p3^w p2^(1 - w), a soft AND (low when either member is low);
- ``vote``: a per-member threshold and both must fire (LADP's vote, for two members), written as
  min(p3 / (2 w), p2 / (2 (1 - w))) at the grid's threshold t: p3 >= 2 w t and p2 >= 2 (1 - w) t.

Everything else is the tuning's (TTA flips, minimum component, empty rules, the one-SE choice), each nested the
same way (chosen on the other folds). Several network sets trained alike are probed: a fusion that wins on one
only is noise.

    training/.venv/bin/python -m training.probes.fusion   # -> training/probes/fusion.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from training import tune as T  # the Dice-only grid these records were made with

from .. import config
from ..data import REPO
from ..study import load_study, make_config

log = logging.getLogger("training")
OUT = REPO / "training" / "probes" / "fusion.json"
MODES = ("mean", "geometric", "vote")
# the vote's per-member thresholds are 2 w t and 2 (1 - w) t: its choice sat at the tuning grid's lowest t (0.03),
# so it gets three lower points too (the other fusions keep the tuning's grid: "mean" reproduces the headline)
VOTE_THRESHOLDS = (0.005, 0.01, 0.02, *T.THRESHOLDS)
RUNS = REPO / "training" / "runs"
DEFAULT_SETS = ("tvp3d+cv", "cv+cv", "seeds-single+seeds-single", "gpu+gpu")


def fuse(mode: str, p3: np.ndarray, p2: np.ndarray, w: float) -> np.ndarray:
    """One fused map of two members' probabilities (``w``: the first member's share)."""
    if mode == "mean":
        return w * p3 + (1.0 - w) * p2
    if mode == "geometric":
        return np.exp(w * np.log(np.maximum(p3, 1e-6)) + (1.0 - w) * np.log(np.maximum(p2, 1e-6)))
    if mode == "vote":
        return np.minimum(p3 / (2.0 * w), p2 / (2.0 * (1.0 - w)))
    raise ValueError(f"unknown fusion {mode!r}")


def case_class(mode: str) -> type[T.CaseData]:
    """CaseData whose fused map is the given fusion (the tuning's grid and nesting run unchanged on it)."""
    class Fused(T.CaseData):
        def fused(self, choice_members, flips, weights) -> np.ndarray:
            (m3, m2), (f3, f2), (w, _) = choice_members, flips, weights
            return fuse(mode, self.member_prob(m3, f3), self.member_prob(m2, f2), w).astype(np.float32)
    return Fused


def set_maps(study, net_set: str) -> tuple[tuple[str, str], dict[str, tuple[int, dict[str, np.ndarray]]]]:
    """A network set ``SRC3D+SRC2D``'s pool names and, per case, its fold and the two members' OOF per-flip maps
    (from the workdirs training/runs/SRC3D and training/runs/SRC2D). A source may list several workdirs,
    ``a,b,c``: their maps' mean (networks of the same fold, e.g. a variant's seeds; still out of fold)."""
    three, two = study.members  # config.MEMBERS' order: the 3D member, then the 2D one
    src3, src2 = net_set.split("+")
    names = (f"{three}@{src3}", f"{two}@{src2}")

    def oof(member: str, src: str, cid: str) -> np.ndarray:
        return np.mean([np.load(study.oof_path(member, cid, RUNS / d))["per_flip"] for d in src.split(",")], axis=0,
                       dtype=np.float32)

    maps = {cid: (k, {names[0]: oof(three, src3, cid), names[1]: oof(two, src2, cid)})
            for k, ids in enumerate(study.folds) for cid in ids}
    return names, maps


def set_cases(study, maps: dict, cls: type[T.CaseData] = T.CaseData) -> list[T.CaseData]:
    """The tuning's cases of a network set's maps (``set_maps``), in fold order."""
    return [cls.from_arrays(cid, k, pf, study.cases[cid].label, study.cases[cid].brain, study.cases[cid].spacing_zyx,
                            study.cases[cid].burden) for cid, (k, pf) in maps.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.probes.fusion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS),
                   help="network sets SRC3D+SRC2D (workdirs under training/runs of the 3D and the 2D member; "
                        "a,b,c: the mean of several workdirs' maps)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="fusions to (re)compute; the others' results already in --out are kept")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    study = load_study(make_config())
    result: dict = json.loads(args.out.read_text()) if args.out.is_file() else {"sets": {}}
    result["modes"] = list(MODES)
    for net_set in args.sets:
        names, maps = set_maps(study, net_set)
        out = result["sets"].get(net_set, {})
        for mode in args.modes:
            cases = set_cases(study, maps, case_class(mode))
            grid = T.score_grid(cases, config.TTA_FLIPS, members=[names], log=lambda *_: None,
                                thresholds=VOTE_THRESHOLDS if mode == "vote" else T.THRESHOLDS)
            ev = T.evaluate(grid)
            out[mode] = {"nested": ev["nested"], "in_sample": ev["in_sample"],
                         "in_sample_choice": ev["in_sample_choice"].describe(grid.flip_axes),
                         "per_fold_choice": ev["per_fold_choice"],
                         "nested_rows": [{k: r[k] for k in ("case_id", "fold", "stratum", "dice", "masd", "nsd")}
                                         for r in ev["nested_rows"]]}
            n = out[mode]["nested"]
            log.info(f"{net_set} {mode}: nested Dice {n['dice']:.4f} MASD {n['masd']:.2f} NSD {n['nsd']:.3f}")
        result["sets"][net_set] = {m: out[m] for m in MODES if m in out}
    result["note"] = ("Nested = chosen on the other folds (honest); in_sample = chosen on all 40 (optimistic). Each "
                      "mode gets the same grids and one-SE rule; vote's weight sets the per-member thresholds "
                      "(p3 >= 2 w t and p2 >= 2 (1 - w) t), its threshold grid extended down to 0.005.")
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log.info(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
