"""The bf16 gate on every real case: OpenVINO bf16 masks against OpenVINO f32 (which matches ONNX Runtime's CPU
provider voxel for voxel, docs/benchmark.md), per case: voxels that differ, their share of the f32 lesion voxels,
and the Dice against the label under each precision.

    .venv/bin/python benchmarks/bf16_gate.py --json benchmarks/results/bf16-gate-40cases.json --doc docs/benchmark.md
    .venv/bin/python benchmarks/bf16_gate.py --from-json benchmarks/results/bf16-gate-40cases.json \
        --doc docs/benchmark.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from doc_block import with_block  # noqa: E402
from realdata import real_cases_dir  # noqa: E402

from hieseg.app.pipeline import Segmenter  # noqa: E402
from hieseg.evaluation.metrics import case_metrics  # noqa: E402
from hieseg.inputs.cases import find_cases  # noqa: E402
from hieseg.inputs.io import read_image  # noqa: E402

VOXEL_SHARE, DICE_DELTA = 0.001, 0.005  # the gate of tests/test_provider_parity.py


def render(result: dict) -> str:
    """The benchmark document's paragraph, from the JSON (never typed by hand)."""
    s, rows = result["summary"], {r["case_id"]: r for r in result["rows"]}
    over = "; ".join(f"{c}: {rows[c]['voxels_differing']} voxel(s) of {rows[c]['lesion_voxels_f32']}, Dice "
                     f"{rows[c]['dice_f32']:.4f} → {rows[c]['dice_bf16']:.4f}" for c in s["cases_over_dice_delta"])
    return (f"bf16 against f32 on all {s['cases']} real cases (OpenVINO both, `{s['command']}`, "
            f"bf16-gate-40cases.json): {s['voxels_differing']} voxels differ, "
            f"{100 * s['share_of_lesion_voxels']:.3f} % "
            f"of the lesion voxels (gate {100 * s['gate']['voxel_share']:.1f} %); per-case Dice moves by at most "
            f"{s['max_abs_dice_delta']:.4f} (mean {s['mean_dice_delta']:+.5f}); "
            f"{len(s['cases_over_dice_delta'])} case(s) move by more than {s['gate']['dice_delta']}"
            + (f" ({over})" if over else "") + ". One voxel moves a case's Dice by about 2 / (|prediction| + |truth|): "
            "on the smallest lesions the per-case Dice gate is finer than one voxel.")


def measure(args: argparse.Namespace) -> dict:
    root = real_cases_dir()
    cases = find_cases(root)[: args.cases]
    segmenters = {p: Segmenter(None, "openvino", precision=p) for p in ("f32", "bf16")}
    rows = []
    for case in cases:
        truth = read_image(root / "3LABEL" / f"{case.case_id}-VISIT_01_lesion.mha", dtype=None)[0]
        got = {p: s.segment_case(case) for p, s in segmenters.items()}
        spacing = got["f32"].geometry.spacing_zyx
        dice = {p: case_metrics(truth, r.mask, spacing)["dice"] for p, r in got.items()}
        lesion = int(got["f32"].mask.sum())
        differ = int((got["f32"].mask != got["bf16"].mask).sum())
        rows.append({"case_id": case.case_id, "lesion_voxels_f32": lesion, "voxels_differing": differ,
                     "dice_f32": dice["f32"], "dice_bf16": dice["bf16"], "dice_delta": dice["bf16"] - dice["f32"]})
        print(f"{case.case_id}: {differ} of {lesion} voxels differ, Dice {dice['f32']:.4f} -> {dice['bf16']:.4f}")
    lesion = sum(r["lesion_voxels_f32"] for r in rows)
    differ = sum(r["voxels_differing"] for r in rows)
    over = [r["case_id"] for r in rows if abs(r["dice_delta"]) > DICE_DELTA]
    summary = {"cases": len(rows), "voxels_differing": differ, "share_of_lesion_voxels": differ / max(lesion, 1),
               "max_abs_dice_delta": max(abs(r["dice_delta"]) for r in rows),
               "mean_dice_delta": sum(r["dice_delta"] for r in rows) / len(rows),
               "cases_over_dice_delta": over, "gate": {"voxel_share": VOXEL_SHARE, "dice_delta": DICE_DELTA},
               "command": "python benchmarks/bf16_gate.py" + (f" --cases {args.cases}" if args.cases else "")}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=None, help="the first N cases (default: all)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--from-json", type=Path, help="render an earlier run's JSON instead of running")
    ap.add_argument("--doc", type=Path)
    args = ap.parse_args()
    result = json.loads(args.from_json.read_text()) if args.from_json else measure(args)
    if args.doc:
        args.doc.write_text(with_block(args.doc.read_text(), "bf16-gate", render(result)))


if __name__ == "__main__":
    main()
