"""MODEL_CARD.md from the model's manifest (and the tuning record): every number in it comes from those files.

Call ``write_model_card(manifest, tuning, REPO / "MODEL_CARD.md")`` after the export (training report stage). Pure
Python: no torch, so the runtime's tests can check it too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

DEFAULT_INTENDED_USE = (
    "Research use only: segmenting hypoxic-ischemic encephalopathy (HIE) lesions in skull-stripped ADC and Z-ADC "
    "maps of term neonates, for cohort studies, challenge submissions (BONBID-HIE) and method development. "
    "It is not a medical device, has no regulatory clearance and must not be used for diagnosis, treatment or any "
    "other clinical decision."
)
DEFAULT_LICENSE = "Apache-2.0 (code and model weights; see LICENSE)"
DATA_PAPER = ("Bao R. et al., \"BOston Neonatal Brain Injury Data for Hypoxic Ischemic Encephalopathy (BONBID-HIE): "
              "I. MRI and Lesion Labeling\", Scientific Data 12, 53 (2025), doi:10.1038/s41597-024-03986-7")
DATA_LICENSE = "CC BY 4.0"

INPUTS = [
    "a skull-stripped ADC map of a neonatal brain (background 0; ADC > 0 is taken as brain), as in BONBID-HIE's "
    "`1ADC_ss`",
    "its Z-ADC map (voxel-wise z-score against BONBID-HIE's normative atlas), as in `2Z_ADC`, on the same grid "
    "(origins may differ by rounding up to 0.01 mm)",
    "3D scalar images in `.mha`, `.nii` or `.nii.gz`; any spacing and orientation (resampled internally, the mask "
    "comes back on the ADC's exact grid)",
]
KNOWN_FAILURE_MODES = [
    "Lesions are what BONBID-HIE's annotators labelled on the diffusion maps; injury visible only on other "
    "sequences is outside what the model was taught.",
    "Skull stripping matters: residual skull, scalp or an empty brain mask change the brain volume and the "
    "percent-of-brain burden; an all-zero ADC is refused.",
    "A Z-ADC computed against another atlas or smoothing than BONBID-HIE's shifts every channel computed "
    "from it.",
    "Thick, anisotropic slices limit how well small lesions are delineated through the plane.",
]
NEVER_TESTED_ON = [
    "scanners, sites or protocols other than those of the BONBID-HIE training release",
    "BONBID-HIE's own validation and test cases (the scores above are out-of-fold on the training cases only)",
    "preterm neonates, older infants, children or adults",
    "other neonatal pathologies (stroke, infection, metabolic disease, haemorrhage) without HIE",
    "images that are not skull-stripped, other diffusion-derived maps than ADC / Z-ADC, or motion-corrupted scans",
    "prospective or clinical use of any kind",
]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _score_row(label: str, stratum: str, s: dict[str, Any]) -> str:
    return (f"| {label} | {stratum} | {s.get('n', '–')} | {_fmt(s.get('dice'))} | {_fmt(s.get('masd'), 2)} | "
            f"{_fmt(s.get('nsd'))} |")


def score_tables(scores: dict[str, Any]) -> list[str]:
    """Markdown rows: each variant's overall and per-stratum Dice / MASD / NSD (variants without strata: overall)."""
    lines = ["| model | stratum (lesion % of brain) | cases | Dice | MASD (mm) | NSD@2mm |",
             "|---|---|---|---|---|---|"]
    for variant, s in scores.items():
        if not isinstance(s, dict):
            continue
        overall = s.get("overall", s if isinstance(s.get("dice"), (int, float)) else None)
        if overall is None:
            continue
        lines.append(_score_row(variant, "all", overall))
        for stratum, ss in (s.get("per_stratum") or {}).items():
            if ss and ss.get("n"):
                lines.append(_score_row(variant, stratum, ss))
    return lines


