"""``hieseg evaluate``: pairing, missing predictions, geometry checks, summary, CSV / JSON output and the CLI."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from hieseg.errors import InputError
from hieseg.evaluation.evaluate import evaluate_dirs, format_report, pair_files, summarize
from hieseg.inputs.io import Geometry, write_image, write_mask

pytest.importorskip("surface_distance")

SHAPE = (8, 20, 24)  # (z, y, x)
GEOMETRY = Geometry((24, 20, 8), (1.5, 1.5, 4.0), (-10.0, 5.0, 2.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _mask(*boxes) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    for z, y, x in boxes:
        mask[z, y, x] = 1
    return mask


LESION = (slice(3, 5), slice(5, 9), slice(6, 10))  # 2 x 4 x 4 = 32 voxels
# MASD and NSD of MGHNICU_001 (truth LESION, prediction NEAR + FAR): the challenge's own bonbidhie_eval/evaluation.py
# (baorina/BONBID-HIE-MICCAI2023, score_case) run once on these two files. Literal, so that hieseg cannot agree
# with itself: the old (x, y, z) spacing order gave other numbers here (4 mm slices, 1.5 mm pixels).
NEAR_MASD_MM = 1.8368245787938238
NEAR_NSD = 0.9170706061992151
NEAR = (slice(3, 5), slice(6, 10), slice(6, 10))
FAR = (slice(1, 2), slice(15, 17), slice(18, 20))


@pytest.fixture()
def folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_001-VISIT_01_lesion.mha")
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_002-VISIT_01_lesion.nii.gz")
    write_mask(_mask(), GEOMETRY, gt / "MGHNICU_003-VISIT_01_lesion.mha")  # no lesion
    write_mask(_mask(LESION), GEOMETRY, gt / "other.nii")  # no MGHNICU id: paired by file stem
    # Predictions in other formats and names: paired by case id.
    write_mask(_mask(NEAR, FAR), GEOMETRY, pred / "MGHNICU_001.nii.gz")
    write_mask(_mask(), GEOMETRY, pred / "MGHNICU_003-VISIT_01_lesion.mha")
    write_mask(_mask(LESION), GEOMETRY, pred / "other.mha")
    write_mask(_mask(LESION), GEOMETRY, pred / "MGHNICU_999.mha")  # no truth: ignored
    return gt, pred


def test_pairing_by_case_id_across_formats(folders):
    gt, pred = folders
    pairs, extra = pair_files(gt, pred)
    assert [(c, t.name, p.name if p else None) for c, t, p in pairs] == [
        ("MGHNICU_001", "MGHNICU_001-VISIT_01_lesion.mha", "MGHNICU_001.nii.gz"),
        ("MGHNICU_002", "MGHNICU_002-VISIT_01_lesion.nii.gz", None),
        ("MGHNICU_003", "MGHNICU_003-VISIT_01_lesion.mha", "MGHNICU_003-VISIT_01_lesion.mha"),
        ("other", "other.nii", "other.mha"),
    ]
    assert [p.name for p in extra] == ["MGHNICU_999.mha"]


def test_two_files_for_one_case_are_an_error(folders):
    gt, pred = folders
    write_mask(_mask(), GEOMETRY, pred / "MGHNICU_001-VISIT_01_lesion.mha")
    with pytest.raises(InputError, match="two prediction files for case MGHNICU_001"):
        pair_files(gt, pred)


def test_rows_and_summary(folders, caplog):
    gt, pred = folders
    with caplog.at_level(logging.WARNING):
        report = evaluate_dirs(gt, pred, show_progress=False)
    rows = {r["case"]: r for r in report["cases"]}
    assert not report["failed"]
    assert "MGHNICU_999" in caplog.text  # the unmatched prediction is reported
    # Missing prediction: a failed case, and listed.
    missing = rows["MGHNICU_002"]
    assert missing["missing"] and missing["dice"] == 0.0 and missing["nsd"] == 0.0 and math.isnan(missing["masd"])
    assert report["summary"]["missing_predictions"] == ["MGHNICU_002"]
    # Both empty: perfect.
    assert (rows["MGHNICU_003"]["dice"], rows["MGHNICU_003"]["masd"], rows["MGHNICU_003"]["nsd"]) == (1.0, 0.0, 1.0)
    assert rows["MGHNICU_003"]["stratum"] == "none"
    assert rows["other"]["dice"] == 1.0
    # Partial overlap (2 x 3 x 4 = 24 voxels) plus a 4-voxel false-positive component: Dice = 2 * 24 / (32 + 36).
    near = rows["MGHNICU_001"]
    assert near["dice"] == pytest.approx(48 / 68)
    assert near["masd"] == pytest.approx(NEAR_MASD_MM, abs=1e-9) and near["nsd"] == pytest.approx(NEAR_NSD, abs=1e-9)
    assert (near["lesions"], near["lesions_detected"], near["fp_components"]) == (1, 1, 1)
    assert near["burden"] == pytest.approx(32 / np.prod(SHAPE))  # no --adc: relative to the image
    assert near["truth_ml"] == pytest.approx(32 * 1.5 * 1.5 * 4.0 / 1000)
    # Means skip NaN: MASD is the mean of the three defined values (MGHNICU_001, 003, other).
    overall = report["summary"]["overall"]
    assert overall["cases"] == 4 and overall["masd_undefined"] == 1
    assert overall["masd"] == pytest.approx((NEAR_MASD_MM + 0.0 + 0.0) / 3, abs=1e-9)
    assert overall["dice"] == pytest.approx((48 / 68 + 0.0 + 1.0 + 1.0) / 4, abs=1e-12)
    assert overall["nsd"] == pytest.approx((NEAR_NSD + 0.0 + 1.0 + 1.0) / 4, abs=1e-9)
    detection = report["summary"]["detection"]
    assert (detection["lesions"], detection["lesions_detected"]) == (3, 2)
    text = format_report(report)
    assert "missing predictions (scored Dice 0, NSD 0): MGHNICU_002" in text and text.splitlines()[0].startswith("case")


def test_burden_relative_to_brain_with_adc(folders, tmp_path):
    gt, pred = folders
    adc_dir = tmp_path / "adc"
    adc = np.zeros(SHAPE, dtype=np.float32)
    adc[2:6, 2:18, 2:22] = 1500.0  # 4 * 16 * 20 = 1280 brain voxels
    write_image(adc, GEOMETRY, adc_dir / "MGHNICU_001-VISIT_01-ADC_ss.mha")
    report = evaluate_dirs(gt, pred, adc_dir=adc_dir, show_progress=False)
    rows = {r["case"]: r for r in report["cases"]}
    assert rows["MGHNICU_001"]["burden"] == pytest.approx(32 / 1280)
    assert rows["MGHNICU_001"]["stratum"] == "1-5%"
    assert rows["other"]["burden"] == pytest.approx(32 / np.prod(SHAPE))  # no ADC for this one: whole image


def test_geometry_differences_warn_and_use_the_truths_grid(tmp_path, caplog):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_001.mha")
    moved = Geometry(GEOMETRY.size, (1.6, 1.6, 4.0), (-5.0, 5.0, 2.0), GEOMETRY.direction)
    write_mask(_mask(LESION), moved, pred / "MGHNICU_001.mha")
    with caplog.at_level(logging.WARNING):
        report = evaluate_dirs(gt, pred, show_progress=False)
    row = report["cases"][0]
    assert row["dice"] == 1.0 and row["masd"] == 0.0  # same voxels on the truth's grid, as the scorer does it
    assert "geometry differs" in caplog.text and "origin" in caplog.text and "spacing" in caplog.text
    assert row["warnings"]


def test_rounding_level_geometry_differences_do_not_warn(tmp_path, caplog):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_001.mha")
    nudged = Geometry(GEOMETRY.size, GEOMETRY.spacing, (-10.0001, 5.0001, 2.0), GEOMETRY.direction)
    write_mask(_mask(LESION), nudged, pred / "MGHNICU_001.mha")
    with caplog.at_level(logging.WARNING):
        report = evaluate_dirs(gt, pred, show_progress=False)
    assert not report["cases"][0]["warnings"] and "geometry" not in caplog.text


def test_different_shapes_fail_that_case_only(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_001.mha")
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_002.mha")
    write_mask(_mask(LESION), GEOMETRY, pred / "MGHNICU_001.mha")
    small = Geometry((24, 20, 7), GEOMETRY.spacing, GEOMETRY.origin, GEOMETRY.direction)
    write_mask(np.zeros((7, 20, 24)), small, pred / "MGHNICU_002.mha")
    report = evaluate_dirs(gt, pred, show_progress=False)
    assert [r["case"] for r in report["cases"]] == ["MGHNICU_001"]
    assert report["failed"][0]["case"] == "MGHNICU_002" and "does not match" in report["failed"][0]["error"]
    assert report["summary"]["overall"]["cases"] == 1


def _score_prediction(tmp_path, caplog, prediction: np.ndarray) -> dict:
    """The truth LESION against ``prediction`` written as is (its own pixel type), scored with warnings captured."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_001.mha")
    write_image(prediction, GEOMETRY, pred / "MGHNICU_001.mha")
    with caplog.at_level(logging.WARNING):
        return evaluate_dirs(gt, pred, show_progress=False)["cases"][0]


