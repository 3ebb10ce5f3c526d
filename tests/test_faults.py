"""Fault injection (issue 13): full disks, inputs outside the training domain, broken files, hostile output
folders, kill -9 in the middle of a 16-case run. Each fault must end in one clear line and leave no half-written
output; what can be handled (a 0.5 mm volume, an integer Z-ADC) must be handled and said.

Run alone with ``pytest -m faults``. The disk-full rows mount a 1 MB tmpfs and need root (CI runs as root);
elsewhere they are skipped with a message. Rows on real cases skip without the BONBID tarball.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from casefiles import files_under, write_bonbid_case, write_gc_case
from conftest import REPO

from hieseg.app.cli import grand_challenge_main, main
from hieseg.errors import OutputError
from hieseg.files import TEMP_PREFIX
from hieseg.inputs.io import read_image
from hieseg.inputs.phantom import make_phantom

pytestmark = pytest.mark.faults

ADC = Path("images/skull-stripped-adc-brain-mri")
ZADC = Path("images/z-score-adc")
MASK = Path("images/hie-lesion-segmentation/overlay.mha")


def _log(capsys) -> tuple[list[str], list[str], str]:
    err = capsys.readouterr().err
    lines = err.splitlines()
    warnings = [ln for ln in lines if " WARNING " in ln and "running on CPU" not in ln]
    return [ln for ln in lines if " ERROR " in ln], warnings, err


def run_gc(inp: Path, out: Path, model: Path, capsys, *extra: str):
    code = grand_challenge_main(["--input", str(inp), "--output", str(out), "--model", str(model), *extra])
    return (code, *_log(capsys))


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX) or ".tmp" in p.name]


# ------------------------------------------------------------------------------------------------ disk full


@contextmanager
def small_tmpfs(where: Path, fill_blocks: int):
    """A 1 MB tmpfs at ``where`` with ``fill_blocks`` 4 KiB blocks taken by a filler file (256 = full)."""
    if os.geteuid() != 0:
        pytest.skip("disk-full faults mount a tmpfs: run as root (CI does)")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={where}/filler", "bs=4096", f"count={fill_blocks}"],
                       capture_output=True)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("fill_blocks", [256, 255], ids=["0-bytes-free", "4k-free"])
def test_disk_full_is_one_line_before_the_model_loads_and_leaves_nothing(tmp_path, toy_model, sample_input,
                                                                         capsys, fill_blocks):
    with small_tmpfs(tmp_path / "mnt", fill_blocks) as mnt:
        code, errors, _, err = run_gc(sample_input, mnt / "o", toy_model, capsys)
        left = files_under(mnt)
    assert code == 1
    assert len(errors) == 1 and "no space left on" in errors[0] and str(mnt) in errors[0], err
    assert "members loaded" not in err  # refused before the model loads
    assert left == ["filler"], left  # no mask, no report, no temporary file


def test_a_case_is_committed_whole_or_not_at_all(tmp_path, toy_model, sample_input):
    """The mask fits on the disk but the report does not: neither may appear (nor a temporary)."""
    from hieseg.app.pipeline import Segmenter
    from hieseg.inputs.cases import grand_challenge_case
    from hieseg.outputs.paths import CaseOutputs

    segmenter = Segmenter(toy_model)
    result = segmenter.segment_case(grand_challenge_case(sample_input))
    result.statistics["padding"] = "x" * 400_000  # the report alone needs more than the ~250 KB left
    with small_tmpfs(tmp_path / "mnt", 192) as mnt:
        with pytest.raises(OutputError, match="no space left on .* while writing .*report.json"):
            segmenter.write_outputs(result, CaseOutputs(mnt / "o" / "mask.mha", mnt / "o" / "reports" / "report.json"))
        left = files_under(mnt)
    assert left == ["filler"], left


def test_a_disk_filling_up_mid_run_stops_it_with_one_line_and_whole_cases_only(tmp_path, toy_model, capsys):
    """Room for the pre-flight test write but not for every case: the run stops at the first case that does not
    fit (the others could not be written either), and every case on disk is complete."""
    root = tmp_path / "in"
    for n in (1, 2, 3, 4):
        write_bonbid_case(root, n)
    # 124 KB free: room for the test write and two cases, not four (sized for the CPU provider's f32 probability
    # maps; bf16 noise compresses less)
    with small_tmpfs(tmp_path / "mnt", 225) as mnt:
        code = main(["predict", str(root), str(mnt / "o"), "--model", str(toy_model), "--save-prob", "--device", "cpu"])
        errors, _, err = _log(capsys)
        masks = sorted(p.name for p in (mnt / "o").glob("*.mha") if not p.name.startswith("."))
        reports = sorted(p for p in (mnt / "o" / "reports").glob("*.json") if not p.name.startswith("."))
        probs = sorted(p for p in (mnt / "o" / "probabilities").glob("*.mha") if not p.name.startswith("."))
        left = temporaries(mnt)
    assert code == 1 and len(errors) == 1 and "no space left on" in errors[0], err
    assert 1 <= len(masks) < 4 and len(masks) == len(reports) == len(probs), (masks, reports, probs)
    assert left == []


def test_an_image_that_reads_back_wrong_is_never_renamed_into_place(tmp_path, toy_model, sample_input, capsys,
                                                                     monkeypatch):
    """SimpleITK wrote a 0-byte overlay on a full disk without an error: a write that cannot be read back fails."""
    real_write = sitk.WriteImage

    def silent_failure(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        if Path(path).name.endswith("overlay.mha"):
            Path(path).write_bytes(b"")

    monkeypatch.setattr(sitk, "WriteImage", silent_failure)
    code, errors, _, err = run_gc(sample_input, tmp_path / "o", toy_model, capsys)
    assert code == 1 and len(errors) == 1 and "overlay.mha" in errors[0] and "verification" in errors[0], err
    assert files_under(tmp_path / "o") == []


# --------------------------------------------------------------------------------------- output folder


def test_output_problems_are_found_before_the_model_loads(tmp_path, capsys):
    """A file named 'reports' where the reports go: refused before loading (the model folder does not even exist)."""
    bonbid = write_bonbid_case(tmp_path / "in", 1)
    out = tmp_path / "o"
    out.mkdir()
    (out / "reports").write_text("not a folder")
    code = main(["predict", str(bonbid), str(out), "--model", str(tmp_path / "no-model")])
    errors, _, err = _log(capsys)
    assert code == 1 and len(errors) == 1 and "reports" in errors[0] and "cannot write" in errors[0], err
    assert "manifest" not in err


def test_a_reports_symlink_out_of_the_output_folder_is_not_followed(tmp_path, toy_model, capsys):
    bonbid = write_bonbid_case(tmp_path / "in", 1)
    out, elsewhere = tmp_path / "o", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "reports").symlink_to(elsewhere)
    code = main(["predict", str(bonbid), str(out), "--model", str(toy_model)])
    errors, _, err = _log(capsys)
    assert code == 1 and len(errors) == 1 and "symbolic link" in errors[0] and "reports" in errors[0], err
    assert list(elsewhere.iterdir()) == []
    assert "members loaded" not in err


def test_leftover_temporaries_of_this_tool_are_removed_at_the_start(tmp_path, toy_model, sample_input, capsys):
    folder = tmp_path / "o" / MASK.parent
    folder.mkdir(parents=True)
    dead_pid = 2**22 + 12345  # above the kernel's pid_max: no such process
    legacy = folder / ".overlay.mha.k2j4h5g6.tmp.mha"  # what an interrupted run of the previous version left
    ours = folder / f"{TEMP_PREFIX}{dead_pid}-0123abcd-overlay.mha"
    live = folder / f"{TEMP_PREFIX}1-89abcdef-overlay.mha"  # pid 1 is alive: a concurrent run's file is kept
    user = folder / ".my-notes.txt"
    for path in (legacy, ours, live, user):
        path.write_bytes(b"partial")
    code, errors, _, err = run_gc(sample_input, tmp_path / "o", toy_model, capsys)
    assert code == 0, err
    assert not legacy.exists() and not ours.exists()
    assert live.exists() and user.exists()
    assert err.count("a temporary file left by an interrupted run") == 2


# ------------------------------------------------------------------------------------------ domain guard


def test_a_thin_slice_volume_runs_at_the_nearest_in_domain_spacing(tmp_path, toy_model, capsys):
    """0.5 mm isotropic: every member runs at the training range's nearest spacing; the mask is on the native grid."""
    phantom = make_phantom(size=(160, 176, 100), spacing=(0.5, 0.5, 0.5), seed=3)
    write_gc_case(tmp_path / "in", phantom)
    code, errors, warnings, err = run_gc(tmp_path / "in", tmp_path / "o", toy_model, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "o/hieseg-report.json").read_text())
    domain = report["domain"]
    assert not domain["in_domain"] and domain["run_spacing_zyx"] == [2.0, 1.25, 1.25]
    assert any("spacing z 0.5 mm outside the training range 2-6 mm" in n for n in domain["out_of_range"])
    assert len(warnings) == 1 and "outside the training domain" in warnings[0] and "restored" in warnings[0]
    mask, geometry = read_image(tmp_path / "o" / MASK)
    assert geometry == phantom.geometry
    truth = phantom.label > 0
    pred = mask > 0
    assert 2 * (truth & pred).sum() / (truth.sum() + pred.sum()) > 0.7