def _scores(manifest: dict[str, Any], tuning: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    if tuning and tuning.get("scores"):
        return tuning["scores"], "the tuning record"
    cv = (manifest.get("provenance") or {}).get("cv_scores") or {}
    return {k: v for k, v in cv.items() if k != "note"}, "the manifest's provenance"


def _nested(tuning: dict[str, Any] | None) -> dict[str, Any] | None:
    """Scores with the fusion tuned inside each outer fold (unbiased by the tuning), when the tuning has them."""
    if not tuning:
        return None
    nested = tuning.get("nested") or tuning.get("nested_scores")
    return nested if isinstance(nested, dict) and nested else None


def _empty_case_line(scores: dict[str, Any]) -> list[str]:
    """How many truly lesion-free cases came out empty (Dice is 1 for an empty mask on an empty truth, else 0)."""
    none = ((scores.get("ensemble") or {}).get("per_stratum") or {}).get("none")
    if not none or not none.get("n") or none.get("dice") is None:
        return []
    n, correct = none["n"], round(none["dice"] * none["n"])
    return [f"- Lesion-free cases: {correct} of {n} came out empty ({n - correct} with a false-positive lesion)."]


def _weakest_stratum(scores: dict[str, Any]) -> list[str]:
    strata = {k: v for k, v in ((scores.get("ensemble") or {}).get("per_stratum") or {}).items()
              if k != "none" and v and v.get("n") and v.get("dice") is not None}
    if not strata:
        return []
    name, s = min(strata.items(), key=lambda kv: kv[1]["dice"])
    return [f"- Weakest lesion-burden stratum: {name} ({s['n']} cases, mean Dice {s['dice']:.3f})."]


def _member_lines(manifest: dict[str, Any]) -> list[str]:
    lines = ["| member | kind | inputs | weight | TTA flips | sha256 |", "|---|---|---|---|---|---|"]
    for m in manifest.get("members", []):
        sources = ", ".join(f"{c['source']} ({c['transform']['type']})" for c in m.get("channels", []))
        lines.append(f"| {m['name']} | {m['kind']} | {sources} | {m['weight']} | {m.get('tta_flips', [[]])} | "
                     f"`{m['sha256'][:12]}` |")
    return lines


def _provenance_lines(prov: dict[str, Any]) -> list[str]:
    training = prov.get("training") or {}
    written = prov.get("manifest_written") or {}
    data = prov.get("data") or {}
    lines = [f"- Status: {prov.get('status', 'not recorded')}"]
    if training:
        dirty = training.get("dirty_training")
        lines.append(f"- Trained from commit `{training.get('commit', '?')}`"
                     + (" **with uncommitted changes in training/** (not exactly reproducible from that commit)"
                        if dirty else "") + f"; command: `{training.get('command', '?')}`")
        earlier = training.get("previous_training")
        if earlier:  # networks kept from an earlier export: the run that trained them
            lines.append(f"- Networks kept from an earlier run: trained from commit `{earlier.get('commit', '?')}`; "
                         f"command: `{earlier.get('command', '?')}`")
    tree = written.get("tree") or {}
    if tree:
        lines.append(f"- Exported from commit `{tree.get('commit', '?')}`, tree "
                     + ("dirty, exported with --allow-dirty: " + ", ".join(tree.get("dirty_paths", []))
                        if tree.get("dirty") else "clean"))
    if data:
        lines.append(f"- Data: {data.get('n_cases', '?')} cases of `{data.get('tarball', '?')}` (sha256 "
                     f"`{str(data.get('tarball_sha256', '?'))[:12]}…`), split {data.get('split', '?')}; folds scored "
                     f"{data.get('folds_scored', '?')}, networks shipped from folds {data.get('folds_shipped', '?')}")
    return lines


def _filter_text(f: dict[str, Any] | None) -> str:
    if not f:
        return "no component filter"
    return {"peak": "components whose peak probability is below {v} removed",
            "distance_to_largest": "components more than {v} mm from the largest one removed",
            "edge": "components whose deepest voxel lies within {v} mm of the brain's edge removed",
            }[f["type"]].format(v=f["value"])


def _empty_text(empty: dict[str, Any]) -> str:
    peak, volume = empty.get("max_probability_below") or 0, empty.get("min_lesion_mm3") or 0
    if not peak and not volume:
        return "no case-level empty rule"
    return (f"a case-level empty rule (empty when the peak probability is below {peak} or under {volume} mm³ "
            "remain; 0 disables either)")


def _margin_lines(cv: dict[str, Any]) -> list[str]:
    """The nested figures' margins over the Z-ADC < -2 rule on the same cases, as the manifest stores them."""
    def text(m: dict[str, Any]) -> str:
        return (f"ΔDice {m['delta_dice']:+.3f}, MASD × {_fmt(m.get('masd_ratio'), 2)}, "
                f"ΔNSD {m['delta_nsd']:+.3f}")

    lines = []
    if cv.get("margins_over_rule"):
        lines.append(f"- Nested, objective `{cv.get('selection_rule')}` (shipped): {text(cv['margins_over_rule'])} "
                     "over the Z-ADC < −2 rule on the same cases.")
    for name, alt in (cv.get("nested_by_objective") or {}).items():
        o = alt["overall"]
        lines.append(f"- Nested, objective `{name}` (reported, not shipped): Dice {_fmt(o.get('dice'))}, MASD "
                     f"{_fmt(o.get('masd'), 2)} mm, NSD {_fmt(o.get('nsd'))}; {text(alt['margins'])}.")
    return lines + [""] if lines else []


def render_model_card(manifest: dict[str, Any], tuning: dict[str, Any] | None = None,
                      manifest_sha256: str | None = None) -> str:
    """The model card's Markdown text."""
    prov = manifest.get("provenance") or {}
    fusion = manifest.get("fusion") or {}
    scores, source = _scores(manifest, tuning)
    nested = _nested(tuning)
    lines = [
        "<!-- generated by training/model_card.py from model/manifest.json (and the tuning record); do not edit -->",
        f"# Model card: {manifest.get('name', 'hieseg')} {manifest.get('version', '')}".rstrip(),
        "",
        f"Manifest sha256: `{manifest_sha256}`" if manifest_sha256 else "",
        "",
        "## Intended use",
        "",
        manifest.get("intended_use") or DEFAULT_INTENDED_USE,
        "",
        "**Not for clinical decisions.** Research software, not a medical device.",
        "",
        "## Licence and citation",
        "",
        f"- Model and code: {manifest.get('license') or DEFAULT_LICENSE}",
        f"- Training data: BONBID-HIE 2023 training release, {DATA_LICENSE}; cite {DATA_PAPER}",
        *[f"- {ref}" for ref in manifest.get("references") or []],
        "- This software: see CITATION.cff",
        "",
        "## Inputs it expects",
        "",
        *[f"- {item}" for item in INPUTS],
        "",
        "Output: a binary lesion mask (uint8 0/1) on the ADC's exact grid and a report (lesion volume, % of brain, "
        "burden class, components).",
        "",
        "## Model",
        "",
        f"An ensemble of {len(manifest.get('members', []))} ONNX networks, probabilities averaged with the weights "
        f"below, then threshold {fusion.get('threshold')}, "
        + (f"components under {fusion['min_component_mm3']} mm³ removed" if fusion.get("min_component_mm3")
           else "no minimum component size")
        + f", {_filter_text(fusion.get('component_filter'))}, and "
        f"{_empty_text(fusion.get('empty_case') or {})}.",
        "",
        *_member_lines(manifest),
        "",
        "## Training data and provenance",
        "",
        *_provenance_lines(prov),
        "",
        f"## Scores (out-of-fold, from {source})",
        "",
        (prov.get("cv_scores") or {}).get("note", "") if not tuning else
        "Out-of-fold predictions of the 5-fold cross-validation, challenge scorer's rules. 'ensemble' is nested: "
        "for each fold, everything chosen on OOF predictions was chosen on the other folds; the in-sample row "
        "scores the shipped choice on the cases it was chosen on (optimistic). Details: training/RESULTS.md.",
        "",
        *score_tables(scores),
        "",
        *_margin_lines((prov.get("cv_scores") or {})),
    ]
    if nested:
        lines += ["### Nested (fusion tuned inside each outer fold: not optimistic by the tuning)", "",
                  *score_tables(nested), ""]
    lines += ["## Known failure modes", "", *_weakest_stratum(scores), *_empty_case_line(scores),
              *[f"- {item}" for item in KNOWN_FAILURE_MODES], "",
              "## Never tested on", "", *[f"- {item}" for item in NEVER_TESTED_ON], ""]
    return "\n".join(lines).replace("\n\n\n", "\n\n")


def write_model_card(manifest: dict[str, Any], tuning: dict[str, Any] | None, path: str | Path,
                     manifest_sha256: str | None = None) -> Path:
    """Write MODEL_CARD.md for ``manifest`` (the parsed model/manifest.json) and the tuning record (or None);
    ``manifest_sha256`` (of manifest.json, as the runtime reports it) is quoted when given."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_model_card(manifest, tuning, manifest_sha256))
    tmp.replace(path)
    return path


if __name__ == "__main__":  # python -m training.model_card [MODEL_DIR] [TUNING_JSON] [OUT]
    import sys

    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "model"
    tuning_file = Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).resolve().parents[1] / "MODEL_CARD.md"
    from hieseg.files import file_digest

    manifest_file = model_dir / "manifest.json"
    print(write_model_card(json.loads(manifest_file.read_text()),
                           json.loads(tuning_file.read_text()) if tuning_file else None, out,
                           file_digest(manifest_file)))
