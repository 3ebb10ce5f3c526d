"""``hieseg evaluate GT_DIR PRED_DIR``: challenge-exact per-case metrics, means, burden strata and lesion detection.

Files are paired by case id (``MGHNICU_<id>`` where the name holds one, otherwise the file name without its
suffix) across .mha, .nii and .nii.gz. Each prediction is scored on the truth's grid, as the challenge does; a
missing prediction is a failed case: Dice 0, NSD 0, MASD undefined whatever the truth holds, and it is listed.
"""

from __future__ import annotations

import argparse
import csv
import io as _textio
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hieseg.engine.preprocess import brain_mask
from hieseg.errors import HiesegError, InputError
from hieseg.evaluation.metrics import (
    SPACING_ORDERS,
    case_metrics,
    lesion_counts,
    nanmean,
)
from hieseg.inputs.cases import BONBID_ADC_DIR, BONBID_LABEL_DIR, case_id_of
from hieseg.inputs.io import read_image, write_json, write_text
from hieseg.inputs.scan import image_files
from hieseg.lesions import STRATA, binarize, burden_stratum, scorer_uint8
from hieseg.version import __version__

log = logging.getLogger(__name__)

METRICS = ("dice", "masd", "nsd")
CSV_COLUMNS = ("case", "dice", "masd", "nsd", "missing", "burden", "stratum", "truth_ml", "pred_ml", "lesions",
               "lesions_detected", "pred_components", "fp_components", "truth_file", "pred_file", "warnings")


def _index(folder: Path, what: str) -> dict[str, Path]:
    """Image files of ``folder`` by case id; two files with one case id are an error."""
    if not folder.is_dir():
        raise InputError(folder, f"{what} folder not found")
    by_id: dict[str, Path] = {}
    # a predictions folder holds reports/, summary.csv, qc/ beside the masks: not worth a line each
    for path in image_files(folder, log_skipped=what != "prediction"):
        case_id = case_id_of(path)
        if case_id in by_id:
            raise InputError(folder, f"two {what} files for case {case_id}: {by_id[case_id].name}, {path.name}")
        by_id[case_id] = path
    return by_id


def _resolve(folder: Path, bonbid_subdir: str) -> Path:
    """``folder`` itself, or its BONBID sub-folder (``3LABEL``, ``1ADC_ss``) when given the release root."""
    sub = folder / bonbid_subdir
    return sub if sub.is_dir() and not image_files(folder, log_skipped=False) else folder


def pair_files(gt_dir: str | Path, pred_dir: str | Path) -> tuple[list[tuple[str, Path, Path | None]], list[Path]]:
    """[(case id, truth, prediction or None)] sorted by case id, and the predictions that have no truth."""
    truths = _index(_resolve(Path(gt_dir), BONBID_LABEL_DIR), "ground-truth")
    if not truths:
        raise InputError(gt_dir, "no ground-truth images found (.mha, .nii, .nii.gz)")
    preds = _index(Path(pred_dir), "prediction")
    pairs = [(case_id, truths[case_id], preds.get(case_id)) for case_id in sorted(truths)]
    extra = [preds[case_id] for case_id in sorted(set(preds) - set(truths))]
    return pairs, extra


def _cast_warnings(raw: np.ndarray, labels: np.ndarray) -> list[str]:
    """What the scorer's uint8 cast does to a prediction that is not a 0/1 mask, one warning per effect."""
    warnings = []
    fractional = (raw > 0) & (raw < 1)
    if fractional.any():
        warnings.append(f"{int(fractional.sum())} prediction voxels lie in (0, 1) and count as background, as on "
                        "the leaderboard: threshold probability maps before evaluating")
    wrapped = (raw != 0) & (labels == 0) & ~fractional
    if wrapped.any():
        warnings.append(f"{int(wrapped.sum())} non-zero prediction voxels become 0 in the scorer's uint8 cast "
                        "(values such as 256 or within (-1, 0)) and count as background, as on the leaderboard")
    other = np.unique(labels[labels > 1])
    if other.size:
        warnings.append(f"prediction labels {', '.join(str(v) for v in other[:5].tolist())} (after the uint8 cast) "
                        "are not 1: the challenge's Dice counts each label on its own, so they never match the "
                        "truth's 1 (MASD and NSD count them as foreground); write 0/1 masks")
    return warnings


