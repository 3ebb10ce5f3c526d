"""One run, one table (issue 23): the same real cases through ``hieseg predict`` with ONNX Runtime's CPU provider
(f32, the reference), native OpenVINO f32, native OpenVINO bf16 (where the CPU has native bf16) and the fast mode
(auto + --fast), each in its own process under /usr/bin/time -v; seconds per case, peak RSS, the FLOP rate as a
fraction of this machine's matrix multiply peak at that row's precision (benchmarks/gemm_peak.py), masks against the
reference, and the challenge's metrics against the labels. Each kind of CPU has its own block in the document
(``machine``): a CPU with native bf16 writes ``engines``, one without writes ``engines-nobf16``, so that a run on
either leaves the other's table alone.

    .venv/bin/python benchmarks/engine_table.py --cases 12 --json benchmarks/results/engines-12cases.json \
        --doc docs/benchmark.md
    # on a CPU without native bf16:
    .venv/bin/python benchmarks/engine_table.py --cases 12 --json benchmarks/results/engines-nobf16-12cases.json \
        --doc docs/benchmark.md
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from doc_block import with_block  # noqa: E402
from realdata import real_cases_dir  # noqa: E402

from hieseg.evaluation.metrics import case_metrics, nanmean  # noqa: E402
from hieseg.inputs.cases import find_cases  # noqa: E402
from hieseg.inputs.io import read_image  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One row: the ``hieseg predict`` arguments, the precision its report must name, whether it is the fast mode."""

    args: tuple[str, ...]
    precision: str
    fast: bool = False


def configs(native_bf16: bool) -> dict[str, Config]:
    """The rows for this CPU, the reference first. Where the CPU has no native bf16, ``auto`` is OpenVINO f32 (the
    bf16 row would be an emulation the runtime refuses), so the default row is the f32 one."""
    auto = "bf16" if native_bf16 else "f32"
    rows = {"ORT CPU f32 (--device cpu)": Config(("--device", "cpu"), "f32")}
    if native_bf16:
        rows["OpenVINO f32 (--precision f32)"] = Config(("--device", "openvino", "--precision", "f32"), "f32")
        rows["OpenVINO bf16 (auto, the default here)"] = Config(("--device", "auto"), "bf16")
    else:
        rows["OpenVINO f32 (auto, the default here)"] = Config(("--device", "auto"), "f32")
    rows[f"fast: OpenVINO {auto}, no flip TTA (--fast)"] = Config(("--device", "auto", "--fast"), auto, True)
    return rows