def test_probability_map_counts_as_background_and_warns(tmp_path, caplog):
    row = _score_prediction(tmp_path, caplog, _mask(LESION).astype(np.float32) * 0.9)
    assert row["dice"] == 0.0 and "threshold probability maps" in caplog.text


def test_label_255_scores_like_the_scorer_and_warns(tmp_path, caplog):
    """The scorer's Dice counts each label on its own (LabelOverlapMeasuresImageFilter): a 0/255 copy of the 0/1
    truth scores Dice 0, while MASD and NSD, on the bool masks, are perfect."""
    row = _score_prediction(tmp_path, caplog, _mask(LESION).astype(np.float32) * 255)
    assert (row["dice"], row["masd"], row["nsd"]) == (0.0, 0.0, 1.0)
    assert "labels 255" in caplog.text and "write 0/1 masks" in caplog.text


def test_values_the_uint8_cast_wraps_to_zero_are_background_and_warn(tmp_path, caplog):
    """SimpleITK's cast to uint8 wraps modulo 256: a prediction holding 256 is empty for the scorer."""
    row = _score_prediction(tmp_path, caplog, _mask(LESION).astype(np.int16) * 256)
    assert row["dice"] == 0.0 and row["nsd"] == 0.0 and math.isnan(row["masd"]) and row["pred_ml"] == 0.0
    assert "32 non-zero prediction voxels become 0" in caplog.text


