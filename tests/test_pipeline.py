"""End to end through the CLIs on synthetic oblique, anisotropic cases with the closed-form toy ensemble."""

from __future__ import annotations

import csv
import json

import numpy as np
import SimpleITK as sitk
from casefiles import files_under, write_bonbid_case, write_gc_case

from hieseg.app.cli import grand_challenge_main, main
from hieseg.engine.providers import CPU, provider_plan
from hieseg.inputs.io import Geometry, read_image
from hieseg.inputs.phantom import Lesion, make_phantom


def _physical_centroid(image: sitk.Image) -> np.ndarray:
    mask = sitk.GetArrayFromImage(image) > 0
    zyx = np.argwhere(mask).mean(axis=0)
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def test_planted_lesion_comes_back_at_its_physical_coordinates(tmp_path, toy_model):
    lesion = Lesion((40.0, 70.0, 12.0), (8.0, 8.0, 10.0), 0.45)  # wholly inside the brain
    phantom = make_phantom(lesions=[lesion], seed=7)
    assert phantom.geometry.direction != (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)  # oblique
    assert len(set(phantom.geometry.spacing)) == 3  # anisotropic
    write_gc_case(tmp_path / "in", phantom)
    assert grand_challenge_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                 "--model", str(toy_model)]) == 0
    out = sitk.ReadImage(str(tmp_path / "out/images/hie-lesion-segmentation/overlay.mha"))
    assert out.GetPixelID() == sitk.sitkUInt8
    assert Geometry.of(out) == phantom.geometry
    planted = np.array(phantom.geometry.index_to_physical(np.array([lesion.center_xyz]))[0])
    reference = phantom.geometry.apply(sitk.GetImageFromArray(phantom.label))
    np.testing.assert_allclose(reference.TransformContinuousIndexToPhysicalPoint(lesion.center_xyz), planted)
    found = _physical_centroid(out)
    assert np.linalg.norm(found - planted) < 2.0, (found, planted)
    truth = phantom.label > 0
    pred = sitk.GetArrayFromImage(out) > 0
    assert 2 * (truth & pred).sum() / (truth.sum() + pred.sum()) > 0.8


def test_native_3d_member_reproduces_the_zadc_prior_exactly(tmp_path, toy_model_3d, sample_input):
    assert grand_challenge_main(["--input", str(sample_input), "--output", str(tmp_path),
                                 "--model", str(toy_model_3d)]) == 0
    adc, geometry = read_image(next((sample_input / "images/skull-stripped-adc-brain-mri").iterdir()))
    zadc, _ = read_image(next((sample_input / "images/z-score-adc").iterdir()))
    mask, out_geometry = read_image(tmp_path / "images/hie-lesion-segmentation/overlay.mha")
    assert out_geometry == geometry
    np.testing.assert_array_equal(mask > 0, (zadc < -2) & (adc > 0))


def test_gc_run_writes_overlay_and_report_only(tmp_path, toy_model, sample_input, capsys):
    assert grand_challenge_main(["--input", str(sample_input), "--output", str(tmp_path),
                                 "--model", str(toy_model)]) == 0
    assert files_under(tmp_path) == ["hieseg-report.json", "images/hie-lesion-segmentation/overlay.mha"]
    report = json.loads((tmp_path / "hieseg-report.json").read_text())
    for key in ("lesion_volume_ml", "brain_volume_ml", "lesion_percent_of_brain", "burden_class",
                "lesion_components", "largest_component_ml", "members", "seconds"):
        assert key in report
    assert report["burden_class"] == "<1%" and report["lesion_components"] >= 2
    auto = provider_plan("auto")  # no GPU in CI
    assert {m["provider"] for m in report["members"]} == {auto.provider}
    assert report["engine"]["provider"] == auto.provider and report["engine"]["precision"] == auto.precision
    assert {"read", "validate", "preprocess", "member:toy3d", "member:toy2d", "fuse", "postprocess", "write",
            "total"} <= set(report["seconds"])
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("overlay.mha")  # stdout: results only
    assert "running on CPU" in captured.err or auto != CPU


