"""training/RESULTS.md tables and the learning-curve PNG from the run's tuning.json and curve files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .data import REPO


def _fmt(s: dict) -> str:
    if not s or not s.get("n"):
        return "| – | – | – | 0 |"
    masd = s["masd"]
    masd = "–" if masd != masd else f"{masd:.2f}"
    return f"| {s['dice']:.3f} | {masd} | {s['nsd']:.3f} | {s['n']} |"


def learning_curve(study, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    any_curve = False
    for name, spec in study.members.items():
        for k in range(len(study.folds)):
            for fname in ("final.pt", "last.pt"):
                f = study.fold_dir(name, k) / "curve.json"
                if f.is_file():
                    c = json.loads(f.read_text())
                    break
                p = study.fold_dir(name, k) / "last.pt"
                if p.is_file():
                    import torch
                    c = torch.load(p, map_location="cpu", weights_only=False)["curve"]
                    break
            else:
                continue
            if not c["iteration"]:
                continue
            any_curve = True
            style = "-" if spec["kind"] == "3d" else "--"
            axes[0].plot(c["iteration"], c["train_loss"], style, marker="o", ms=3, label=f"{name} f{k}")
            axes[1].plot(c["iteration"], c["val_dice"], style, marker="o", ms=3, label=f"{name} f{k}")
    axes[0].set(xlabel="iteration", ylabel="training loss (mean over the epoch)", title="training loss")
    axes[1].set(xlabel="iteration", ylabel="validation Dice @0.5 (member grid, no TTA)", title="held-out fold")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    if any_curve:  # a run whose curve files are gone keeps the picture drawn when they were there
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return any_curve


def _m(d: dict | None) -> str:
    if not d:
        return "– | – | –"
    masd = "–" if d["masd"] is None or d["masd"] != d["masd"] else f"{d['masd']:.2f}"
    return f"{d['dice']:.3f} | {masd} | {d['nsd']:.3f}"


def tuning_section(tuning: dict) -> list[str]:
    """RESULTS.md's generated tables: the nested (honest) figure first, the Z-ADC<-2 rule on the same cases
    beside it, then what ships, the member-set comparison, strata, folds and every case."""
    folds, f, sc = tuning["folds"], tuning["fusion"], tuning["scores"]
    complete = len(folds) == tuning["n_folds_total"]
    n = f["n_cases"]
    kind = "nested cross-validation" if sc["nested"] else "in-sample (a single fold cannot be nested)"
    lines = [f"## Out-of-fold results ({'all' if complete else 'INTERIM: only'} fold(s) {folds}, {n} cases, "
             "challenge scorer's rules)", "",
             f"Headline: **{kind}** — for each fold, everything chosen on OOF predictions (which trained variant "
             "of each member ships, TTA flips, fusion weights, threshold, minimum component, empty-case rule) is "
             "chosen on the other folds only, then scored on that fold. The Z-ADC < −2 rule (inside the brain) is "
             "scored on the same cases. 'In-sample' is the shipped choice scored on the cases it was chosen on: "
             "optimistic, for reference only.", "",
             "| | Dice | MASD (mm) | NSD@2mm | cases |", "|---|---|---|---|---|"]
    if sc["nested"]:
        lines.append("| **ensemble, nested** " + _fmt(sc["nested"]["overall"]))
    lines.append("| Z-ADC < −2 | " + _fmt(sc["baseline"]["overall"])[2:])
    lines.append("| ensemble, in-sample (optimistic) " + _fmt(sc["in_sample"]["overall"]))
    w = ", ".join(f"{m} {v}" for m, v in f["weights"].items())
    flips = ", ".join(f"{m} {v}" for m, v in f["tta_flips"].items())
    lines += ["", f"Shipped (chosen on all {n} cases): members and weights {w}; TTA flips {flips}; threshold "
              f"{f['threshold']}, minimum component {f['min_component_mm3']} mm³, empty case when the peak < "
              f"{f['empty_max_probability_below']} or the volume < {f['empty_min_lesion_mm3']} mm³. A flip ships "
              f"only if it adds ≥ {f['tta_min_gain']} mean Dice per extra forward pass. OOF maps come from one fold "
              "network per case; the shipped model averages the five folds' networks (not measurable on these "
              "cases: every case trained four of them).", ""]
    by_set = tuning.get("nested_by_member_set") or {}
    if by_set:
        lines += ["Member variants, each nested on its own (the headline chooses among them inside the nesting):",
                  "", "| member set | Dice | MASD (mm) | NSD |", "|---|---|---|---|"]
        lines += [f"| {name} | {_m(s)} |" for name, s in by_set.items()]
        lines += [""]
    for rule, s in (tuning.get("nested_by_other_rule") or {}).items():
        lines += [f"Selection rule: `{tuning.get('selection_rule')}` (Breiman's one-standard-error rule: among the "
                  "configurations within one standard error of the best, the least aggressive post-processing; "
                  f"`training/tune.py`). The same nested procedure with `{rule}` instead: {_m(s)} (Dice | MASD | "
                  "NSD).", ""]
    if tuning.get("nested_per_fold_choice"):
        lines += ["Choice made for each fold on the other folds:", "",
                  "| fold | members (weights) | TTA | threshold | min mm³ | empty peak < | empty mm³ < | inner Dice |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, c in tuning["nested_per_fold_choice"].items():
            lines.append(f"| {k} | {', '.join(f'{m} {v}' for m, v in c['weights'].items())} | "
                         f"{'; '.join(f'{m} {v}' for m, v in c['tta_flips'].items())} | {c['threshold']} | "
                         f"{c['min_component_mm3']} | {c['empty_max_probability_below']} | "
                         f"{c['empty_min_lesion_mm3']} | {c['inner_mean_dice']:.4f} |")
        lines += [""]
    lines += ["| stratum | nested Dice | MASD | NSD | Z-ADC<−2 Dice | MASD | NSD | cases |",
              "|---|---|---|---|---|---|---|---|"]
    for st, b in sc["baseline"]["per_stratum"].items():
        if b.get("n"):
            e = (sc["nested"] or sc["in_sample"])["per_stratum"][st]
            lines.append(f"| {st} | {_m(e)} | {_m(b)} | {b['n']} |")
    lines += ["", "| fold | nested Dice | MASD | NSD | Z-ADC<−2 Dice | MASD | NSD |", "|---|---|---|---|---|---|---|"]
    for k in folds:
        e, b = (sc["nested"] or sc["in_sample"])["per_fold"][str(k)], sc["baseline"]["per_fold"][str(k)]
        lines.append(f"| {k} | {_m(e)} | {_m(b)} |")
    lines += ["", "<details><summary>Every case (nested / Z-ADC<−2 / in-sample)</summary>", "",
              "| case | fold | stratum | burden % | nested Dice | MASD | NSD | Z-ADC<−2 Dice | MASD | NSD | "
              "in-sample Dice |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in tuning["per_case"]:
        lines.append(f"| {r['case_id']} | {r['fold']} | {r['stratum']} | {100 * r['burden']:.2f} | "
                     f"{_m(r['nested'] or r['in_sample'])} | {_m(r['baseline'])} | {r['in_sample']['dice']:.3f} |")
    lines += ["", "</details>", "", "MASD means skip cases whose prediction or truth is empty (leaderboard rule), so "
              "compare on Dice and NSD first.", ""]
    return lines


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
        lines += ["", f"Shared errors: of {d['set']}'s voxels of each kind (all cases), the share that another network "
                  "set's nested masks, or the Z-ADC < −2 rule's, make too (predict; for false negatives: miss too).", "",
                  "| other network set or rule (its nested Dice / MASD / NSD; the rule's are untuned) | networks in common | true positives | "
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


# each committed probe's JSON (a glob under training/) and how it is rendered, in the report's order
PROBES: tuple[tuple[str, Callable[[list[Path]], list[str]]], ...] = (
    ("probe_average*.json", _average_probe),
    ("probe_candidates.json", _candidates_probe),
    ("probe_fusion.json", _fusion_probe("## Probe: fusions that need both members to agree (`probe_fusion`, item 1)")),
    ("probe_fusion_seed_replicate.json", _fusion_probe(
        "## Probe: 3D variants over seeds (`probe_fusion --modes mean`; `VsN` = variant `V` trained with "
        "`--seed N`; `a,b,c`: the mean of those networks' maps, a seed ensemble)")),
    ("probe_errors.json", _errors_probe),
)


def probes_section(folder: Path = REPO / "training") -> list[str]:
    """The committed probes' results (training/probe_*.json, written by their modules), as tables."""
    lines: list[str] = []
    for pattern, render in PROBES:
        files = sorted(folder.glob(pattern))
        if files:
            lines += render(files) + [""]
    return lines


