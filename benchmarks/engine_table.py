"""One run, one table (issue 23): the same real cases through ``hieseg predict`` with ONNX Runtime's CPU provider
(f32, the reference), native OpenVINO f32, native OpenVINO bf16 and the fast mode (auto + --fast), each in its own
process under /usr/bin/time -v; seconds per case, peak RSS, the FLOP rate as a fraction of this machine's matrix
multiply peak at that row's precision (benchmarks/gemm_peak.py), masks against the reference, and the challenge's
metrics against the labels.

    .venv/bin/python benchmarks/engine_table.py --cases 12 --json benchmarks/results/engines-12cases.json \
        --doc docs/benchmark.md
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from realdata import real_cases_dir  # noqa: E402

from hieseg.evaluation.metrics import case_metrics, nanmean  # noqa: E402
from hieseg.inputs.cases import find_cases  # noqa: E402
from hieseg.inputs.io import read_image  # noqa: E402

PRECISION = {  # the GEMM peak each row is compared against
    "ORT CPU f32 (--device cpu)": "f32", "OpenVINO f32": "f32",
    "OpenVINO bf16 (auto, the default here)": "bf16", "fast: OpenVINO bf16, no flip TTA (--fast)": "bf16"}
FAST = "fast: OpenVINO bf16, no flip TTA (--fast)"
CONFIGS = {
    "ORT CPU f32 (--device cpu)": ["--device", "cpu"],
    "OpenVINO f32": ["--device", "openvino", "--precision", "f32"],
    "OpenVINO bf16 (auto, the default here)": ["--device", "auto"],
    "fast: OpenVINO bf16, no flip TTA (--fast)": ["--device", "auto", "--fast"],
}
BEGIN, END = "<!-- engines:begin -->", "<!-- engines:end -->"


def run(config: list[str], case_list: Path, out: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "hieseg", "predict", str(case_list), str(out), "-q", *config]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(config)} failed: {proc.stderr[-2000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    wall_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    reports = [json.loads(p.read_text()) for p in sorted((out / "reports").glob("*.json"))
               if not p.name.startswith(".")]
    per_case = [r["seconds"]["total"] for r in reports]
    return {"wall_s": wall_s, "peak_rss_gib": peak_kib / 2**20, "median_s_per_case": statistics.median(per_case),
            "mean_s_per_case": statistics.fmean(per_case), "engine": reports[0]["engine"]}


def case_gflop(cases, fast: bool) -> dict[str, float]:
    """GFLOP per case (2 x MACs of every Conv / ConvTranspose / MatMul at the input shapes the runtime feeds, TTA
    passes included; ``fast``: identity only), counted from the shipped ONNX graphs (benchmarks/graph_flops.py)."""
    import onnx
    from bench_inference import forward_items
    from graph_flops import flops

    from hieseg.engine import preprocess
    from hieseg.engine.ensemble import prepared_inputs
    from hieseg.engine.manifest import load_manifest
    from hieseg.inputs.validate import load_pair

    manifest = load_manifest(None)
    signature = {m.name: tuple(tuple(i.dims) for i in onnx.load(str(m.path)).graph.initializer)
                 for m in manifest.members}
    cache: dict[tuple, int] = {}
    out = {}
    for case in cases:
        adc, zadc, geometry = load_pair(case.adc, case.zadc)
        crop = preprocess.crop_to_brain(adc, geometry.spacing_zyx, manifest.crop_margin_mm)
        total = 0
        for m, prepared, _ in prepared_inputs(manifest.members, adc, zadc, geometry.spacing_zyx, crop):
            for shape, count in forward_items(m, prepared.image):
                key = (signature[m.name], shape)
                if key not in cache:
                    cache[key] = flops(m.path, shape)
                total += cache[key] * count * (1 if fast else max(len(m.tta_flips), 1))
        out[case.case_id] = total / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--doc", type=Path)
    args = ap.parse_args()
    root = real_cases_dir()
    cases = find_cases(root)[: args.cases]
    work = Path(tempfile.mkdtemp(prefix="hieseg-engines-"))
    case_list = work / "cases.csv"
    case_list.write_text("case_id,adc,zadc\n" + "".join(f"{c.case_id},{c.adc},{c.zadc}\n" for c in cases))
    labels = {c.case_id: read_image(root / "3LABEL" / f"{c.case_id}-VISIT_01_lesion.mha", dtype=None)[0]
              for c in cases}
    from gemm_peak import gemm_peak

    # the peak before and after the runs, the higher kept: this machine's neighbours make single runs noisy
    before = {p: gemm_peak(p, 2) for p in ("f32", "bf16")}
    rows, masks = {}, {}
    for name, config in CONFIGS.items():
        out = work / re.sub(r"\W+", "_", name)
        rows[name] = run(config, case_list, out)
        masks[name] = {c.case_id: read_image(out / f"{c.case_id}_lesion.mha", dtype=None)[0] for c in cases}
        scores = [case_metrics(labels[c.case_id], masks[name][c.case_id], read_image(c.adc)[1].spacing_zyx)
                  for c in cases]
        rows[name].update({k: nanmean(s[k] for s in scores) for k in ("dice", "masd", "nsd")})
        rows[name]["per_case_dice"] = {c.case_id: s["dice"] for c, s in zip(cases, scores)}
    after = {p: gemm_peak(p, 2) for p in ("f32", "bf16")}
    peaks = {p: max(before[p], after[p], key=lambda g: g["gflops"]) for p in before}
    gflop = {False: case_gflop(cases, False), True: case_gflop(cases, True)}
    for name, row in rows.items():
        per_case = gflop[name == FAST]
        row["gflop_per_case_median"] = statistics.median(per_case.values())
        row["gflops"] = row["gflop_per_case_median"] / row["median_s_per_case"]
        row["gemm_peak"] = peaks[PRECISION[name]]
        row["fraction_of_peak"] = row["gflops"] / peaks[PRECISION[name]]["gflops"]
    ref = next(iter(CONFIGS))
    lesion = sum(int(m.sum()) for m in masks[ref].values())
    for name, row in rows.items():
        differ = sum(int((masks[name][c] != masks[ref][c]).sum()) for c in masks[ref])
        row["voxels_differing"] = differ
        row["share_of_lesion_voxels"] = differ / max(lesion, 1)
        row["max_case_dice_delta"] = max(abs(row["per_case_dice"][c] - rows[ref]["per_case_dice"][c])
                                         for c in masks[ref])
        row["speedup_vs_cpu"] = rows[ref]["median_s_per_case"] / row["median_s_per_case"]
    result = {"cases": [c.case_id for c in cases], "reference": ref, "rows": rows, "gemm_peak": peaks,
              "command": f"python benchmarks/engine_table.py --cases {args.cases}"}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    table = [f"One run on {len(cases)} real cases, 2 threads, this machine's Xeon (AMX-BF16); generated by "
             f"`{result['command']}` ({args.json.name if args.json else 'no JSON'}). Dice / MASD / NSD are the "
             "whole ensemble on its own training cases (in-sample): they compare the engines with each other, not "
             "the model with unseen data (training/RESULTS.md has the nested figures). Fraction of peak: the "
             "case's FLOPs (counted from the ONNX graphs at the shapes the runtime feeds) over its seconds, against "
             f"an OpenVINO MatMul on the same 2 threads at the row's precision, the better of a measurement before and "
             f"after the runs: f32 {peaks['f32']['gflops']} GFLOP/s, bf16 {peaks['bf16']['gflops']} GFLOP/s "
             "(`benchmarks/gemm_peak.py`). The seconds include reading, "
             "resampling and post-processing, so the fraction is a lower bound on the networks' own.", "",
             "| engine | s/case (median) | speed-up vs --device cpu | peak RSS GiB | GFLOP/case | fraction of the "
             "GEMM peak | masks vs --device cpu (voxels / share of lesion voxels) | max per-case ΔDice | Dice | "
             "MASD mm | NSD |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        table.append(f"| {name} | {r['median_s_per_case']:.2f} | {r['speedup_vs_cpu']:.2f}× | "
                     f"{r['peak_rss_gib']:.2f} | {r['gflop_per_case_median']:.0f} | {100 * r['fraction_of_peak']:.0f} % "
                     f"({PRECISION[name]}) | {r['voxels_differing']} / {100 * r['share_of_lesion_voxels']:.3f} % | "
                     f"{r['max_case_dice_delta']:.4f} | {r['dice']:.4f} | {r['masd']:.3f} | {r['nsd']:.4f} |")
    text = "\n".join(table)
    print(text)
    if args.doc:
        doc = args.doc.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN in doc:
            doc = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
        else:
            doc = doc.rstrip("\n") + "\n\n## Engines and precision (issue 23)\n\n" + block + "\n"
        args.doc.write_text(doc)


if __name__ == "__main__":
    main()