def _model_with_domain(toy_model: Path, folder: Path, domain) -> Path:
    shutil.copytree(toy_model, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["domain"] = domain
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_the_manifest_domain_is_the_one_applied(tmp_path, toy_model, sample_input, capsys):
    from hieseg.inputs.domain import DEFAULT_DOMAIN

    narrow = json.loads(json.dumps(DEFAULT_DOMAIN))
    narrow["spacing_zyx_mm"]["min"][0] = 5.0  # the sample's 4.5 mm slices are now too thin
    model = _model_with_domain(toy_model, tmp_path / "model", narrow)
    code, errors, warnings, err = run_gc(sample_input, tmp_path / "o", model, capsys)
    assert code == 0, err
    domain = json.loads((tmp_path / "o/hieseg-report.json").read_text())["domain"]
    assert domain["training_domain"] == "manifest" and domain["run_spacing_zyx"] == [5.0, None, None]
    assert len(warnings) == 1 and "spacing z 4.5 mm outside the training range 5-6 mm" in warnings[0]


def test_a_malformed_manifest_domain_is_a_model_error(tmp_path, toy_model, sample_input, capsys):
    model = _model_with_domain(toy_model, tmp_path / "model", {"spacing_zyx_mm": {"min": [1, 1]}})
    code, errors, _, err = run_gc(sample_input, tmp_path / "o", model, capsys)
    assert code == 1 and len(errors) == 1 and "manifest.json: domain: malformed" in errors[0], err


def test_more_than_1e9_voxels_is_refused_from_the_header(tmp_path, toy_model, capsys):
    case = write_gc_case(tmp_path / "in")
    header = (b"ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = False\n"
              b"DimSize = 1100 1000 1000\nElementSpacing = 0.2 0.2 0.2\nElementType = MET_FLOAT\n"
              b"ElementDataFile = LOCAL\n")
    (case / ADC / "case.mha").write_bytes(header)  # claims 4.4 GB of pixels: nothing may be allocated for them
    code, errors, _, err = run_gc(case, tmp_path / "o", toy_model, capsys)
    assert code == 1 and len(errors) == 1 and "exceed the limit of 1e+09" in errors[0], err


def _real_pair():
    from realdata import real_cases_dir

    root = real_cases_dir()
    return (sitk.ReadImage(str(root / "1ADC_ss/MGHNICU_014-VISIT_01-ADC_ss.mha")),
            sitk.ReadImage(str(root / "2Z_ADC/Zmap_MGHNICU_014-VISIT_01-ADC_smooth2mm_clipped10.mha")))


def _write_pair(root: Path, adc: sitk.Image, zadc: sitk.Image) -> Path:
    for sub, image in ((ADC, adc), (ZADC, zadc)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / sub / "case.mha"))
    return root


