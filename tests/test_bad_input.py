"""Every bad input: one error line naming the file and the problem, exit code 1, and no output left behind."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from casefiles import files_under, write_bonbid_case, write_gc_case

from hieseg.app.cli import grand_challenge_main, main
from hieseg.inputs.phantom import make_phantom

ADC = "images/skull-stripped-adc-brain-mri/case.mha"
ZADC = "images/z-score-adc/case.mha"


def run_gc(tmp_path, model, capsys, inp=None):
    out = tmp_path / "out"
    code = grand_challenge_main(["--input", str(inp or tmp_path / "in"), "--output", str(out),
                                 "--model", str(model)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    return code, errors, out


def assert_clean_failure(code, errors, out, *needles):
    assert code == 1
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not out.exists() or files_under(out) == [], files_under(out)


def rewrite(path, array=None, **geometry):
    image = sitk.ReadImage(str(path))
    if array is not None:
        new = sitk.GetImageFromArray(array)
        new.CopyInformation(image) if new.GetDimension() == image.GetDimension() else None
        image = new
    for key, value in geometry.items():
        getattr(image, f"Set{key}")(value)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def case(tmp_path):
    return write_gc_case(tmp_path / "in")


def test_missing_modality(tmp_path, toy_model, case, capsys):
    shutil.rmtree(case / "images/z-score-adc")
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "z-score-adc", "no Z-ADC image found")


def test_two_files_in_one_slot(tmp_path, toy_model, case, capsys):
    shutil.copy(case / ADC, case / "images/skull-stripped-adc-brain-mri/other.mha")
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "skull-stripped-adc-brain-mri",
                         "expected one skull-stripped ADC image, found 2")


def test_2d_image(tmp_path, toy_model, case, capsys):
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkFloat32), str(case / ADC))
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "case.mha", "expected a 3D image, got 2D")


def test_4d_image(tmp_path, toy_model, case, capsys):
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkFloat32), str(case / ZADC))
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "z-score-adc/case.mha", "expected a 3D image, got 4D")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, toy_model, case, capsys, bad):
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(case / ZADC)))
    array[5, 50, 50] = bad
    rewrite(case / ZADC, array)
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "z-score-adc/case.mha", "voxels are",
                         "NaN" if np.isnan(bad) else "Inf")


@pytest.mark.parametrize("change,needle", [({"Origin": (0.0, 0.0, 2.0)}, "origin"),
                                           ({"Spacing": (1.6, 1.5, 5.0)}, "spacing"),
                                           ({"Direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}, "direction")])
def test_real_grid_mismatch(tmp_path, toy_model, case, capsys, change, needle):
    rewrite(case / ZADC, **change)
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "z-score-adc/case.mha", "grid differs", needle)


def test_size_mismatch(tmp_path, toy_model, case, capsys):
    phantom = make_phantom(size=(100, 112, 22))
    image = phantom.geometry.apply(sitk.GetImageFromArray(phantom.zadc))
    sitk.WriteImage(image, str(case / ZADC))
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "grid differs", "size (112, 112, 22) vs (100, 112, 22)")


def test_all_zero_brain(tmp_path, toy_model, case, capsys):
    rewrite(case / ADC, np.zeros((22, 112, 112), np.float32))
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "skull-stripped-adc-brain-mri/case.mha",
                         "no brain voxels")


def test_corrupt_file(tmp_path, toy_model, case, capsys):
    (case / ADC).write_bytes(b"this is not a MetaImage\x00\x01")
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "case.mha", "cannot read")


def test_truncated_file(tmp_path, toy_model, case, capsys):
    raw = case / "raw.mha"
    sitk.WriteImage(sitk.ReadImage(str(case / ADC)), str(raw), useCompression=False)
    data = raw.read_bytes()
    (case / ADC).write_bytes(data[: len(data) // 2])
    raw.unlink()
    assert_clean_failure(*run_gc(tmp_path, toy_model, capsys), "skull-stripped-adc-brain-mri/case.mha", "cannot read")


def test_unwritable_output(tmp_path, toy_model, case, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    code = grand_challenge_main(["--input", str(case), "--output", str(blocker / "out"), "--model", str(toy_model)])
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert code == 1 and len(errors) == 1 and "blocker/out" in errors[0] and "cannot write" in errors[0]


def test_tampered_onnx(tmp_path, toy_model, case, capsys):
    model = tmp_path / "model"
    shutil.copytree(toy_model, model)
    with open(model / "toy2d.onnx", "ab") as fh:
        fh.write(b"\x00")
    assert_clean_failure(*run_gc(tmp_path, model, capsys), "toy2d.onnx", "checksum mismatch")


def test_missing_manifest(tmp_path, case, capsys):
    (tmp_path / "empty_model").mkdir()
    assert_clean_failure(*run_gc(tmp_path, tmp_path / "empty_model", capsys), "manifest.json", "not found")


def test_cuda_requested_without_gpu(tmp_path, toy_model, case, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA build of onnxruntime")
    code = grand_challenge_main(["--input", str(case), "--output", str(tmp_path / "out"), "--model", str(toy_model),
                                 "--device", "cuda"])
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert code == 1 and len(errors) == 1 and "--device cuda" in errors[0]
    assert not (tmp_path / "out" / "images").exists()


def test_one_bad_case_does_not_stop_the_others(tmp_path, toy_model, capsys):
    for n in (1, 2, 3):
        write_bonbid_case(tmp_path / "in", n)
    (tmp_path / "in/2Z_ADC/Zmap_MGHNICU_002-VISIT_01-ADC_smooth2mm_clipped10.mha").write_bytes(b"garbage")
    code = main(["predict", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(toy_model)])
    captured = capsys.readouterr()
    assert code == 1
    names = files_under(tmp_path / "out")
    assert "MGHNICU_001-VISIT_01_lesion.mha" in names and "MGHNICU_003-VISIT_01_lesion.mha" in names
    assert not any("MGHNICU_002" in n for n in names)
    assert "2 ok, 1 failed" in captured.err and "MGHNICU_002" in captured.err
    assert "failed" in (tmp_path / "out/summary.csv").read_text()


def test_memory_limit_as_rlimit_data_fails_cleanly(tmp_path, toy_model, case):
    """Grand Challenge applies its memory limit as RLIMIT_DATA: an overrun must be one error line, not a crash."""
    import subprocess
    import sys

    from conftest import REPO

    code = (
        "import resource, sys, numpy, onnxruntime, SimpleITK, scipy.ndimage\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (200 * 2**20, 200 * 2**20))\n"
        "from hieseg.app.cli import grand_challenge_main\n"
        f"sys.exit(grand_challenge_main(['--input', {str(case)!r}, '--output', {str(tmp_path / 'out')!r}, "
        f"'--model', {str(toy_model)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        pytest.skip("the case fit in 200 MiB of data segment here")
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1 and ("memory" in errors[0].lower()), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "images").exists()
