"""training/RESULTS.md tables and the learning-curve PNG from the run's tuning.json and curve files."""

from __future__ import annotations

import json
from pathlib import Path

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


def _margins(m: dict | None) -> str:
    """ΔDice | MASD ÷ rule | ΔNSD over the Z-ADC rule on the same cases, as the tuning record stores them."""
    if not m:
        return "– | – | –"
    ratio = "–" if m.get("masd_ratio") is None else f"{m['masd_ratio']:.2f}"
    return f"{m['delta_dice']:+.3f} | {ratio} | {m['delta_nsd']:+.3f}"


def _filter(c: dict) -> str:
    f = c.get("component_filter")
    return "none" if not f else f"{f['type']} {f['value']}"


def tuning_section(tuning: dict) -> list[str]:
    """RESULTS.md's generated tables: the nested (honest) figure first, the Z-ADC<-2 rule on the same cases
    beside it, every row with its three margins over the rule, then what ships, the other objective, the
    member sets, the choice of each outer fold, strata, folds and every case."""
    folds, f, sc = tuning["folds"], tuning["fusion"], tuning["scores"]
    complete = len(folds) == tuning["n_folds_total"]
    n = f["n_cases"]
    rule = sc["baseline"]["overall"]
    pool = tuning.get("candidate_pool") or {}
    kind = "nested cross-validation" if sc["nested"] else "in-sample (a single fold cannot be nested)"
    lines = [f"## Out-of-fold results ({'all' if complete else 'INTERIM: only'} fold(s) {folds}, {n} cases, "
             "challenge scorer's rules)", "",
             f"Headline: **{kind}** — for each fold, everything chosen on OOF predictions (members and fusion "
             "weights, TTA, threshold, minimum component, component filter) is chosen among the "
             f"{pool.get('n_candidates', '?')} candidates pre-registered in `{pool.get('file', 'training/pool.json')}`"
             f" on the objective `{pool.get('objective', tuning.get('selection_rule'))}` (each candidate's mean rank "
             "over Dice, MASD and NSD, as the leaderboard ranks teams; `training/selection.py`) using the other "
             "folds only, then scored on that fold. The Z-ADC < −2 rule (inside the brain) is scored on the same "
             "cases; every row gives its margins over it. 'In-sample' is the shipped choice scored on the cases "
             "it was chosen on: optimistic, for reference only.", "",
             "| | Dice | MASD (mm) | NSD@2mm | cases | ΔDice | MASD ÷ rule | ΔNSD |",
             "|---|---|---|---|---|---|---|---|"]
    if sc["nested"]:
        lines.append("| **ensemble, nested** " + _fmt(sc["nested"]["overall"])
                     + f" {_margins(tuning.get('margins'))} |")
    for name, alt in (tuning.get("nested_by_objective") or {}).items():
        lines.append(f"| ensemble, nested, objective `{name}` " + _fmt(alt["overall"])
                     + f" {_margins(alt.get('margins'))} |")
    lines.append("| Z-ADC < −2 | " + _fmt(rule)[2:] + " – | – | – |")
    lines.append("| ensemble, in-sample (optimistic) " + _fmt(sc["in_sample"]["overall"])
                 + f" {_margins(f.get('in_sample_margins'))} |")
    w = ", ".join(f"{m} {v}" for m, v in f["weights"].items())
    flips = ", ".join(f"{m} {v}" for m, v in f["tta_flips"].items())
    lines += ["", f"Shipped (chosen on all {n} cases, objective `{f.get('objective')}`): members and weights {w}; "
              f"TTA flips {flips}; threshold {f['threshold']}, minimum component {f['min_component_mm3']} mm³, "
              f"component filter {_filter(f)}. OOF maps come from one fold network per case; the shipped model "
              "averages the five folds' networks (not measurable on these cases: every case trained four of them).",
              ""]
    spread = tuning.get("nested_choice_spread")
    if tuning.get("nested_per_fold_choice"):
        lines += ["Choice made for each fold on the other folds (inner: its scores on those folds):", "",
                  "| fold | members (weights) | TTA | threshold | min mm³ | filter | inner Dice | MASD | NSD |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k, c in tuning["nested_per_fold_choice"].items():
            lines.append(f"| {k} | {', '.join(f'{m} {v}' for m, v in c['weights'].items())} | "
                         f"{'; '.join(f'{m} {v}' for m, v in c['tta_flips'].items())} | {c['threshold']} | "
                         f"{c['min_component_mm3']} | {_filter(c)} | {_m(c['inner'])} |")
        lines += [""]
    if spread:
        parts = "; ".join(f"{k}: " + ", ".join(f"{v} ×{c}" for v, c in vals.items())
                          for k, vals in spread.items() if isinstance(vals, dict))
        lines += [f"Spread of the choice over the {spread['outer_folds']} outer folds: {spread['distinct_choices']} "
                  f"distinct candidate(s) ({parts}).", ""]
        for name, alt in (tuning.get("nested_by_objective") or {}).items():
            a = alt["spread"]
            lines += [f"With the objective `{name}`: {a['distinct_choices']} distinct candidate(s) over the outer "
                      f"folds ({'; '.join(f'fold {k}: `{v}`' for k, v in alt['per_fold_choice'].items())}).", ""]
    by_set = tuning.get("nested_by_member_set") or {}
    if by_set:
        lines += ["Member sets, each nested on its own (the headline chooses among them inside the nesting):",
                  "", "| member set | Dice | MASD (mm) | NSD | ΔDice | MASD ÷ rule | ΔNSD |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {_m(s)} | {_margins(s.get('margins'))} |" for name, s in by_set.items()]
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


README_BEGIN, README_END = "<!-- BEGIN GENERATED: accuracy -->", "<!-- END GENERATED: accuracy -->"


def readme_accuracy(tuning: dict) -> str:
    """The README's accuracy sentence, from the same tuning.json as RESULTS (never typed by hand)."""
    sc = tuning["scores"]
    e = (sc["nested"] or sc["in_sample"])["overall"]
    b, o = sc["baseline"]["overall"], sc["in_sample"]["overall"]
    m = tuning.get("margins") or {}
    kind = "nested cross-validation" if sc["nested"] else "in-sample"
    margins = (f" (ΔDice {m['delta_dice']:+.3f}, MASD × {m['masd_ratio']:.2f}, ΔNSD {m['delta_nsd']:+.3f})"
               if m.get("masd_ratio") is not None else "")
    return (f"Out-of-fold on the {e['n']} training cases ({kind}: every post-processing and ensembling choice made "
            f"on the other folds, on the mean rank over Dice, MASD and NSD among pre-registered candidates), scored "
            f"with the challenge's rules, it reaches mean Dice {e['dice']:.3f}, MASD {e['masd']:.2f} mm, NSD@2mm "
            f"{e['nsd']:.3f}, against {b['dice']:.3f} / {b['masd']:.2f} mm / {b['nsd']:.3f} for the classic "
            f"Z-ADC < −2 rule on the same cases{margins} (the shipped choice scored on the cases it was chosen on, "
            f"optimistic: {o['dice']:.3f} / {o['masd']:.2f} mm / {o['nsd']:.3f}; "
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
                  "| workdir | member | loss | intensity | folds | Dice | NSD | MASD | threshold | baseline Dice "
                  "| cases |",
                  "|---|---|---|---|---|---|---|---|---|---|---|", *cmp_rows, ""]
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
