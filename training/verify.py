"""python -m training.verify: regenerate every cross-validation figure the project reports from the shipped ONNX
files and fail when one differs (a CI step).

It runs the ``oof`` stage (every shipped fold network predicts its own fold's validation cases through the
runtime's ensemble loop) and the ``tune`` stage (the pre-registered candidates of training/pool.json, chosen on
the pool's objective, nested) in a scratch workdir, then checks:

- the regenerated tuning record against the committed one (``training/tuning.json``, written by the export):
  every figure, the headline (nested, the pool's objective), the other objectives, each member set, every fold,
  stratum and case, the choice of each outer fold and the shipped choice;
- that model/manifest.json ships that choice and quotes those figures (``provenance.cv_scores``);
- that training/RESULTS.md, MODEL_CARD.md and the README's accuracy block are what the report renders from them.

Shipped members from several workdirs (pool names ``<network>@<workdir>``) get one scratch workdir each, named
alike, so that the regenerated pool names match the record's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from .data import REPO
from .study import TrainingError, load_study, make_config, open_workdir

log = logging.getLogger("training")

TOLERANCE = 2e-3  # means over cases: ONNX Runtime's thread-count-dependent rounding can move a voxel, not more
CASE_TOLERANCE = {"dice": 0.05, "nsd": 0.05, "masd": 0.5}  # one case's figures: one voxel of a small lesion
IGNORED = {"sources"}  # where the OOF maps were written: a scratch folder here


def differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Every leaf of the record ``want`` that ``got`` does not reproduce: numbers within TOLERANCE (a per-case
    figure within CASE_TOLERANCE), everything else exactly."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: regenerated {type(got).__name__}, recorded a mapping"]
        out = [f"{path}.{k}: missing from the regenerated record" for k in want if k not in got and k not in IGNORED]
        out += [f"{path}.{k}: not in the committed record" for k in got if k not in want and k not in IGNORED]
        for k in want:
            if k in got and k not in IGNORED:
                out += differences(got[k], want[k], f"{path}.{k}" if path else k)
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: regenerated {got!r:.80} vs recorded {want!r:.80}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{path}[{i}]")]
    if isinstance(want, float) or isinstance(got, float):
        if want is None or got is None or isinstance(want, bool) or isinstance(got, bool):
            return [] if got == want else [f"{path}: regenerated {got} vs recorded {want}"]
        metric = path.rsplit(".", 1)[-1]
        tol = CASE_TOLERANCE.get(metric, TOLERANCE) if path.startswith("per_case") else TOLERANCE
        return [] if abs(float(got) - float(want)) <= tol else [f"{path}: regenerated {got} vs recorded {want}"]
    return [] if got == want else [f"{path}: regenerated {got!r} vs recorded {want!r}"]


def manifest_differences(manifest: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The manifest must ship the record's choice and quote its figures (both rounded by training.figures)."""
    fusion, f = manifest["fusion"], record["fusion"]
    want_fusion = {"threshold": f["threshold"], "min_component_mm3": f["min_component_mm3"],
                   "empty_case": {"max_probability_below": f["empty_max_probability_below"],
                                  "min_lesion_mm3": f["empty_min_lesion_mm3"]},
                   **({"component_filter": f["component_filter"]} if f.get("component_filter") else {})}
    out = [] if fusion == want_fusion else [f"manifest fusion {fusion} vs the record's choice {want_fusion}"]
    prov = manifest["provenance"]
    if prov["fusion_tuning"]["weights"] != f["weights"]:
        out.append(f"manifest weights {prov['fusion_tuning']['weights']} vs the record's {f['weights']}")
    shipped = {m["name"].rsplit("_f", 1)[0] for m in manifest["members"]}
    if shipped != {p.split("@", 1)[0] for p in f["members"]}:
        out.append(f"manifest members {sorted(shipped)} vs the record's {f['members']}")
    cv, sc = prov["cv_scores"], record["scores"]
    pairs = {"ensemble": sc["nested"] or sc["in_sample"], "baseline_zadc_below_-2": sc["baseline"],
             "in_sample_optimistic": sc["in_sample"], "margins_over_rule": record.get("margins"),
             "nested_by_member_set": record.get("nested_by_member_set"),
             "nested_choice_spread": record.get("nested_choice_spread"),
             "nested_by_objective": {k: {"overall": v["overall"], "margins": v["margins"]}
                                     for k, v in (record.get("nested_by_objective") or {}).items()}}
    out += [f"manifest cv_scores.{k} differs from the record" for k, v in pairs.items() if cv.get(k) != v]
    return out


def rendered_differences(manifest: dict[str, Any], record: dict[str, Any], manifest_sha256: str) -> list[str]:
    """RESULTS.md, MODEL_CARD.md and the README's accuracy block must be the report's rendering of the record and
    the manifest (never typed by hand)."""
    from .model_card import render_model_card
    from .report import README_BEGIN, README_END, readme_accuracy, tuning_section

    out = []
    results = (REPO / "training" / "RESULTS.md").read_text()
    if "\n".join(tuning_section(record)) not in results:
        out.append("training/RESULTS.md: its generated tables are not the rendering of training/tuning.json "
                   "(python -m training report)")
    if (REPO / "MODEL_CARD.md").read_text() != render_model_card(manifest, None, manifest_sha256):
        out.append("MODEL_CARD.md is not the rendering of model/manifest.json (python -m training report)")
    readme = (REPO / "README.md").read_text()
    block = readme.split(README_BEGIN, 1)[-1].split(README_END, 1)[0].strip()
    if block != readme_accuracy(record):
        out.append("README.md: the accuracy block is not the rendering of training/tuning.json")
    return out


def verify(model_dir: Path, workdir: Path, threads: int = 2, record_path: Path | None = None) -> list[str]:
    """Regenerate and compare; returns the differences (empty: every reported figure holds)."""
    from hieseg.files import file_digest

    from . import stages
    from .export import RECORD

    record_path = record_path or RECORD
    if not record_path.is_file():
        raise TrainingError(f"{record_path} missing: the export writes it beside the shipped model")
    record = json.loads(record_path.read_text())
    manifest = json.loads((model_dir / "manifest.json").read_text())
    by_source: dict[str, list[str]] = {}
    for p in sorted(record["pool"]):
        network, source = p.split("@", 1)
        by_source.setdefault(source, []).append(network)
    # one scratch workdir per source, named as the source, so that pool names match the record's
    for source, networks in by_source.items():
        cfg = make_config(workdir=workdir / source, model_dir=model_dir, members=networks, threads=threads)
        open_workdir(cfg, fresh=False)
        stages.oof(load_study(cfg))
    first, *others = by_source
    cfg = make_config(workdir=workdir / first, model_dir=model_dir,
                      members=sorted(n for v in by_source.values() for n in v),
                      compare=[workdir / o for o in others], threads=threads)
    regenerated = stages.tune(load_study(cfg))
    bad = differences(json.loads(json.dumps(regenerated)), record)
    head, rec = (regenerated["scores"]["nested"] or regenerated["scores"]["in_sample"])["overall"], \
        (record["scores"]["nested"] or record["scores"]["in_sample"])["overall"]
    log.info(f"  headline: regenerated dice {head['dice']} masd {head['masd']} nsd {head['nsd']} | recorded "
             f"dice {rec['dice']} masd {rec['masd']} nsd {rec['nsd']}")
    bad += manifest_differences(manifest, record)
    bad += rendered_differences(manifest, record, file_digest(model_dir / "manifest.json"))
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
    log.info("every reported cross-validation figure holds" if not bad else f"{len(bad)} difference(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