def test_summary_of_no_rows():
    summary = summarize([])
    assert summary["overall"]["cases"] == 0 and math.isnan(summary["overall"]["dice"])


def test_cli_writes_csv_and_json(folders, tmp_path, capsys):
    from hieseg.app.cli import main

    gt, pred = folders
    out_csv, out_json = tmp_path / "out" / "rows.csv", tmp_path / "out" / "report.json"
    rc = main(["evaluate", str(gt), str(pred), "--csv", str(out_csv), "--json", str(out_json), "-q"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "MGHNICU_001" in stdout and "all" in stdout
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("case,dice,masd,nsd") and len(lines) == 5
    assert "MGHNICU_002,0.0,,0.0,True" in out_csv.read_text()  # undefined MASD is an empty cell

    def no_nan(token):
        raise AssertionError(f"invalid JSON constant {token}")

    report = json.loads(out_json.read_text(), parse_constant=no_nan)
    assert report["spacing_order"] == "scorer" and len(report["cases"]) == 4
    assert report["summary"]["strata"]["none"]["masd"] == 0.0


def test_cli_exit_code_on_failed_case_and_physical_order(tmp_path, capsys):
    from hieseg.app.cli import main

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(_mask(LESION), GEOMETRY, gt / "MGHNICU_001.mha")
    write_mask(np.zeros((7, 20, 24)), Geometry((24, 20, 7), GEOMETRY.spacing, GEOMETRY.origin, GEOMETRY.direction),
               pred / "MGHNICU_001.mha")
    assert main(["evaluate", str(gt), str(pred), "--spacing-order", "physical", "-q"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "nowhere"), str(pred), "-q"]) == 1


def test_a_missing_prediction_of_a_lesion_free_case_scores_zero(tmp_path):
    """An empty mask on an empty truth scores 1; no mask at all is a failed case and scores 0."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(_mask(), GEOMETRY, gt / "MGHNICU_003-VISIT_01_lesion.mha")
    pred.mkdir()
    row = evaluate_dirs(gt, pred, show_progress=False)["cases"][0]
    assert row["missing"] and (row["dice"], row["nsd"]) == (0.0, 0.0) and math.isnan(row["masd"])
