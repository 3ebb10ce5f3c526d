"""The memory budget (issue 24): peak RSS of ``inference.py`` on the huge synthetic case and on a real case, and the
refusal of a case that cannot fit, before its voxels are read.

The budgets gate on memory only (stable from run to run); time is the benchmark's business (docs/benchmark.md).
The huge case is real case MGHNICU_014 resampled onto 512 x 512 x 300 at 0.5 mm (as benchmarks/hostile_inputs.py
builds it), written under ``tmp_path``. Peak RSS comes from ``/usr/bin/time -v`` where it exists, else from the
report's ``memory.peak_rss_gib`` (the process's ru_maxrss).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from hieseg.engine import memory

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
ADC_DIR, ZADC_DIR = "images/skull-stripped-adc-brain-mri", "images/z-score-adc"
MASK = Path("images/hie-lesion-segmentation/overlay.mha")
CASE = "MGHNICU_014"
HUGE_BUDGET = 2 * GIB
REAL_BUDGET = 1 * GIB


def _real_pair() -> tuple[sitk.Image, sitk.Image]:
    from realdata import real_cases_dir

    root = real_cases_dir()
    return (sitk.ReadImage(str(root / "1ADC_ss" / f"{CASE}-VISIT_01-ADC_ss.mha")),
            sitk.ReadImage(str(root / "2Z_ADC" / f"Zmap_{CASE}-VISIT_01-ADC_smooth2mm_clipped10.mha")))


def _huge(image: sitk.Image, size=(512, 512, 300), spacing=0.5) -> sitk.Image:
    """The image resampled (linear) onto a 0.5 mm isotropic 512 x 512 x 300 grid centred on its own centre."""
    import numpy as np

    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    origin = centre - (np.array(size) - 1) / 2 * spacing
    return sitk.Resample(image, list(size), sitk.Transform(), sitk.sitkLinear, origin.tolist(), [spacing] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def _gc_case(folder: Path, adc: sitk.Image, zadc: sitk.Image) -> Path:
    for sub, image in ((ADC_DIR, adc), (ZADC_DIR, zadc)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / sub / "case.mha"), useCompression=True)
    return folder


def _run(input_dir: Path, output_dir: Path, **kw) -> tuple[subprocess.CompletedProcess, int | None]:
    """inference.py on one Grand Challenge folder; (the finished process, its peak RSS in bytes or None)."""
    cmd = [sys.executable, str(REPO / "inference.py"), "--input", str(input_dir), "--output", str(output_dir)]
    timer = shutil.which("time") if Path("/usr/bin/time").exists() else None
    if timer:
        cmd = ["/usr/bin/time", "-v"] + cmd
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, **kw)
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr) if timer else None
    peak = int(match.group(1)) * 1024 if match else None
    report = output_dir / "hieseg-report.json"
    if peak is None and report.is_file():
        peak = int(json.loads(report.read_text())["memory"]["peak_rss_gib"] * GIB)
    return proc, peak


def _assert_mask_on_input_grid(input_dir: Path, output_dir: Path) -> None:
    reference, mask = (sitk.ImageFileReader() for _ in range(2))
    reference.SetFileName(str(input_dir / ADC_DIR / "case.mha"))
    mask.SetFileName(str(output_dir / MASK))
    for reader in (reference, mask):
        reader.ReadImageInformation()
    assert mask.GetSize() == reference.GetSize()
    assert mask.GetSpacing() == pytest.approx(reference.GetSpacing(), rel=1e-6)
    assert mask.GetOrigin() == pytest.approx(reference.GetOrigin(), abs=1e-4)
    assert mask.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)
    assert mask.GetPixelID() == sitk.sitkUInt8


@pytest.mark.slow
def test_huge_case_peak_rss_within_2gib(tmp_path):
    adc, zadc = _real_pair()
    case = _gc_case(tmp_path / "in", _huge(adc), _huge(zadc))
    del adc, zadc
    proc, peak = _run(case, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_mask_on_input_grid(case, tmp_path / "out")
    assert peak is not None, "no peak RSS from /usr/bin/time nor from the report"
    report = json.loads((tmp_path / "out" / "hieseg-report.json").read_text())
    assert report["memory"]["estimate_gib"] * GIB >= peak, report["memory"]  # the estimate is an upper bound
    assert peak <= HUGE_BUDGET, f"huge case peak RSS {peak / GIB:.2f} GiB > {HUGE_BUDGET / GIB:.0f} GiB"


@pytest.mark.slow
def test_real_case_peak_rss_within_1gib(tmp_path):
    adc, zadc = _real_pair()
    case = _gc_case(tmp_path / "in", adc, zadc)
    proc, peak = _run(case, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_mask_on_input_grid(case, tmp_path / "out")
    assert peak is not None
    assert peak <= REAL_BUDGET, f"real case {CASE} peak RSS {peak / GIB:.2f} GiB > {REAL_BUDGET / GIB:.0f} GiB"


def _sparse_metaimage(folder: Path, size_xyz=(640, 640, 400), spacing=0.5) -> Path:
    """A MetaImage whose header names a big grid and whose pixel data is a sparse file (nothing to read)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "case.raw"
    with open(raw, "wb") as fh:
        fh.truncate(4 * size_xyz[0] * size_xyz[1] * size_xyz[2])
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
              f"ElementSpacing = {spacing} {spacing} {spacing}\nDimSize = {' '.join(map(str, size_xyz))}\n"
              "ElementType = MET_FLOAT\nElementDataFile = case.raw\n")
    (folder / "case.mha").write_text(header)
    return folder / "case.mha"


def test_case_too_large_is_refused_in_one_line_before_reading(tmp_path):
    """Under a 1.5 GiB address-space limit a 640 x 640 x 400 case (164 M voxels, 0.61 GiB per float32 copy) is
    refused from its headers: one line naming the file, the grid and the limit, exit 1, no file written,
    within 10 s (the model is not even loaded)."""
    limit = int(1.5 * GIB)
    adc = _sparse_metaimage(tmp_path / "in" / ADC_DIR)
    _sparse_metaimage(tmp_path / "in" / ZADC_DIR)
    out = tmp_path / "out"

    def tight() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "inference.py"), "--input", str(tmp_path / "in"),
                           "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          preexec_fn=tight, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.monotonic() - t0
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    line = errors[0]
    assert str(adc) in line and "400 x 640 x 640" in line and "needs about" in line, line
    assert "above the limit of 1.50 GiB (rlimit)" in line, line
    assert "Traceback" not in proc.stderr
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
    assert elapsed < 10, f"refused after {elapsed:.1f} s"


def test_huge_case_estimate_fits_a_2gib_budget_above_its_peak():
    """The estimate of the 512 x 512 x 300 case stays above its measured peak yet within the 2 GiB budget (with
    the CPU provider's activations), and the real case's within 8 GB (Grand Challenge's default)."""
    for name, c in memory.CALIBRATION.items():
        need = memory.estimate_case_bytes(c["shape_zyx"], c["spacing_zyx"])
        assert need > int(c["peak_mib"]) * (1 << 20), name
        assert need <= 8 * 10**9, name
        memory.check_fits(c["shape_zyx"], c["spacing_zyx"], 8 * 10**9)
    huge = memory.CALIBRATION["huge_512x512x300_0.5mm"]
    memory.check_fits(huge["shape_zyx"], huge["spacing_zyx"], HUGE_BUDGET)
