"""The Python API: hieseg.segment and hieseg.Segmenter on paths and SimpleITK images, and the model lookup order."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from casefiles import write_gc_case

import hieseg
from hieseg.app.cli import grand_challenge_main
from hieseg.engine.manifest import BUNDLED_MODEL_DIR, GRAND_CHALLENGE_MODEL_DIR, MODEL_DIR_ENV, resolve_model_dir
from hieseg.errors import InputError, ModelError
from hieseg.inputs.gc_interface import GC_ADC_DIR, GC_OUTPUT, GC_ZADC_DIR
from hieseg.inputs.io import Geometry
from hieseg.inputs.phantom import make_phantom


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_case")
    phantom = make_phantom(seed=11)
    write_gc_case(root, phantom)
    return root / GC_ADC_DIR / "case.mha", root / GC_ZADC_DIR / "case.mha", phantom


def baseline(phantom) -> np.ndarray:
    """What the native-spacing toy 3D member computes, from its closed form: Z-ADC < -2 inside the brain."""
    return ((phantom.zadc < -2) & (phantom.adc > 0)).astype(np.uint8)


def test_segment_paths_returns_mask_on_the_input_grid(case, toy_model_3d):
    adc, zadc, phantom = case
    mask, report = hieseg.segment(adc, str(zadc), model=toy_model_3d, device="cpu")
    assert isinstance(mask, sitk.Image) and mask.GetPixelID() == sitk.sitkUInt8
    assert Geometry.of(mask) == phantom.geometry
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), baseline(phantom))
    assert report["case_id"] == "case" and report["model"]["name"] == "toy"
    assert report["lesion_volume_ml"] == pytest.approx(baseline(phantom).sum() * phantom.geometry.voxel_volume_mm3
                                                       / 1000, abs=1e-4)
    assert {"read", "validate", "member:toy3d", "postprocess", "report", "total"} <= set(report["seconds"])


def test_segment_images_equals_segment_paths_and_the_cli(case, toy_model, tmp_path):
    adc, zadc, phantom = case
    from_paths, _ = hieseg.segment(adc, zadc, model=toy_model)
    from_images, report = hieseg.segment(sitk.ReadImage(str(adc)), sitk.ReadImage(str(zadc)), model=toy_model)
    assert Geometry.of(from_images) == phantom.geometry
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_images), sitk.GetArrayFromImage(from_paths))
    assert report["inputs"] == {"adc": "<adc image>", "zadc": "<zadc image>"}
    assert grand_challenge_main(["--input", str(adc.parents[2]), "--output", str(tmp_path), "--model",
                                 str(toy_model), "-q"]) == 0
    cli = sitk.ReadImage(str(tmp_path / GC_OUTPUT))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cli), sitk.GetArrayFromImage(from_images))


def test_segmenter_loads_once_and_serves_many_cases(case, toy_model_3d):
    adc, zadc, phantom = case
    seg = hieseg.Segmenter(toy_model_3d, device="cpu")
    sessions = [m.session for m in seg.members]
    other = make_phantom(seed=12)
    images = [other.geometry.apply(sitk.GetImageFromArray(a)) for a in (other.adc, other.zadc)]
    m1, r1 = seg(adc, zadc)
    m2, r2 = seg.predict(*images, case_id="second")
    assert [m.session for m in seg.members] == sessions
    np.testing.assert_array_equal(sitk.GetArrayFromImage(m1), baseline(phantom))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(m2), baseline(other))
    assert r2["case_id"] == "second" and Geometry.of(m2) == other.geometry


def test_bad_input_raises_one_line_input_errors(case, toy_model_3d):
    adc, zadc, phantom = case
    seg = hieseg.Segmenter(toy_model_3d)
    shifted = sitk.ReadImage(str(zadc))
    shifted.SetOrigin([o + 5.0 for o in shifted.GetOrigin()])
    with pytest.raises(InputError, match=r"<zadc image>: grid differs from the ADC map"):
        seg(adc, shifted)
    flat = sitk.Image([8, 8], sitk.sitkFloat32)
    with pytest.raises(InputError, match=r"<adc image>: expected a 3D image, got 2D"):
        seg(flat, zadc)
    with pytest.raises(InputError, match="file not found"):
        seg(adc.with_name("missing.mha"), zadc)
    with pytest.raises(TypeError, match="expected a path or a SimpleITK.Image"):
        seg(np.zeros((4, 4, 4)), zadc)


def test_model_lookup_order(tmp_path, toy_model, monkeypatch):
    """--model, then $HIESEG_MODEL_DIR, then /opt/ml/model (when it holds a manifest), then the shipped model."""
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    gc_has_model = (GRAND_CHALLENGE_MODEL_DIR / "manifest.json").is_file()
    assert resolve_model_dir(None) == (GRAND_CHALLENGE_MODEL_DIR if gc_has_model else BUNDLED_MODEL_DIR)
    monkeypatch.setenv(MODEL_DIR_ENV, str(toy_model))
    assert resolve_model_dir(None) == toy_model
    assert resolve_model_dir(tmp_path) == tmp_path
    fake_gc = tmp_path / "opt-ml-model"
    shutil.copytree(toy_model, fake_gc)
    monkeypatch.setattr("hieseg.engine.manifest.GRAND_CHALLENGE_MODEL_DIR", fake_gc)
    assert resolve_model_dir(None) == toy_model  # the environment variable outranks /opt/ml/model
    monkeypatch.delenv(MODEL_DIR_ENV)
    assert resolve_model_dir(None) == fake_gc


def test_model_from_the_environment_is_used_and_a_missing_one_says_how_to_give_one(case, toy_model_3d, tmp_path,
                                                                                   monkeypatch):
    adc, zadc, _ = case
    monkeypatch.setenv(MODEL_DIR_ENV, str(toy_model_3d))
    _, report = hieseg.segment(adc, zadc)
    assert report["model"]["members"] == ["toy3d"]
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match=r"nowhere/manifest.json: model manifest not found \(from \$HIESEG_MODEL_DIR"):
        hieseg.segment(adc, zadc)


def test_manifest_license_intended_use_references(tmp_path, toy_model):
    from hieseg.engine.manifest import load_manifest

    shutil.copytree(toy_model, tmp_path / "m")
    raw = json.loads((tmp_path / "m/manifest.json").read_text())
    assert load_manifest(tmp_path / "m").license is None  # optional: older manifests stay valid
    raw.update(license="Apache-2.0", intended_use="research only", references=["doi:10.1038/s41597-024-03986-7"])
    (tmp_path / "m/manifest.json").write_text(json.dumps(raw))
    manifest = load_manifest(tmp_path / "m")
    assert (manifest.license, manifest.intended_use) == ("Apache-2.0", "research only")
    assert manifest.references == ("doi:10.1038/s41597-024-03986-7",) and manifest.summary()["license"] == "Apache-2.0"
    raw["references"] = "not a list"
    (tmp_path / "m/manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="references must be a list"):
        load_manifest(tmp_path / "m")
