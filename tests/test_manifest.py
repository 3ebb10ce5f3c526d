import json
import shutil

import pytest

from hieseg.engine.manifest import BUNDLED_MODEL_DIR, load_manifest, resolve_model_dir
from hieseg.errors import ModelError


def test_toy_manifest_loads_and_verifies(toy_model):
    manifest = load_manifest(toy_model)
    assert [m.name for m in manifest.members] == ["toy3d", "toy2d"]
    assert manifest.members[1].target_spacing_zyx == (None, 1.0, 1.0)
    assert len(manifest.sha256) == 64


def test_checksum_mismatch_is_refused(tmp_path, toy_model):
    shutil.copytree(toy_model, tmp_path / "m")
    (tmp_path / "m/toy3d.onnx").write_bytes((tmp_path / "m/toy3d.onnx").read_bytes()[:-1])
    with pytest.raises(ModelError, match="toy3d.onnx: checksum mismatch") as by_manifest:
        load_manifest(tmp_path / "m")
    # Building the sessions checks the bytes they are built from (the manifest is then read without verify):
    # the same one-line refusal, before any network runs.
    from hieseg.app.pipeline import Segmenter

    with pytest.raises(ModelError, match="toy3d.onnx: checksum mismatch") as by_sessions:
        Segmenter(tmp_path / "m", "cpu")
    assert str(by_sessions.value) == str(by_manifest.value)
    assert "\n" not in str(by_manifest.value) and "modified or corrupted" in str(by_manifest.value)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(schema_version=99), "schema_version"),
    (lambda m: m["members"][0].update(kind="4d"), "kind"),
    (lambda m: m["members"][1].update(target_spacing_zyx=[2.0, 1.0, 1.0]), "2d member keeps native slices"),
    (lambda m: m["members"][0]["channels"].append({"source": "t2"}), "channel source"),
    (lambda m: m["members"][0].update(file="missing.onnx"), "not found"),
    (lambda m: m.pop("fusion"), "threshold"),
])
def test_malformed_manifests_name_the_problem(tmp_path, toy_model, edit, message):
    shutil.copytree(toy_model, tmp_path / "m")
    raw = json.loads((tmp_path / "m/manifest.json").read_text())
    edit(raw)
    (tmp_path / "m/manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=message):
        load_manifest(tmp_path / "m")


def test_model_dir_resolution(tmp_path):
    assert resolve_model_dir(tmp_path) == tmp_path
    assert resolve_model_dir(None) in (BUNDLED_MODEL_DIR, __import__("pathlib").Path("/opt/ml/model"))