def test_a_uint8_rescaled_pair_is_refused_for_its_units(tmp_path, toy_model, capsys):
    adc, zadc = _real_pair()
    case = _write_pair(tmp_path / "in", *(sitk.Cast(sitk.RescaleIntensity(im, 0, 255), sitk.sitkUInt8)
                                          for im in (adc, zadc)))
    code, errors, _, err = run_gc(case, tmp_path / "o", toy_model, capsys)
    assert code == 1 and len(errors) == 1, err
    assert "skull-stripped-adc-brain-mri/case.mha" in errors[0] and "implausible for units of 10^-6 mm^2/s" in errors[0]
    assert files_under(tmp_path / "o") == []


def test_an_integer_zadc_runs_with_a_warning(tmp_path, toy_model, capsys):
    adc, zadc = _real_pair()
    case = _write_pair(tmp_path / "in", adc, sitk.Cast(zadc, sitk.sitkInt16))
    code, errors, warnings, err = run_gc(case, tmp_path / "o", toy_model, capsys)
    assert code == 0 and not errors, err
    assert len(warnings) == 1 and "whole numbers" in warnings[0], warnings
    report = json.loads((tmp_path / "o/hieseg-report.json").read_text())
    assert any("whole numbers" in n for n in report["domain"]["out_of_range"])