def evaluate_case(case_id: str, truth_path: Path, pred_path: Path | None, adc_path: Path | None = None,
                  spacing_order: str = "scorer") -> dict[str, Any]:
    """One row: the challenge metrics, burden and lesion-wise counts of one case.

    Raises InputError when the prediction (or ADC) grid has a different shape from the truth's.
    """
    truth_raw, truth_geometry = read_image(truth_path, dtype=None)  # the file's own type: the cast decides
    truth_labels = scorer_uint8(truth_raw)
    warnings: list[str] = []
    if pred_path is None:
        pred_labels = np.zeros_like(truth_labels)
        warnings.append("prediction missing: scored as a failed case (Dice 0, NSD 0, MASD undefined)")
    else:
        pred_raw, pred_geometry = read_image(pred_path, dtype=None)
        if pred_raw.shape != truth_raw.shape:
            raise InputError(pred_path, f"prediction grid {pred_geometry.size} does not match the truth's "
                                        f"{truth_geometry.size} ({truth_path.name})")
        diffs = truth_geometry.differences(pred_geometry)
        if diffs:
            warnings.append("prediction geometry differs from the truth's (" + "; ".join(diffs)
                            + "): scored on the truth's grid, check the pipeline")
        pred_labels = scorer_uint8(pred_raw)
        warnings.extend(_cast_warnings(pred_raw, pred_labels))
    truth, pred = truth_labels != 0, pred_labels != 0
    for message in warnings:
        log.warning("%s: %s", case_id, message)

    if adc_path is not None:
        adc, adc_geometry = read_image(adc_path)
        if adc.shape != truth.shape:
            raise InputError(adc_path, f"ADC grid {adc_geometry.size} does not match the truth's {truth_geometry.size}")
        if truth_geometry.differences(adc_geometry):
            log.warning("%s: ADC geometry differs from the truth's (%s)", case_id,
                        "; ".join(truth_geometry.differences(adc_geometry)))
        reference = int(brain_mask(adc).sum())
    else:
        reference = int(truth.size)

    voxel_ml = truth_geometry.voxel_volume_mm3 / 1000.0
    truth_voxels = int(truth.sum())
    burden = truth_voxels / reference if reference else math.nan
    row: dict[str, Any] = {"case": case_id}
    row.update(case_metrics(truth_labels, pred_labels, truth_geometry.spacing_zyx, spacing_order))
    if pred_path is None:  # a failed case earns nothing, even on a lesion-free truth where an empty mask scores 1
        row.update({"dice": 0.0, "nsd": 0.0, "masd": math.nan})
    row.update({
        "missing": pred_path is None,
        "burden": burden,
        "stratum": burden_stratum(burden) if not math.isnan(burden) else "none",
        "truth_ml": truth_voxels * voxel_ml,
        "pred_ml": int(pred.sum()) * voxel_ml,
    })
    row.update(lesion_counts(truth, pred))
    row.update({"truth_file": str(truth_path), "pred_file": "" if pred_path is None else str(pred_path),
                "warnings": warnings})
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over cases (NaN skipped, as the leaderboard does), per burden stratum, and lesion-wise detection."""

    def means(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"cases": len(group)}
        out.update({m: nanmean(r[m] for r in group) for m in METRICS})
        out["masd_undefined"] = sum(1 for r in group if math.isnan(r["masd"]))
        return out

    lesions = sum(r["lesions"] for r in rows)
    detected = sum(r["lesions_detected"] for r in rows)
    return {
        "overall": means(rows),
        "strata": {s: means([r for r in rows if r["stratum"] == s]) for s in STRATA
                   if any(r["stratum"] == s for r in rows)},
        "detection": {
            "lesions": lesions,
            "lesions_detected": detected,
            "detection_rate": detected / lesions if lesions else math.nan,
            "fp_components_per_case": float(np.mean([r["fp_components"] for r in rows])) if rows else math.nan,
        },
        "missing_predictions": [r["case"] for r in rows if r["missing"]],
    }


def evaluate_dirs(gt_dir: str | Path, pred_dir: str | Path, adc_dir: str | Path | None = None,
                  spacing_order: str = "scorer", show_progress: bool = True) -> dict[str, Any]:
    """Evaluate every truth in ``gt_dir`` against ``pred_dir``; returns ``{"cases", "failed", "summary", ...}``.

    A case that cannot be scored (unreadable file, different grid shape) is logged, listed under ``failed`` and left
    out of the means.
    """
    from hieseg.outputs.progress import progress

    pairs, extra = pair_files(gt_dir, pred_dir)
    for path in extra:
        log.warning("%s: prediction without a ground truth (case %s), ignored", path, case_id_of(path))
    adcs = _index(_resolve(Path(adc_dir), BONBID_ADC_DIR), "ADC") if adc_dir is not None else {}
    rows, failed = [], []
    items = progress(pairs, total=len(pairs), desc="evaluate") if show_progress else pairs
    for case_id, truth_path, pred_path in items:
        adc_path = adcs.get(case_id)
        if adc_dir is not None and adc_path is None:
            log.warning("%s: no ADC in %s, burden is relative to the whole image", case_id, adc_dir)
        try:
            rows.append(evaluate_case(case_id, truth_path, pred_path, adc_path, spacing_order))
        except (HiesegError, ValueError) as exc:
            log.error("%s: %s", case_id, exc)
            failed.append({"case": case_id, "error": str(exc)})
    return {
        "hieseg_version": __version__,
        "spacing_order": spacing_order,
        "burden_of": "brain (ADC > 0)" if adc_dir is not None else "image",
        "cases": rows,
        "failed": failed,
        "unmatched_predictions": [str(p) for p in extra],
        "summary": summarize(rows),
    }


def _num(value: float, digits: int = 3) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """Per-case rows, then the means, the burden strata and lesion-wise detection, as a plain-text table."""
    head = f"{'case':<16}{'dice':>7}{'masd':>8}{'nsd':>7}{'burden':>9}  {'stratum':<8}{'lesions':>8}{'found':>6}" \
           f"{'fp':>5}  note"
    lines = [head]
    for r in report["cases"]:
        note = "missing prediction" if r["missing"] else ("warning" if r["warnings"] else "")
        lines.append(f"{r['case']:<16}{_num(r['dice']):>7}{_num(r['masd'], 2):>8}{_num(r['nsd']):>7}"
                     f"{100 * r['burden']:>8.2f}%  {r['stratum']:<8}{r['lesions']:>8}{r['lesions_detected']:>6}"
                     f"{r['fp_components']:>5}  {note}")
    for f in report["failed"]:
        lines.append(f"{f['case']:<16}{'FAILED':>7}  {f['error']}")
    summary = report["summary"]
    lines.append("")
    lines.append(f"{'group':<16}{'cases':>6}{'dice':>7}{'masd':>8}{'nsd':>7}  (means skip NaN; masd undefined in)")
    groups = [("all", summary["overall"])] + [(f"burden {s}", g) for s, g in summary["strata"].items()]
    for name, g in groups:
        lines.append(f"{name:<16}{g['cases']:>6}{_num(g['dice']):>7}{_num(g['masd'], 2):>8}{_num(g['nsd']):>7}"
                     f"  {g['masd_undefined']}")
    d = summary["detection"]
    lines.append("")
    lines.append(f"lesions detected: {d['lesions_detected']}/{d['lesions']} ({_num(100 * d['detection_rate'], 1)}%), "
                 f"false-positive components per case: {_num(d['fp_components_per_case'], 2)}")
    lines.append(f"spacing order: {report['spacing_order']}; burden relative to the {report['burden_of']}")
    if summary["missing_predictions"]:
        lines.append("missing predictions (scored Dice 0, NSD 0): " + ", ".join(summary["missing_predictions"]))
    if report["failed"]:
        lines.append("failed (not in the means): " + ", ".join(f["case"] for f in report["failed"]))
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Per-case rows as CSV; undefined values (NaN) are empty cells."""
    buffer = _textio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = {}
        for key in CSV_COLUMNS:
            value = row[key]
            if isinstance(value, float):
                value = "" if math.isnan(value) else repr(value)
            elif isinstance(value, list):
                value = " | ".join(value)
            out[key] = value
        writer.writerow(out)
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN becomes null, so the JSON stays valid."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_qc(report: dict[str, Any], qc_dir: Path, adc_dir: Path | None) -> list[Path]:
    """Summary plot, and a montage per case when the ADC maps are known."""
    from hieseg.outputs import qc

    written = [qc.write_summary_plot(report["cases"], qc_dir / "summary.png",
                                     title=f"Dice vs lesion burden (n={len(report['cases'])})")]
    if adc_dir is None:
        log.warning("no --adc given: per-case montages need the ADC maps, only the summary plot is written")
        return written
    adcs = _index(_resolve(adc_dir, BONBID_ADC_DIR), "ADC")
    for row in report["cases"]:
        if row["case"] not in adcs:
            continue
        adc, geometry = read_image(adcs[row["case"]])
        truth = binarize(read_image(row["truth_file"], dtype=None)[0])
        pred = binarize(read_image(row["pred_file"], dtype=None)[0]) if row["pred_file"] else np.zeros_like(truth)
        title = (f"{row['case']}   Dice {_num(row['dice'])}   MASD {_num(row['masd'], 2)} mm   "
                 f"NSD {_num(row['nsd'])}")
        written.append(qc.write_montage(adc, pred, qc_dir / f"{row['case']}.png", truth=truth, title=title,
                                        spacing_zyx=geometry.spacing_zyx))
    return written


