"""An interrupted 16-case run on real BONBID-HIE cases, killed mid-way and resumed with --continue, gives masks
voxel-identical to an uninterrupted run (and a complete summary). The uninterrupted run is the 40-case one the
slow suite makes anyway (conftest ``real_predictions``: same model, same options), not a second run of 16.

Slow: about 17 cases of the shipped ensemble on 2 CPU cores, beside the shared 40-case run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hieseg.app.cli import main
from hieseg.inputs.cases import find_cases
from hieseg.inputs.io import Geometry

REPO = Path(__file__).resolve().parents[1]
N_CASES = 16


def _finished(out: Path) -> int:
    """Cases whose final report (the one with the timings, written after the mask) is there."""
    count = 0
    for path in (p for p in (out / "reports").glob("*.json") if not p.name.startswith(".")):  # temporaries aside
        try:
            count += "seconds" in json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    return count


@pytest.mark.slow
def test_killed_run_resumed_with_continue_is_voxel_identical(tmp_path, real_predictions, capsys):
    root, whole, model = real_predictions
    cases = find_cases(root)[:N_CASES]
    case_list = tmp_path / "cases.csv"
    with case_list.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "adc", "zadc"])
        writer.writerows([c.case_id, c.adc, c.zadc] for c in cases)

    # interrupted: SIGKILL (no chance to clean up) in the middle of case 7's output commit, its mask in place and
    # its report not yet (tests/kill_at.py: a named stage, no timing)
    resumed = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), "mid-commit", "7", "predict",
                           str(case_list), str(resumed), "--model", str(model), "-q"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    done_before = _finished(resumed)
    print(f"\nkilled the run after {done_before} of {N_CASES} finished cases", flush=True)
    assert done_before == 6, done_before
    assert not (resumed / "summary.csv").exists()  # the killed run never got to its summary

    capsys.readouterr()
    assert main(["predict", str(case_list), str(resumed), "--model", str(model), "--continue"]) == 0
    err = capsys.readouterr().err
    assert f"--continue: skipping {done_before} of {N_CASES} case(s) already done" in err

    for case in cases:
        a = sitk.ReadImage(str(whole / f"{case.output_stem}.mha"))
        b = sitk.ReadImage(str(resumed / f"{case.case_id}_lesion.mha"))
        assert Geometry.of(a) == Geometry.of(b) == Geometry.of(sitk.ReadImage(str(case.adc))), case.case_id
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b),
                                      err_msg=case.case_id)
    rows = list(csv.DictReader((resumed / "summary.csv").open()))
    assert [r["case_id"] for r in rows] == [c.case_id for c in cases]
    assert {r["status"] for r in rows} == {"ok"}
    leftovers = [p.name for p in resumed.rglob(".*") if p.is_file()]  # temporaries of the killed writes
    print(f"killed after {done_before} of {N_CASES} cases; resumed; leftover temporaries: {leftovers}")
