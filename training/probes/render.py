"""The research probes' records (training/probes/*.json, written by their modules) as Markdown tables:
training/probes/RESULTS.md. The pipeline's report (training/report.py) never renders probe output.

    python -m training.probes.render     # rewrites training/probes/RESULTS.md from the committed JSON
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..report import _m

HERE = Path(__file__).resolve().parent

def _average_probe(files: list[Path]) -> list[str]:
    lines = ["## Probe: a choice tuned on single networks, applied to averages of networks (`probe_average`)", "",
             "Both map kinds are out of fold: *single* is one network per member and fold, *average* the mean of "
             "several networks of the same fold. Nested figures are honest; in-sample ones optimistic.", "",
             "| single | average of | nested single: Dice | MASD | NSD | nested average: Dice | MASD | NSD | "
             "in-sample single: Dice | MASD | NSD | threshold | in-sample average, re-tuned: Dice | MASD | NSD | "
             "threshold | single's choice on the averages: Dice | MASD | NSD |",
             "|---|---|" + "---|" * 17]
    for f in files:
        d = json.loads(f.read_text())
        lines.append(
            f"| {d.get('single_source', 'training/runs/cv')} | "
            f"{', '.join(d.get('average_sources', ['training/runs/cv', 'training/runs/gpu']))} | "
            f"{_m(d['single']['nested'])} | {_m(d['average']['nested'])} | {_m(d['single']['in_sample'])} | "
            f"{d['single']['in_sample_choice']['threshold']} | {_m(d['average']['in_sample'])} | "
            f"{d['average']['in_sample_choice']['threshold']} | {_m(d['single_choice_on_average'])} |")
    return lines


def _candidates_probe(files: list[Path]) -> list[str]:
    d = json.loads(files[0].read_text())
    lines = ["## Probe: a learned candidate stage with new information (`probe_candidates`, item 5)", "",
             "Per network set, nested: the fusion rule, a logistic regression on each kept component's features "
             "and its keep-threshold are chosen without the scored fold. *New information*: "
             f"{', '.join(d['new_information'])}; the ablation leaves it out.", "",
             "| network set | features | nested rule: Dice | MASD | NSD | + candidate stage: Dice | MASD | NSD | "
             "components dropped (touching a lesion) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        lines.append(f"| {r['workdir']} | {'without the new information' if r['ablation'] else 'all'} | "
                     f"{_m(r['nested_plain_rule'])} | {_m(r['nested_with_candidate_stage'])} | "
                     f"{r['components_dropped']} ({r['components_dropped_touching_truth']}) |")
    return lines


def _fusion_probe(title: str) -> Callable[[list[Path]], list[str]]:
    def render(files: list[Path]) -> list[str]:
        d = json.loads(files[0].read_text())
        lines = [title, "",
                 "*mean*: w p3 + (1 − w) p2 (the runtime's); *geometric*: p3^w p2^(1−w); *vote*: a threshold per "
                 "member, both must fire. Same grids, same one-SE rule, each nested (chosen on the other folds); "
                 "in-sample figures optimistic.", "",
                 "| network set (3D+2D) | fusion | nested: Dice | MASD | NSD | in-sample: Dice | MASD | NSD | "
                 "in-sample threshold | weight of 3D |", "|---|---|---|---|---|---|---|---|---|---|"]
        for net_set, modes in d["sets"].items():
            for mode, r in modes.items():
                ch = r["in_sample_choice"]
                lines.append(f"| {net_set} | {mode} | {_m(r['nested'])} | {_m(r['in_sample'])} | {ch['threshold']} | "
                             f"{list(ch['weights'].values())[0]} |")
        return lines + _seed_lines(d["sets"])
    return render


def variant_of(source: str) -> str:
    """A workdir's variant: its name less a replicate's seed suffix ('tvp3ds2' -> 'tvp3d', `--seed N` runs)."""
    return re.sub(r"s\d+$", "", source)


def seed_summary(sets: dict) -> list[dict]:
    """Per 3D variant (with its 2D source), the nested figures of its seeds (the sets SRC3D+SRC2D whose SRC3D is
    one workdir, fusion ``mean``): their mean and sample SD, and, against the first variant listed, the per-case
    Dice difference of the seed means, paired over the cases (mean, its standard error, cases better / worse)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for net_set, modes in sets.items():
        src3, src2 = net_set.split("+")
        if "," not in src3 and "mean" in modes:
            groups.setdefault((variant_of(src3), src2), []).append(modes["mean"])
    out, ref = [], None
    for (variant, src2), runs in groups.items():
        row = {"variant": variant, "source_2d": src2, "seeds": len(runs)}
        for m in ("dice", "masd", "nsd"):
            v = np.array([r["nested"][m] for r in runs], float)
            row[m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
        per_case = {}
        for r in runs:
            for c in r["nested_rows"]:
                per_case.setdefault(c["case_id"], []).append(c["dice"])
        row["case_dice"] = {c: float(np.mean(v)) for c, v in per_case.items()}
        if ref is None:
            ref = row
        else:
            d = np.array([row["case_dice"][c] - ref["case_dice"][c] for c in ref["case_dice"]])
            row["vs"] = {"variant": ref["variant"], "mean": float(d.mean()),
                         "se": float(d.std(ddof=1) / np.sqrt(len(d))), "better": int((d > 1e-9).sum()),
                         "worse": int((d < -1e-9).sum())}
        out.append(row)
    return out


def _seed_lines(sets: dict) -> list[str]:
    rows = [r for r in seed_summary(sets) if r["seeds"] > 1]
    if not rows:
        return []

    def pm(v, digits):
        return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"
    lines = ["", "Per variant over its seeds (nested figures of the single-seed sets above: mean ± SD over seeds; "
             "the difference is each case's Dice averaged over the variant's seeds minus the same for the first "
             "variant, paired over the cases: mean ± standard error, cases better / worse):", "",
             "| 3D variant | 2D source | seeds | nested Dice | MASD | NSD | Δ Dice vs first, paired | better / worse |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = r.get("vs")
        delta = f"{vs['mean']:+.3f} ± {vs['se']:.3f} (vs {vs['variant']})" if vs else "reference"
        updown = f"{vs['better']} / {vs['worse']}" if vs else "–"
        lines.append(f"| {r['variant']} | {r['source_2d']} | {r['seeds']} | {pm(r['dice'], 3)} | {pm(r['masd'], 2)} | "
                     f"{pm(r['nsd'], 3)} | {delta} | {updown} |")
    return lines


def _errors_probe(files: list[Path]) -> list[str]:
    d = json.loads(files[0].read_text())
    lines = ["## Error anatomy of the nested masks (`probe_errors`)", "",
             f"Network set {d['set']} (nested {_m(d['nested'])}), each fold's fusion chosen on the other folds. "
             "*Far*: false-positive voxels in predicted components that touch no lesion; *rim*: the rest "
             "(over-segmentation of found lesions). Components are 26-connected.", "",
             "| stratum | cases | true-positive voxels | false-positive: far | rim | false-negative voxels | "
             "predicted components (touching no lesion) | lesions found / all | lesion-free cases given a "
             "prediction |", "|---|---|---|---|---|---|---|---|---|"]
    for name in [s for s in ("none", "<1%", "1-5%", ">5%", "all") if s in d["strata"]]:
        a = d["strata"][name]
        lines.append(f"| {name} | {a['cases']} | {a['tp']} | {a['fp_far']} | {a['fp_rim']} | {a['fn']} | "
                     f"{a['pred_components']} ({a['pred_components_far']}) | {a['lesions_found']} / "
                     f"{a['lesions']} | {a['empty_cases_with_prediction']} |")
    if "oracle_without_far_components" in d:
        lines += ["", "The same masks with every component that touches no lesion removed, using the truth (an upper "
                  "bound for any component filter, not an estimate): Dice / MASD / NSD "
                  f"{_m(d['oracle_without_far_components']).replace(' | ', ' / ')}."]
    if d.get("shared_with"):
        lines += ["", f"Shared errors: of {d['set']}'s voxels of each kind (all cases), the share that another "
                  "network set's nested masks, or the Z-ADC < −2 rule's, make too (predict; for false negatives: "
                  "miss too).", "",
                  "| other network set or rule (its nested Dice / MASD / NSD; the rule's are untuned) | "
                  "networks in common | true positives | "
                  "false positives: far | rim | false negatives |", "|---|---|---|---|---|---|"]
        for other, o in d["shared_with"].items():
            v = o["voxels"]
            cells = " | ".join(f"{v[k]['shared'] / max(v[k]['n'], 1):.0%} of {v[k]['n']}"
                               for k in ("tp", "fp_far", "fp_rim", "fn"))
            common = [k for k, a, b in zip(("3D", "2D"), d["set"].split("+"), other.split("+")) if a == b]
            common_cell = "– (a rule)" if "+" not in other else ", ".join(common) or "none"
            lines.append(f"| {other} ({_m(o['nested']).replace(' | ', ' / ')}) | {common_cell} | "
                         f"{cells} |")
    return lines


# each committed probe's JSON (a glob under training/probes/) and how it is rendered, in this file's order
PROBES: tuple[tuple[str, Callable[[list[Path]], list[str]]], ...] = (
    ("average*.json", _average_probe),
    ("candidates.json", _candidates_probe),
    ("fusion.json", _fusion_probe("## Probe: fusions that need both members to agree (`probe_fusion`, item 1)")),
    ("fusion_seed_replicate.json", _fusion_probe(
        "## Probe: 3D variants over seeds (`probe_fusion --modes mean`; `VsN` = variant `V` trained with "
        "`--seed N`; `a,b,c`: the mean of those networks' maps, a seed ensemble)")),
    ("errors.json", _errors_probe),
)


def probes_section(folder: Path = HERE) -> list[str]:
    """The committed probes' results (training/probes/*.json, written by their modules), as tables."""
    lines: list[str] = []
    for pattern, render in PROBES:
        files = sorted(folder.glob(pattern))
        if files:
            lines += render(files) + [""]
    return lines


def render(folder: Path = HERE) -> str:
    return "\n".join(["# Research probes", "",
                      "<!-- generated by `python -m training.probes.render` from training/probes/*.json; "
                      "do not edit -->",
                      "", "Records of the research probes of earlier sessions (`python -m training.probes.<name>`). "
                      "Their",
                      "network sets (`training/runs/...`) are not all on this machine any more, so these tables are",
                      "records, not figures `training.verify` can regenerate; the pipeline's own figures are in",
                      "[../RESULTS.md](../RESULTS.md).", "", *probes_section(folder)]).rstrip() + "\n"


def main() -> int:
    out = HERE / "RESULTS.md"
    out.write_text(render())
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
