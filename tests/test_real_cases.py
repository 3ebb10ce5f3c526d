"""All 40 real BONBID-HIE cases through `hieseg predict`: outputs on exactly the input grids, values in {0, 1}."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from hieseg.inputs.cases import find_cases
from hieseg.inputs.io import Geometry

# The shipped ensemble on all 40 real cases (about 4 minutes on 2 cores; conftest real_predictions, one run shared
# with tests/test_resume_real.py): .ci/run runs it with -m slow.
pytestmark = pytest.mark.slow


def test_every_output_has_the_input_grid_and_binary_values(real_predictions):
    root, out, _ = real_predictions
    cases = find_cases(root)
    assert len(cases) == 40
    for case in cases:
        adc = sitk.ReadImage(str(case.adc))
        mask = sitk.ReadImage(str(out / f"{case.output_stem}.mha"))
        assert Geometry.of(mask) == Geometry.of(adc), case.case_id  # exact, not approximately
        assert mask.GetPixelID() == sitk.sitkUInt8
        values = np.unique(sitk.GetArrayViewFromImage(mask))
        assert set(values.tolist()) <= {0, 1}, case.case_id
        # Nothing outside the brain.
        assert not (sitk.GetArrayViewFromImage(mask)[sitk.GetArrayViewFromImage(adc) <= 0]).any()


def test_summary_lists_every_case(real_predictions):
    _, out, _ = real_predictions
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
