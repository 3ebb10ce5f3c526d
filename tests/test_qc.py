"""QC pictures: slice choice, montage and summary PNGs, ``evaluate --qc`` and the missing-dependency message."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from hieseg.errors import MissingDependency  # noqa: E402
from hieseg.inputs.io import Geometry, write_image, write_mask  # noqa: E402
from hieseg.outputs.qc import lesion_slices, write_montage, write_summary_plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _case():
    adc = np.zeros((10, 32, 30), dtype=np.float32)
    adc[1:9, 4:28, 4:26] = 1200.0
    truth = np.zeros(adc.shape, dtype=np.uint8)
    truth[3:5, 10:14, 10:14] = 1
    pred = np.zeros_like(truth)
    pred[4:7, 11:15, 11:15] = 1
    return adc, truth, pred


def test_lesion_slices():
    _, truth, pred = _case()
    assert lesion_slices(truth, pred) == [3, 4, 5, 6]
    assert lesion_slices(None, pred) == [4, 5, 6]
    assert lesion_slices(np.zeros_like(truth)) == [5]  # nothing to show: the middle slice
    many = np.zeros((60, 4, 4), dtype=bool)
    many[:, 1, 1] = True
    chosen = lesion_slices(many, limit=24)
    assert len(chosen) == 24 and chosen[0] == 0 and chosen[-1] == 59


def test_montage_with_and_without_truth(tmp_path):
    adc, truth, pred = _case()
    path = write_montage(adc, pred, tmp_path / "qc" / "case.png", truth=truth, title="case  Dice 0.500",
                         spacing_zyx=(4.0, 1.5, 1.25))
    assert path == tmp_path / "qc" / "case.png"
    width, height = _png_size(path)
    assert width > 400 and height > 100
    only_pred = write_montage(adc, pred, tmp_path / "pred.png")  # as `hieseg predict --qc` calls it
    assert _png_size(only_pred)[0] > 200
    empty = write_montage(adc, np.zeros_like(pred), tmp_path / "empty.png")
    assert empty.is_file()
    assert not [p for p in tmp_path.rglob(".*")]  # no temporaries left behind


def test_montage_rejects_mismatched_shapes(tmp_path):
    adc, truth, pred = _case()
    with pytest.raises(ValueError, match="shape"):
        write_montage(adc, pred[:-1], tmp_path / "x.png", truth=truth)


def test_summary_plot(tmp_path):
    rows = [
        {"dice": 0.8, "burden": 0.12, "stratum": ">5%", "missing": False},
        {"dice": 0.5, "burden": 0.02, "stratum": "1-5%", "missing": False},
        {"dice": 0.3, "burden": 0.001, "stratum": "<1%", "missing": False},
        {"dice": 0.0, "burden": 0.0005, "stratum": "<1%", "missing": True},
        {"dice": 0.0, "burden": 0.0, "stratum": "none", "missing": False},
        {"dice": math.nan, "burden": 0.01, "stratum": "1-5%", "missing": False},
    ]
    path = write_summary_plot(rows, tmp_path / "summary.png")
    assert _png_size(path) == (640, 440)
    assert write_summary_plot([], tmp_path / "empty.png").is_file()


def test_evaluate_qc_writes_summary_and_montages(tmp_path):
    from hieseg.app.cli import main

    pytest.importorskip("surface_distance")
    adc, truth, pred = _case()
    geometry = Geometry((30, 32, 10), (1.25, 1.5, 4.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    write_mask(truth, geometry, tmp_path / "gt" / "MGHNICU_007-VISIT_01_lesion.mha")
    write_mask(pred, geometry, tmp_path / "pred" / "MGHNICU_007-VISIT_01_lesion.mha")
    write_image(adc, geometry, tmp_path / "adc" / "MGHNICU_007-VISIT_01-ADC_ss.mha")
    qc = tmp_path / "qc"
    assert main(["evaluate", str(tmp_path / "gt"), str(tmp_path / "pred"), "--adc", str(tmp_path / "adc"),
                 "--qc", str(qc), "-q"]) == 0
    assert sorted(p.name for p in qc.iterdir()) == ["MGHNICU_007.png", "summary.png"]


def test_missing_matplotlib_is_one_clear_error(tmp_path, monkeypatch):
    adc, truth, pred = _case()
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency, match=r"hieseg\[eval\]"):
        write_montage(adc, pred, tmp_path / "x.png")