def test_the_default_domain_is_the_training_cases_domain():
    """hieseg.inputs.domain.DEFAULT_DOMAIN is training.domain.training_domain's output on the 40 cases, not typed
    by hand."""
    from realdata import real_cases_dir

    from hieseg.inputs.domain import DEFAULT_DOMAIN
    from training.data import load_cases
    from training.domain import training_domain

    assert training_domain(load_cases(real_cases_dir()).values()) == DEFAULT_DOMAIN


def test_real_cases_are_in_the_default_domain(toy_model_3d, tmp_path, capsys):
    """The default domain is computed from the training cases: none of them may trigger the guard."""
    from realdata import real_cases_dir

    from hieseg.inputs.cases import find_cases
    from hieseg.inputs.domain import check_case, default_domain

    for case in find_cases(real_cases_dir()):
        adc, geometry = read_image(case.adc)
        zadc, _ = read_image(case.zadc)
        check = check_case(adc, zadc, geometry.spacing_zyx, default_domain(), case.adc, case.zadc)
        assert check.notes == [] and not check.resampled, (case.case_id, check.notes)


# ------------------------------------------------------------------------------ unreadable files, in words


def _raw_mha(case: Path) -> tuple[bytes, int]:
    sitk.WriteImage(sitk.ReadImage(str(case / ADC / "case.mha")), str(case / "raw.mha"), useCompression=False)
    blob = (case / "raw.mha").read_bytes()
    (case / "raw.mha").unlink()
    marker = b"ElementDataFile = LOCAL\n"
    return blob, blob.index(marker) + len(marker)


def _sheared_nifti(case: Path) -> Path:
    image = sitk.ReadImage(str(case / ADC / "case.mha"))
    (case / ADC / "case.mha").unlink()
    path = case / ADC / "case.nii"
    sitk.WriteImage(image, str(path))
    data = bytearray(path.read_bytes())
    sx, sy, sz = image.GetSpacing()
    struct.pack_into("<hh", data, 252, 0, 2)  # qform off, sform on ...
    struct.pack_into("<12f", data, 280, sx, 0.4 * sy, 0, 0, 0, sy, 0, 0, 0, 0, sz, 0)  # ... with an x-y shear
    path.write_bytes(bytes(data))
    return path


def _truncated_gzip(case: Path) -> Path:
    image = sitk.ReadImage(str(case / ADC / "case.mha"))
    (case / ADC / "case.mha").unlink()
    path = case / ADC / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # ITK itself reads this without an error (zeros for the rest)
    return path