README_BEGIN, README_END = "<!-- BEGIN GENERATED: accuracy -->", "<!-- END GENERATED: accuracy -->"


def readme_accuracy(tuning: dict) -> str:
    """The README's accuracy sentence, from the same tuning.json as RESULTS (never typed by hand)."""
    sc = tuning["scores"]
    e = (sc["nested"] or sc["in_sample"])["overall"]
    b, o = sc["baseline"]["overall"], sc["in_sample"]["overall"]
    kind = "nested cross-validation" if sc["nested"] else "in-sample"
    return (f"Out-of-fold on the {e['n']} training cases ({kind}: every post-processing and ensembling choice made "
            f"on the other folds), scored with the challenge's rules, it reaches mean Dice {e['dice']:.3f}, MASD "
            f"{e['masd']:.2f} mm, NSD@2mm {e['nsd']:.3f}, against {b['dice']:.3f} / {b['masd']:.2f} mm / "
            f"{b['nsd']:.3f} for the classic Z-ADC < −2 rule on the same cases (the shipped choice scored on the "
            f"cases it was chosen on, optimistic: {o['dice']:.3f} / {o['masd']:.2f} mm / {o['nsd']:.3f}; "
            "[training/RESULTS.md](training/RESULTS.md)).")


def _replace_block(text: str, begin: str, end: str, body: str) -> str:
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]