def register(subparsers) -> None:
    """Add ``evaluate GT_DIR PRED_DIR`` to the hieseg command line."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predictions against ground truth with the challenge's Dice, MASD and NSD",
        description="Score predictions against ground-truth masks exactly as the BONBID-HIE challenge does "
                    "(Dice, MASD in mm, NSD at 2 mm), print per-case rows and the means (NaN skipped), burden "
                    "strata and lesion-wise detection. Files pair by case id (MGHNICU_<id>, otherwise the file "
                    "name) across .mha, .nii and .nii.gz; a missing prediction scores Dice 0, NSD 0, MASD undefined.",
    )
    parser.add_argument("gt_dir", type=Path, metavar="GT_DIR",
                        help="ground-truth masks (or a BONBID release root holding 3LABEL/)")
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="predicted masks")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write the per-case rows as CSV")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write rows and summary as JSON")
    parser.add_argument("--adc", type=Path, metavar="DIR",
                        help="ADC maps (or a BONBID root holding 1ADC_ss/): burden relative to the brain (ADC > 0) "
                             "instead of the whole image, and per-case QC montages")
    parser.add_argument("--spacing-order", choices=SPACING_ORDERS, default="scorer",
                        help="'scorer' (default) passes spacing to the surface distances as the challenge does, "
                             "(z, x, y) for (z, y, x) arrays (the in-plane spacings swapped), so numbers match the "
                             "leaderboard; 'physical' uses the true voxel spacing")
    parser.add_argument("--qc", type=Path, metavar="DIR",
                        help="write QC pictures: summary.png (Dice vs burden) and, with --adc, a montage per case")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = evaluate_dirs(args.gt_dir, args.pred_dir, args.adc, args.spacing_order)
    print(format_report(report), end="")
    if args.csv:
        write_text(to_csv(report["cases"]), args.csv)
    if args.json:
        write_json(_json_safe(report), args.json)
    if args.qc:
        write_qc(report, args.qc, args.adc)
    return 1 if report["failed"] else 0