BROKEN = {
    "empty": (lambda case, blob, end: (case / ADC / "case.mha").write_bytes(b""), "empty file (0 bytes)"),
    "truncated": (lambda case, blob, end: (case / ADC / "case.mha").write_bytes(blob[: len(blob) // 2]),
                  "truncated data: the header says"),
    "header-only": (lambda case, blob, end: (case / ADC / "case.mha").write_bytes(blob[:end]),
                    "no pixel data: the file ends after its header"),
    "garbage": (lambda case, blob, end: (case / ADC / "case.mha").write_bytes(np.random.default_rng(1).bytes(4096)),
                "not a MetaImage file"),
    "missing-data-file": (lambda case, blob, end: (case / ADC / "case.mha").write_bytes(
        blob[:end].replace(b"ElementDataFile = LOCAL", b"ElementDataFile = case.raw")), "missing data file"),
    "sheared-nifti": (lambda case, blob, end: _sheared_nifti(case), "unsupported shear"),
    "truncated-nii-gz": (lambda case, blob, end: _truncated_gzip(case), "truncated data: the gzip stream ends early"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_unreadable_files_are_named_with_their_cause(tmp_path, toy_model, capsys, kind):
    case = write_gc_case(tmp_path / "in")
    blob, header_end = _raw_mha(case)
    breaker, cause = BROKEN[kind]
    breaker(case, blob, header_end)
    code, errors, _, err = run_gc(case, tmp_path / "o", toy_model, capsys)
    assert code == 1 and len(errors) == 1, err
    assert "skull-stripped-adc-brain-mri/case." in errors[0] and cause in errors[0], errors[0]
    assert ".cxx" not in err and "ITK ERROR" not in err  # ITK's source files are not the cause
    assert files_under(tmp_path / "o") == []


def test_every_skipped_input_entry_is_logged_once_with_its_reason(tmp_path, toy_model, capsys):
    root = write_bonbid_case(tmp_path / "in", 1)
    adc_dir = root / "1ADC_ss"
    good = next(adc_dir.iterdir())
    (adc_dir / "MGHNICU_009-VISIT_01-ADC_ss.mha").symlink_to(tmp_path / "gone.mha")
    (adc_dir / "MGHNICU_008-VISIT_01-ADC_ss.mha").mkdir()
    shutil.copy(good, adc_dir / "MGHNICU_007-VISIT_01-ADC_ss.nrrd")
    shutil.copy(good, adc_dir / ".MGHNICU_006-VISIT_01-ADC_ss.mha")
    (adc_dir / "nested").mkdir()
    shutil.copy(good, adc_dir / "nested" / "MGHNICU_005-VISIT_01-ADC_ss.mha")
    (adc_dir / "README.txt").write_text("notes")
    code = main(["predict", str(root), str(tmp_path / "o"), "--model", str(toy_model)])
    errors, warnings, err = _log(capsys)
    assert code == 0, err
    expected = {"MGHNICU_009": "broken symbolic link", "MGHNICU_008": "a folder named like an image",
                "MGHNICU_007": "unsupported image format", ".MGHNICU_006": "hidden file", "nested": "a subfolder"}
    for name, reason in expected.items():
        hits = [w for w in warnings if f"1ADC_ss/{name}" in w]
        assert len(hits) == 1 and reason in hits[0], (name, warnings)
    info = [ln for ln in err.splitlines() if "README.txt" in ln]
    assert len(info) == 1 and " INFO " in info[0] and "not an image file" in info[0]


# ----------------------------------------------------------------------------------- kill -9 and resume


def test_kill_9_at_named_stages_of_a_16_case_run_then_resume(tmp_path, toy_model_3d):
    """Kill a 16-case run with SIGKILL at each named stage of a case's output commit (tests/kill_at.py: while a
    file is being staged, with every file staged, between the mask's rename and the report's): no visible file is
    ever partial, a report always has its mask, and the next run (leftover temporaries removed) completes every
    case exactly (the toy 3D member's mask is Z-ADC < -2 inside the brain, by construction)."""
    from realdata import case_ids, real_cases_dir

    root = real_cases_dir()
    ids = case_ids()[:16]
    inp = tmp_path / "in"
    expected = {}
    for sub in ("1ADC_ss", "2Z_ADC"):
        (inp / sub).mkdir(parents=True)
        for path in (root / sub).iterdir():
            if any(cid in path.name for cid in ids):
                (inp / sub / path.name).symlink_to(path)
    for cid in ids:
        adc, _ = read_image(root / f"1ADC_ss/{cid}-VISIT_01-ADC_ss.mha")
        zadc, _ = read_image(root / f"2Z_ADC/Zmap_{cid}-VISIT_01-ADC_smooth2mm_clipped10.mha")
        expected[f"{cid}-VISIT_01_lesion.mha"] = ((zadc < -2) & (adc > 0)).astype(np.uint8)
    out = tmp_path / "out"
    args = ["predict", str(inp), str(out), "--model", str(toy_model_3d), "-q"]
    cmd = [sys.executable, "-m", "hieseg", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def check_visible() -> None:
        masks = {p.name: p for p in out.glob("*.mha") if not p.name.startswith(".")}  # temporaries aside
        for name, path in masks.items():  # a visible mask is always complete and right
            np.testing.assert_array_equal(read_image(path)[0].astype(np.uint8), expected[name],
                                          err_msg=name)
        reports = [p for p in (out / "reports").glob("*.json") if not p.name.startswith(".")] \
            if (out / "reports").is_dir() else []
        for report in reports:  # a visible report always has its mask
            assert Path(json.loads(report.read_text())["outputs"]["mask"]).name in masks, report
        # the mask is renamed a moment before its report: one kill can leave at most one mask without a report
        assert len(masks) - len(reports) <= 1, (sorted(masks), reports)

    for stage, case in (("staging", 3), ("mid-commit", 6), ("before-commit", 10)):
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), stage, str(case), *args],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (stage, proc.returncode, proc.stderr[-2000:])
        check_visible()
        if stage == "mid-commit":  # the one window where a mask stands without its report
            masks = [p for p in out.glob("*.mha") if not p.name.startswith(".")]
            reports = [p for p in (out / "reports").glob("*.json") if not p.name.startswith(".")]
            assert len(masks) == len(reports) + 1
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    check_visible()
    assert sorted(p.name for p in out.glob("*.mha")) == sorted(expected)  # no temporary left either
    assert len(list((out / "reports").glob("*.json"))) == 16
    assert temporaries(out) == [], temporaries(out)
    rows = (out / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 16 and all(",ok," in row for row in rows)
