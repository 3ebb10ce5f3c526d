"""python -m training.verify: regenerate the shipped model's cross-validation figures from its ONNX files and
fail when they differ from what model/manifest.json claims (a CI step).

It runs the ``oof`` stage (every shipped fold network predicts its own fold's validation cases through the
runtime's ensemble loop) and the ``tune`` stage in a scratch workdir, then checks:

- the nested figure of the shipped member set (``cv_scores.nested_by_member_set``), and, when the shipped choice
  was made among these networks alone, the headline (``cv_scores.ensemble``);
- the shipped choice (weights, flips, threshold, component and empty rules) re-scored on the regenerated OOF maps
  against ``cv_scores.in_sample_optimistic``.

Shipped members from several workdirs (pool names ``<network>@<workdir>``) get one scratch workdir each, named
alike. Networks that competed in the tuning but were not shipped (e.g. a GPU-trained variant) are not in the model
folder; the headline of such a pool is then checked only through the shipped set's own entry, and the output
says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import config
from .data import REPO
from .study import TrainingError, load_study, make_config, open_workdir

log = logging.getLogger("training")

TOLERANCE = 2e-3  # ONNX Runtime's thread-count-dependent rounding can move a voxel at a threshold, not more


def shipped_choice(manifest: dict[str, Any]):
    """The manifest's fusion as a tune.Choice over its pool names ``<network>@<source>``."""
    from .tune import Choice

    weights = manifest["provenance"]["fusion_tuning"]["weights"]
    flips: dict[str, list] = {}
    for m in manifest["members"]:
        flips.setdefault(m["name"].rsplit("_f", 1)[0], m["tta_flips"])
    members = tuple(sorted(weights))
    flip_index = {tuple(f): i for i, f in enumerate(config.TTA_FLIPS)}
    empty = manifest["fusion"].get("empty_case", {})
    return Choice(members=members,
                  flips=tuple(tuple(sorted(flip_index[tuple(f)] for f in flips[p.split("@")[0]])) for p in members),
                  weights=tuple(weights[p] for p in members), threshold=manifest["fusion"]["threshold"],
                  min_component_mm3=manifest["fusion"]["min_component_mm3"],
                  empty_max_probability_below=empty.get("max_probability_below", 0.0),
                  empty_min_lesion_mm3=empty.get("min_lesion_mm3", 0.0))


def compare(name: str, got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Lines naming each of Dice / MASD / NSD that differs by more than TOLERANCE."""
    bad = []
    for k in ("dice", "masd", "nsd"):
        if want.get(k) is None or got.get(k) is None or abs(float(got[k]) - float(want[k])) > TOLERANCE:
            bad.append(f"{name} {k}: regenerated {got.get(k)} vs manifest {want.get(k)}")
    log.info(f"  {name}: regenerated dice {got['dice']:.4f} masd {got['masd']:.2f} nsd {got['nsd']:.4f} | "
             f"manifest dice {want['dice']:.4f} masd {want['masd']:.2f} nsd {want['nsd']:.4f}")
    return bad


def verify(model_dir: Path, workdir: Path, threads: int = 2) -> list[str]:
    """Regenerate and compare; returns the differences (empty: the manifest's figures hold)."""
    from hieseg.evaluation.metrics import case_metrics

    from . import stages
    from . import tune as T

    manifest = json.loads((model_dir / "manifest.json").read_text())
    weights = manifest["provenance"]["fusion_tuning"]["weights"]
    by_source: dict[str, list[str]] = {}
    for p in sorted(weights):
        network, source = p.split("@", 1)
        by_source.setdefault(source, []).append(network)
    # one scratch workdir per source, named as the source, so that pool names match the manifest's
    for source, networks in by_source.items():
        cfg = make_config(workdir=workdir / source, model_dir=model_dir, members=networks, threads=threads)
        open_workdir(cfg, fresh=False)
        study = load_study(cfg)
        stages.oof(study)
    first, *others = by_source
    if others:  # the first source's workdir tunes, the others compete through --compare
        cfg = make_config(workdir=workdir / first, model_dir=model_dir,
                          members=sorted(n for v in by_source.values() for n in v),
                          compare=[workdir / o for o in others], threads=threads)
        study = load_study(cfg)
    tuning = stages.tune(study)
    scores = manifest["provenance"]["cv_scores"]
    set_name = "+".join(sorted(weights))
    bad = compare(f"nested, {set_name}", tuning["nested_by_member_set"][set_name],
                  scores["nested_by_member_set"][set_name])
    pool = set(scores["nested_by_member_set"])
    if pool == {set_name}:
        bad += compare("nested headline", tuning["scores"]["nested"]["overall"], scores["ensemble"]["overall"])
    else:
        log.info(f"  the headline's pool also had {sorted(pool - {set_name})}, not shipped: checked through "
                 f"the shipped set's entry only")
    choice = shipped_choice(manifest)
    cases = stages.oof_cases(study, study.finished_folds())
    rows = [case_metrics(c.truth, T.mask_of(c, choice), c.spacing_zyx) for c in cases]
    bad += compare("shipped choice, in-sample", T.summarise(rows), scores["in_sample_optimistic"]["overall"])
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "model")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        with tempfile.TemporaryDirectory(prefix="hieseg-verify-") as tmp:
            bad = verify(args.model_dir, args.workdir or Path(tmp), args.threads)
    except TrainingError as exc:
        log.error(f"error: {exc}")
        return 2
    for line in bad:
        log.error(f"MISMATCH {line}")
    log.info("the manifest's cross-validation figures hold" if not bad else f"{len(bad)} figure(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
