"""Cohort runs: CSV case lists, --shard auto (SLURM), hieseg merge, --continue, --device cuda:N."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from casefiles import files_under, write_bonbid_case

from hieseg.app.cli import main
from hieseg.app.merge import merge_summaries
from hieseg.engine import providers
from hieseg.engine.providers import parse_device
from hieseg.errors import DeviceError, InputError
from hieseg.inputs.cases import read_case_list
from hieseg.inputs.io import read_image
from hieseg.inputs.shards import resolve_shard
from hieseg.outputs.paths import CaseOutputs
from hieseg.outputs.resume import completed_report


def _summary(path):
    return list(csv.DictReader(path.open()))


@pytest.fixture()
def bonbid(tmp_path):
    for n in (3, 5, 8, 13, 21):
        write_bonbid_case(tmp_path / "in", n)
    return tmp_path / "in"


# ------------------------------------------------------------------------------------------ CSV case list


def test_csv_case_list_relative_to_its_folder(bonbid, tmp_path, toy_model, capsys):
    lines = ["case_id,adc,zadc"]
    for n in (3, 8):
        cid = f"MGHNICU_{n:03d}-VISIT_01"
        lines.append(f"patient{n},in/1ADC_ss/{cid}-ADC_ss.mha,"
                     f"{bonbid}/2Z_ADC/Zmap_{cid}-ADC_smooth2mm_clipped10.mha")
    (tmp_path / "cases.csv").write_text("\n".join(lines) + "\n")
    assert main(["predict", str(tmp_path / "cases.csv"), str(tmp_path / "out"), "--model", str(toy_model)]) == 0
    assert files_under(tmp_path / "out") == ["patient3_lesion.mha", "patient8_lesion.mha", "reports/patient3.json",
                                             "reports/patient8.json", "summary.csv"]
    assert [r["case_id"] for r in _summary(tmp_path / "out/summary.csv")] == ["patient3", "patient8"]


@pytest.mark.parametrize("text, needle", [
    ("case_id,adc\nx,a.mha\n", "missing zadc"),
    ("case_id,adc,zadc\nx,a.mha,\n", "line 2: empty zadc"),
    ("case_id,adc,zadc\nx,a.mha,z.mha\nx,b.mha,y.mha\n", "line 3: case_id 'x' appears twice"),
    ("case_id,adc,zadc\n../x,a.mha,z.mha\n", "not a usable file name"),
    ("case_id,adc,zadc\n", "has no cases"),
])
def test_bad_case_lists_name_the_line(tmp_path, text, needle):
    (tmp_path / "cases.csv").write_text(text)
    with pytest.raises(InputError, match=needle):
        read_case_list(tmp_path / "cases.csv")


def test_case_list_with_a_byte_order_mark_and_spaces(tmp_path):
    (tmp_path / "cases.csv").write_text("\ufeffcase_id, adc, zadc\nc1, /abs/a.mha, z.mha\n")
    (case,) = read_case_list(tmp_path / "cases.csv")
    assert (case.case_id, str(case.adc), case.zadc) == ("c1", "/abs/a.mha", tmp_path / "z.mha")


def test_missing_image_of_a_listed_case_fails_that_case_only(bonbid, tmp_path, toy_model):
    cid = "MGHNICU_003-VISIT_01"
    (tmp_path / "cases.csv").write_text(
        f"case_id,adc,zadc\nok,{bonbid}/1ADC_ss/{cid}-ADC_ss.mha,{bonbid}/2Z_ADC/Zmap_{cid}-ADC_smooth2mm_clipped10.mha\n"
        f"gone,{bonbid}/1ADC_ss/nothing.mha,{bonbid}/2Z_ADC/nothing.mha\n")
    assert main(["predict", str(tmp_path / "cases.csv"), str(tmp_path / "out"), "--model", str(toy_model)]) == 1
    rows = {r["case_id"]: r for r in _summary(tmp_path / "out/summary.csv")}
    assert rows["ok"]["status"] == "ok" and rows["gone"]["status"] == "failed"
    assert "nothing.mha: file not found" in rows["gone"]["error"]


# ------------------------------------------------------------------------------------------- SLURM shards


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, "1/4"),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, "4/4"),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, "4/4"),  # no MIN: numbered from 0
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "10",
      "SLURM_ARRAY_TASK_STEP": "2"}, "2/3"),  # --array=10-14:2
])
def test_shard_auto_from_slurm(env, expected):
    assert resolve_shard("auto", env) == expected
    assert resolve_shard("2/5", env) == "2/5" and resolve_shard(None, env) is None


@pytest.mark.parametrize("env, needle", [
    ({}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT not set"),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, "not in an array"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "not integers"),
])
def test_shard_auto_outside_an_array_is_a_clear_error(env, needle):
    with pytest.raises(InputError, match=needle):
        resolve_shard("auto", env)


def _run_shards(bonbid, out, toy_model, monkeypatch, n):
    for task in range(1, n + 1):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", str(n))
        assert main(["predict", str(bonbid), str(out), "--model", str(toy_model), "--shard", "auto", "-q"]) == 0


def test_shards_merge_to_the_unsharded_summary(bonbid, tmp_path, toy_model, monkeypatch, capsys):
    _run_shards(bonbid, tmp_path / "sharded", toy_model, monkeypatch, 3)
    assert sorted(p.name for p in (tmp_path / "sharded").glob("summary_*.csv")) == [
        "summary_1of3.csv", "summary_2of3.csv", "summary_3of3.csv"]
    assert main(["merge", str(tmp_path / "sharded"), "--expect", str(bonbid)]) == 0
    assert main(["predict", str(bonbid), str(tmp_path / "whole"), "--model", str(toy_model), "-q"]) == 0
    merged, whole = _summary(tmp_path / "sharded/summary.csv"), _summary(tmp_path / "whole/summary.csv")
    keys = ("case_id", "status", "lesion_volume_ml", "lesion_components", "burden_class")
    assert [{k: r[k] for k in keys} for r in merged] == [{k: r[k] for k in keys} for r in whole]
    assert len(merged) == 5


def test_merge_refuses_gaps_and_overlaps(bonbid, tmp_path, toy_model, monkeypatch):
    out = tmp_path / "sharded"
    _run_shards(bonbid, out, toy_model, monkeypatch, 2)
    (out / "summary_2of2.csv").rename(tmp_path / "summary_2of2.csv")
    with pytest.raises(InputError, match="gap: shard.s. 2 of 2 missing"):
        merge_summaries([out], out / "summary.csv")
    assert main(["merge", str(out)]) == 1  # the CLI: one error line, exit 1
    assert not (out / "summary.csv").exists()
    # the same shard twice (two folders), and a case in two shards
    (tmp_path / "other").mkdir()
    shutil.copy(out / "summary_1of2.csv", tmp_path / "other/summary_1of2.csv")
    with pytest.raises(InputError, match="shard 1 of 2 given twice"):
        merge_summaries([out, tmp_path / "other"], tmp_path / "m.csv")
    shutil.copy(out / "summary_1of2.csv", tmp_path / "a.csv")  # files not named by shard: only the overlap rule
    shutil.copy(out / "summary_1of2.csv", tmp_path / "b.csv")
    with pytest.raises(InputError, match="b.csv: overlap: case MGHNICU_003 is also in .*a.csv"):
        merge_summaries([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "m.csv")
    # a case of the input that no shard lists
    with pytest.raises(InputError, match=r"gap: 2 case\(s\) of the input are in no shard summary"):
        merge_summaries([tmp_path / "a.csv"], tmp_path / "m.csv", ["MGHNICU_003", "MGHNICU_005",
                                                                       "MGHNICU_008", "MGHNICU_013"], bonbid)


# -------------------------------------------------------------------------------------------- --continue


def test_continue_skips_complete_cases_and_redoes_incomplete_ones(bonbid, tmp_path, toy_model, capsys):
    out = tmp_path / "out"
    args = ["predict", str(bonbid), str(out), "--model", str(toy_model)]
    assert main(args) == 0
    first = {p.name: read_image(p)[0] for p in sorted(out.glob("*.mha"))}
    reports = {p.name: p.read_text() for p in sorted((out / "reports").glob("*.json"))}
    capsys.readouterr()
    # interrupted states: a case with its mask but only the first (untimed) report, one with no report, one
    # whose mask was never renamed into place; and one made by another model
    r5 = json.loads((out / "reports/MGHNICU_005.json").read_text())
    r5.pop("seconds")
    (out / "reports/MGHNICU_005.json").write_text(json.dumps(r5))
    (out / "reports/MGHNICU_008.json").unlink()
    (out / "MGHNICU_013-VISIT_01_lesion.mha").unlink()
    r21 = json.loads((out / "reports/MGHNICU_021.json").read_text())
    r21["model"]["manifest_sha256"] = "0" * 64
    (out / "reports/MGHNICU_021.json").write_text(json.dumps(r21))
    assert main(args + ["--continue"]) == 0
    captured = capsys.readouterr()
    assert "--continue: skipping 1 of 5 case(s) already done" in captured.err
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [
        "MGHNICU_005", "MGHNICU_008", "MGHNICU_013", "MGHNICU_021"]
    assert (out / "reports/MGHNICU_003.json").read_text() == reports["MGHNICU_003.json"]  # untouched
    for name, mask in first.items():
        np.testing.assert_array_equal(read_image(out / name)[0], mask)
    rows = _summary(out / "summary.csv")
    assert [r["case_id"] for r in rows] == ["MGHNICU_003", "MGHNICU_005", "MGHNICU_008", "MGHNICU_013",
                                             "MGHNICU_021"]
    assert {r["status"] for r in rows} == {"ok"} and rows[0]["seconds_total"]  # the skipped case's row is full
    assert main(args + ["--continue"]) == 0
    assert "--continue: skipping 5 of 5" in capsys.readouterr().err


def test_completed_report_needs_every_requested_output(tmp_path):
    mask, report_path, prob = tmp_path / "m.mha", tmp_path / "r.json", tmp_path / "p.mha"
    mask.write_bytes(b"x")
    report = {"seconds": {"total": 1.0}, "model": {"manifest_sha256": "abc"},
              "outputs": {"mask": str(mask), "probability": None, "qc": None}}
    report_path.write_text(json.dumps(report))
    outputs = CaseOutputs(mask, report_path)
    assert completed_report(outputs, "abc") == report
    assert completed_report(CaseOutputs(mask, report_path, probability=prob), "abc") is None  # now also --save-prob
    assert completed_report(outputs, "another model") is None
    report_path.write_text("{truncated")
    assert completed_report(outputs, "abc") is None


# ---------------------------------------------------------------------------------------------- cuda:N


def test_device_strings():
    assert parse_device("auto") == ("auto", 0) and parse_device("cuda") == ("cuda", 0)
    assert parse_device("cuda:3") == ("cuda", 3) and parse_device("CPU") == ("cpu", 0)
    for bad in ("cpu:1", "cuda:", "gpu", "cuda:-1", "tpu"):
        with pytest.raises(DeviceError, match="--device must be one of auto | cpu | cuda | cuda:N"):
            parse_device(bad)


def test_cuda_n_picks_that_gpu(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CUDA, providers.CPU])
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: True)
    assert providers.provider_plan("cuda:2").ort_providers()[0][1]["device_id"] == 2
    assert providers.provider_plan("cuda").ort_providers()[0][1]["device_id"] == 0
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: False)
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        providers.provider_plan("cuda:1")


def test_cli_rejects_a_bad_device(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), str(tmp_path / "out"), "--device", "gpu1"])
    assert exc.value.code == 2 and "cuda:N" in capsys.readouterr().err