def test_multi_case_bonbid_layout_names_outputs_like_labels(tmp_path, toy_model):
    for n in (3, 11, 12):
        write_bonbid_case(tmp_path / "in", n, ext=".nii.gz" if n == 11 else ".mha")
    code = main(["predict", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(toy_model),
                 "--format", "nii.gz", "--save-prob"])
    assert code == 0
    names = files_under(tmp_path / "out")
    assert "MGHNICU_011-VISIT_01_lesion.nii.gz" in names and "summary.csv" in names
    assert "probabilities/MGHNICU_003_probability.nii.gz" in names and "reports/MGHNICU_012.json" in names
    rows = list(csv.DictReader((tmp_path / "out/summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 3
    # Predictions pair with the labels by name.
    label, lg = read_image(tmp_path / "in/3LABEL/MGHNICU_012-VISIT_01_lesion.mha")
    pred, pg = read_image(tmp_path / "out/MGHNICU_012-VISIT_01_lesion.nii.gz")
    assert lg.size == pg.size and np.allclose(lg.spacing, pg.spacing) and np.allclose(lg.origin, pg.origin)
    assert set(np.unique(pred)) <= {0, 1} and 2 * (label * pred).sum() / (label.sum() + pred.sum()) > 0.7


def test_shards_partition_the_cohort(tmp_path, toy_model):
    for n in range(1, 6):
        write_bonbid_case(tmp_path / "in", n)
    seen = []
    for k in (1, 2):
        assert main(["predict", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(toy_model),
                     "--shard", f"{k}/2", "-q"]) == 0
        rows = list(csv.DictReader((tmp_path / f"out/summary_{k}of2.csv").open()))
        seen += [r["case_id"] for r in rows]
    assert sorted(seen) == [f"MGHNICU_{n:03d}" for n in range(1, 6)]


def test_explicit_pair_and_origin_rounding_is_tolerated(tmp_path, toy_model):
    phantom = make_phantom(seed=3)
    write_gc_case(tmp_path / "in", phantom)
    z_path = tmp_path / "in/images/z-score-adc/case.mha"
    image = sitk.ReadImage(str(z_path))
    image.SetOrigin([o + 1.2e-4 for o in image.GetOrigin()])  # as real BONBID pairs differ
    sitk.WriteImage(image, str(z_path))
    code = main(["predict", "--adc", str(tmp_path / "in/images/skull-stripped-adc-brain-mri/case.mha"),
                 "--zadc", str(z_path), str(tmp_path / "out"), "--model", str(toy_model), "--qc"])
    assert code == 0
    assert {"case_lesion.mha", "qc/case.png", "summary.csv", "reports/case.json"} <= set(files_under(tmp_path / "out"))


def test_empty_case_rule_gives_an_empty_mask(tmp_path):
    from toy_models import write_toy_model

    model = write_toy_model(tmp_path / "model", fusion={"threshold": 0.5, "min_component_mm3": 0,
                                                        "empty_case": {"min_lesion_mm3": 1e6}})
    assert grand_challenge_main(["--input", str(write_gc_case(tmp_path / "in")), "--output",
                                 str(tmp_path / "out"), "--model", str(model)]) == 0
    mask, _ = read_image(tmp_path / "out/images/hie-lesion-segmentation/overlay.mha")
    assert mask.sum() == 0


def test_min_component_size_drops_small_lesions(tmp_path):
    from toy_models import write_toy_model

    phantom = make_phantom()  # lesions of ~1.2 mL, ~0.5 mL and ~0.15 mL
    big = write_toy_model(tmp_path / "m", members="3d", fusion={"threshold": 0.5, "min_component_mm3": 300})
    assert grand_challenge_main(["--input", str(write_gc_case(tmp_path / "in", phantom)), "--output",
                                 str(tmp_path / "out"), "--model", str(big), "-q"]) == 0
    report = json.loads((tmp_path / "out/hieseg-report.json").read_text())
    baseline = ((phantom.zadc < -2) & (phantom.adc > 0)).sum() * np.prod(phantom.geometry.spacing) / 1000
    assert 0 < report["lesion_volume_ml"] < baseline
    assert report["largest_component_ml"] * 1000 >= 300