def machine() -> dict:
    """What the table's figures depend on: the CPU's model name, its bf16 flags, whether OpenVINO runs bf16
    natively on it, and the doc block its table goes to (one block per kind of CPU, so that neither table
    overwrites the other)."""
    from hieseg.engine.openvino_engine import cpu_bf16_flags, cpu_has_native_bf16

    names = [line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    native = cpu_has_native_bf16()
    return {"cpu": names[0] if names else platform.processor() or "unknown CPU",
            "bf16_flags": sorted(cpu_bf16_flags()), "native_bf16": native,
            "block": "engines" if native else "engines-nobf16"}


def run(config: Config, case_list: Path, out: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "hieseg", "predict", str(case_list), str(out), "-q",
           *config.args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(config.args)} failed: {proc.stderr[-2000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    wall_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    reports = [json.loads(p.read_text()) for p in sorted((out / "reports").glob("*.json"))
               if not p.name.startswith(".")]
    per_case = [r["seconds"]["total"] for r in reports]
    engine = reports[0]["engine"]
    if engine["precision"] != config.precision:  # a row must measure what its label says
        raise SystemExit(f"{' '.join(config.args)} ran in {engine['precision']}, not {config.precision}")
    return {"wall_s": wall_s, "peak_rss_gib": peak_kib / 2**20, "median_s_per_case": statistics.median(per_case),
            "mean_s_per_case": statistics.fmean(per_case), "engine": engine}


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

    host = machine()
    rows_wanted = configs(host["native_bf16"])
    precisions = sorted({c.precision for c in rows_wanted.values()})  # no bf16 peak where bf16 is emulated
    # the peak before and after the runs, the higher kept: this machine's neighbours make single runs noisy
    before = {p: gemm_peak(p, 2) for p in precisions}
    rows, masks = {}, {}
    for name, config in rows_wanted.items():
        out = work / re.sub(r"\W+", "_", name)
        rows[name] = run(config, case_list, out)
        masks[name] = {c.case_id: read_image(out / f"{c.case_id}_lesion.mha", dtype=None)[0] for c in cases}
        scores = [case_metrics(labels[c.case_id], masks[name][c.case_id], read_image(c.adc)[1].spacing_zyx)
                  for c in cases]
        rows[name].update({k: nanmean(s[k] for s in scores) for k in ("dice", "masd", "nsd")})
        rows[name]["per_case_dice"] = {c.case_id: s["dice"] for c, s in zip(cases, scores)}
    after = {p: gemm_peak(p, 2) for p in precisions}
    peaks = {p: max(before[p], after[p], key=lambda g: g["gflops"]) for p in before}
    gflop = {False: case_gflop(cases, False), True: case_gflop(cases, True)}
    for name, row in rows.items():
        per_case = gflop[rows_wanted[name].fast]
        row["gflop_per_case_median"] = statistics.median(per_case.values())
        row["gflops"] = row["gflop_per_case_median"] / row["median_s_per_case"]
        row["precision"] = rows_wanted[name].precision
        row["gemm_peak"] = peaks[row["precision"]]
        row["fraction_of_peak"] = row["gflops"] / row["gemm_peak"]["gflops"]
    ref = next(iter(rows_wanted))
    lesion = sum(int(m.sum()) for m in masks[ref].values())
    for name, row in rows.items():
        differ = sum(int((masks[name][c] != masks[ref][c]).sum()) for c in masks[ref])
        row["voxels_differing"] = differ
        row["share_of_lesion_voxels"] = differ / max(lesion, 1)
        row["max_case_dice_delta"] = max(abs(row["per_case_dice"][c] - rows[ref]["per_case_dice"][c])
                                         for c in masks[ref])
        row["speedup_vs_cpu"] = rows[ref]["median_s_per_case"] / row["median_s_per_case"]
    result = {"cases": [c.case_id for c in cases], "reference": ref, "rows": rows, "gemm_peak": peaks,
              "machine": host, "command": f"python benchmarks/engine_table.py --cases {args.cases}"}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    table = [f"One run on {len(cases)} real cases, 2 threads, {cpu_phrase(host)}; generated by "
             f"`{result['command']}` ({args.json.name if args.json else 'no JSON'}). Dice / MASD / NSD are the "
             "whole ensemble on its own training cases (in-sample): they compare the engines with each other, not "
             "the model with unseen data (training/RESULTS.md has the nested figures). Fraction of peak: the "
             "case's FLOPs (counted from the ONNX graphs at the shapes the runtime feeds) over its seconds, against "
             f"an OpenVINO MatMul on the same 2 threads at the row's precision, the better of a measurement before and "
             "after the runs: " + ", ".join(f"{p} {peaks[p]['gflops']} GFLOP/s" for p in precisions)
             + " (`benchmarks/gemm_peak.py`). The seconds include reading, "
             "resampling and post-processing, so the fraction is a lower bound on the networks' own.", "",
             "| engine | s/case (median) | speed-up vs --device cpu | peak RSS GiB | GFLOP/case | fraction of the "
             "GEMM peak | masks vs --device cpu (voxels / share of lesion voxels) | max per-case ΔDice | Dice | "
             "MASD mm | NSD |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        table.append(f"| {name} | {r['median_s_per_case']:.2f} | {r['speedup_vs_cpu']:.2f}× | "
                     f"{r['peak_rss_gib']:.2f} | {r['gflop_per_case_median']:.0f} | "
                     f"{100 * r['fraction_of_peak']:.0f} % "
                     f"({r['precision']}) | {r['voxels_differing']} / {100 * r['share_of_lesion_voxels']:.3f} % | "
                     f"{r['max_case_dice_delta']:.4f} | {r['dice']:.4f} | {r['masd']:.3f} | {r['nsd']:.4f} |")
    text = "\n".join(table)
    print(text)
    if args.doc:
        args.doc.write_text(with_block(args.doc.read_text(), host["block"], text))


def cpu_phrase(host: dict) -> str:
    """'this machine's <CPU> (native bf16: amx_bf16, avx512_bf16)' or '... (no native bf16: auto is f32)'."""
    if host["native_bf16"]:
        return f"this machine's {host['cpu']} (native bf16: {', '.join(host['bf16_flags']) or 'per OpenVINO'})"
    return f"this machine's {host['cpu']} (no native bf16, so auto is f32: the bf16 row needs AMX-BF16 or AVX512_BF16)"



if __name__ == "__main__":
    main()