def write_report(study, log=print) -> None:
    """RESULTS.md's generated section and learning curve; for a full run also MODEL_CARD.md and the README's
    accuracy block."""
    quick = study.config.quick
    out_dir = study.workdir if quick else REPO / "training"
    png = out_dir / "learning_curve.png"
    learning_curve(study, png)
    tuning_file = study.workdir / "tuning.json"
    tuning = json.loads(tuning_file.read_text()) if tuning_file.is_file() else None
    lines = ["<!-- generated by `python -m training report`; hand-written notes live in the sections marked so -->",
             ""]
    if tuning is None:
        lines += ["Cross-validation results: pending (no fold finished yet).", ""]
    else:
        lines += tuning_section(tuning)
    cmp_rows = []
    for d in sorted(study.workdir.parent.glob("cmp-*")):
        tf, sf = d / "tuning.json", d / "settings.json"
        if not (tf.is_file() and sf.is_file()):
            continue
        t, st = json.loads(tf.read_text()), json.loads(sf.read_text())
        members = sorted(p.name for p in (d / "oof").iterdir() if p.is_dir()) if (d / "oof").is_dir() else []
        e = (t["scores"].get("nested") or t["scores"]["in_sample"])["overall"]
        b = t["scores"]["baseline"]["overall"]
        masd = "–" if e["masd"] != e["masd"] else f"{e['masd']:.2f}"
        cmp_rows.append(f"| {d.name} | {','.join(members)} | {st['loss']} | {st['intensity']} | {t['folds']} | "
                        f"{e['dice']:.3f} | {e['nsd']:.3f} | {masd} | {t['fusion']['threshold']} | "
                        f"{b['dice']:.3f} | {e['n']} |")
    if cmp_rows:
        lines += ["## Variant comparison (proxy: one member, fold 0, same iterations; fusion tuned per variant)", "",
                  "| workdir | member | loss | intensity | folds | Dice | NSD | MASD | threshold | baseline Dice | cases |",
                  "|---|---|---|---|---|---|---|---|---|---|---|", *cmp_rows, ""]
    if not quick:
        lines += probes_section()
    lines += [f"![learning curve]({png.name})", ""]
    generated = "\n".join(lines)
    results = out_dir / "RESULTS.md"
    begin, end = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
    if results.is_file() and begin in results.read_text():
        text = results.read_text()
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        text = head + begin + "\n" + generated + "\n" + end + tail
    else:
        text = "# Training results\n\n" + begin + "\n" + generated + "\n" + end + "\n"
    results.write_text(text)
    log(f"  wrote {results} and {png}")
    mf = study.config.model_dir / "manifest.json"
    if not quick and mf.is_file():
        from hieseg.files import file_digest

        from .model_card import write_model_card

        # from the manifest alone, so that the committed card is checkable against the committed manifest
        write_model_card(json.loads(mf.read_text()), None, REPO / "MODEL_CARD.md", file_digest(mf))
        log(f"  wrote {REPO / 'MODEL_CARD.md'}")
    readme = REPO / "README.md"
    if tuning is not None and not quick and README_BEGIN in readme.read_text():
        readme.write_text(_replace_block(readme.read_text(), README_BEGIN, README_END, readme_accuracy(tuning)))
        log(f"  updated the accuracy figures in {readme}")
