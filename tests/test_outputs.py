"""Where a run's files go (hieseg.outputs.paths.case_outputs), and the one failure path of a cohort run.

The expected paths are written out literally: they are the published interface (Grand Challenge's output socket,
the folder layout the README documents), not a copy of the code's constants.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from casefiles import files_under, write_bonbid_case, write_gc_case

from hieseg.app.cli import main
from hieseg.errors import InputError
from hieseg.files import TEMP_PREFIX
from hieseg.inputs.cases import Case, find_cases, pair_case
from hieseg.outputs.paths import CaseOutputs, case_outputs, summary_path

OUT = Path("/out")
BONBID = Case("MGHNICU_014", Path("a.mha"), Path("z.mha"), "MGHNICU_014-VISIT_01_lesion")


@pytest.fixture
def gc_case(tmp_path) -> Case:
    return find_cases(write_gc_case(tmp_path / "in"))[0]


def test_grand_challenge_layout(gc_case):
    assert case_outputs(gc_case, OUT) == CaseOutputs(
        OUT / "images/hie-lesion-segmentation/overlay.mha", OUT / "hieseg-report.json")
    assert case_outputs(gc_case, OUT, "mha", probability=True, qc=True) == CaseOutputs(
        OUT / "images/hie-lesion-segmentation/overlay.mha", OUT / "hieseg-report.json",
        OUT / "probability.mha", OUT / "qc.png")


def test_grand_challenge_layout_refuses_another_mask_format(gc_case):
    with pytest.raises(InputError, match=r"^--format nii.gz: .*images/hie-lesion-segmentation/overlay.mha.*mha"):
        case_outputs(gc_case, OUT, "nii.gz")


@pytest.mark.parametrize("fmt", ["mha", "nii.gz"])
def test_folder_layout_in_both_formats(fmt):
    assert case_outputs(BONBID, OUT, fmt) == CaseOutputs(OUT / f"MGHNICU_014-VISIT_01_lesion.{fmt}",
                                                         OUT / "reports/MGHNICU_014.json")
    assert case_outputs(BONBID, OUT, fmt, probability=True, qc=True) == CaseOutputs(
        OUT / f"MGHNICU_014-VISIT_01_lesion.{fmt}", OUT / "reports/MGHNICU_014.json",
        OUT / f"probabilities/MGHNICU_014_probability.{fmt}", OUT / "qc/MGHNICU_014.png")


def test_an_explicit_pair_is_a_folder_case():
    case = pair_case("/data/MGHNICU_301-VISIT_02-ADC_ss.nii.gz", "/data/z.nii.gz")
    assert not case.grand_challenge
    assert case_outputs(case, OUT).mask == OUT / "MGHNICU_301-VISIT_02_lesion.mha"
    assert case_outputs(pair_case("/d/sub-7_adc.mha", "/d/z.mha"), OUT).mask == OUT / "sub-7_adc_lesion.mha"


def test_unknown_format_is_refused():
    with pytest.raises(InputError, match="--format tiff"):
        case_outputs(BONBID, OUT, "tiff")


def test_files_report_last_and_the_report_entry():
    outputs = CaseOutputs(OUT / "m.mha", OUT / "r.json", qc=OUT / "q.png")
    assert outputs.files() == [OUT / "m.mha", OUT / "q.png", OUT / "r.json"]
    assert outputs.to_json() == {"mask": "/out/m.mha", "probability": None, "qc": "/out/q.png"}


def test_summary_names():
    assert summary_path(OUT) == OUT / "summary.csv"
    assert summary_path(OUT, "2/5") == OUT / "summary_2of5.csv"


# ------------------------------------------------------------------------------------------ through the CLI


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if " ERROR " in line]


def test_format_in_grand_challenge_mode_is_one_line_before_the_model_loads(tmp_path, toy_model, capsys):
    write_gc_case(tmp_path / "in")
    code = main(["predict", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(toy_model),
                 "--format", "nii.gz"])
    err = capsys.readouterr().err
    assert code == 1 and len(_errors(err)) == 1 and "--format nii.gz" in _errors(err)[0], err
    assert "members loaded" not in err
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_grand_challenge_mode_with_probability_and_qc(tmp_path, toy_model, capsys):
    write_gc_case(tmp_path / "in")
    assert main(["predict", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(toy_model),
                 "--save-prob", "--qc"]) == 0
    out = tmp_path / "out"
    assert files_under(out) == ["hieseg-report.json", "images/hie-lesion-segmentation/overlay.mha",
                                "probability.mha", "qc.png"]  # one case: no summary.csv
    report = json.loads((out / "hieseg-report.json").read_text())
    assert report["outputs"] == {"mask": str(out / "images/hie-lesion-segmentation/overlay.mha"),
                                 "probability": str(out / "probability.mha"), "qc": str(out / "qc.png")}
    assert list(report)[-2:] == ["outputs", "seconds"] and "write" in report["seconds"]
    assert capsys.readouterr().out.strip().endswith("overlay.mha")


def test_failing_cases_among_good_ones_take_one_path(tmp_path, toy_model, capsys, monkeypatch):
    """An input error (case 2) and a bug met while its files are being staged (case 4, after its mask was
    staged): each is one error line, a failed summary row, exit code 1, and no file of that case (nor a
    temporary) is left; the good cases are written whole."""
    import hieseg.outputs.qc as qc

    for n in (1, 2, 3, 4):
        write_bonbid_case(tmp_path / "in", n)
    (tmp_path / "in/2Z_ADC/Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha").write_bytes(b"garbage")
    montage = qc.montage_png

    def montage_failing_for_case_4(adc, mask, title="", **kwargs):
        if title.startswith("MGHNICU_004"):
            raise ZeroDivisionError("a bug")
        return montage(adc, mask, title=title, **kwargs)

    monkeypatch.setattr(qc, "montage_png", montage_failing_for_case_4)
    out = tmp_path / "out"
    code = main(["predict", str(tmp_path / "in"), str(out), "--model", str(toy_model), "--qc"])
    captured = capsys.readouterr()
    assert code == 1
    errors = _errors(captured.err)
    assert len(errors) == 2, errors
    assert "MGHNICU_002" in errors[0] and "Zmap_MGHNICU_002" in errors[0]
    assert "MGHNICU_004: unexpected ZeroDivisionError: a bug" in errors[1]
    names = files_under(out)
    assert not any("MGHNICU_002" in n or "MGHNICU_004" in n or TEMP_PREFIX in n for n in names), names
    for n in (1, 3):
        assert {f"MGHNICU_00{n}-VISIT_01_lesion.mha", f"reports/MGHNICU_00{n}.json", f"qc/MGHNICU_00{n}.png"} <= \
            set(names)
    rows = {r["case_id"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert [rows[f"MGHNICU_00{n}"]["status"] for n in (1, 2, 3, 4)] == ["ok", "failed", "ok", "failed"]
    assert rows["MGHNICU_004"]["error"] == "unexpected ZeroDivisionError: a bug"
    assert "4 case(s)" in captured.err and "2 ok, 2 failed (MGHNICU_002, MGHNICU_004)" in captured.err
    assert captured.out.count("\n") == 2  # stdout: one result line per written case
