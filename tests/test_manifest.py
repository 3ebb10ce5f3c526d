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
    (lambda m: m["members"][0]["channels"].append({"source": "t2"}),
     r"members\[0\]\.channels\[2\]: missing required 'transform'; "
     r"members\[0\]\.channels\[2\]\.source: expected one of"),
    (lambda m: m["members"][0].update(file="missing.onnx"), "not found"),
    (lambda m: m.pop("fusion"), "missing required 'fusion'"),
    (lambda m: m["members"][0].update(patch_size=[8]), r"members\[0\]\.patch_size: expected 2\.\.3 items, got 1"),
    (lambda m: m["members"][0].update(patch_size=[8, 8]), "patch_size and divisible_by need 3 entries"),  # semantic
    (lambda m: m["members"][0]["tta_flips"].append([3]),
     r"members\[0\]\.tta_flips\[\d\]\[0\]: 3 is above the maximum 2"),
    (lambda m: m["members"][0].update(weight="heavy"), r"members\[0\]\.weight: expected number"),
    (lambda m: m["fusion"].update(threshold=1.5), r"fusion\.threshold: 1\.5 is above the maximum 1"),
    (lambda m: m["fusion"].update(threshold=0), r"fusion\.threshold: 0"),  # would mark the whole background
    (lambda m: m["fusion"].update(component_filter={"type": "size", "value": 3}),
     r"fusion\.component_filter\.type: expected one of \['peak', 'distance_to_largest', 'edge'\]"),
    (lambda m: m["fusion"].update(component_filter={"type": "peak"}),
     r"fusion\.component_filter: missing required 'value'"),
    (lambda m: m["members"][0].update(target_spacing_zyx=[1.0, 1.0]), r"target_spacing_zyx: expected 3 items"),
])
def test_malformed_manifests_name_the_problem(tmp_path, toy_model, edit, message):
    shutil.copytree(toy_model, tmp_path / "m")
    raw = json.loads((tmp_path / "m/manifest.json").read_text())
    edit(raw)
    (tmp_path / "m/manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=message):
        load_manifest(tmp_path / "m")


def test_component_filter_reaches_the_mask_rule(tmp_path, toy_model):
    from hieseg.engine.manifest import ComponentFilter

    shutil.copytree(toy_model, tmp_path / "m")
    raw = json.loads((tmp_path / "m/manifest.json").read_text())
    assert load_manifest(tmp_path / "m").mask_rule.component_filter is None
    raw["fusion"]["component_filter"] = {"type": "edge", "value": 2.0}
    (tmp_path / "m/manifest.json").write_text(json.dumps(raw))
    assert load_manifest(tmp_path / "m").mask_rule.component_filter == ComponentFilter("edge", 2.0)


def test_model_dir_resolution(tmp_path):
    assert resolve_model_dir(tmp_path) == tmp_path
    assert resolve_model_dir(None) in (BUNDLED_MODEL_DIR, __import__("pathlib").Path("/opt/ml/model"))


def test_schema_is_the_one_source_of_schema_version():
    from hieseg.engine import manifest as mf

    assert mf.SCHEMA["$schema"].endswith("2020-12/schema")
    assert mf.SCHEMA_VERSION == mf.SCHEMA["properties"]["schema_version"]["const"]


def test_bundled_manifest_matches_schema():
    from hieseg.engine.manifest import BUNDLED_MODEL_DIR, schema_errors

    raw = json.loads((BUNDLED_MODEL_DIR / "manifest.json").read_text())
    assert schema_errors(raw) == []


def test_schema_errors_list_every_violation_with_its_path():
    from hieseg.engine.manifest import schema_errors

    schema = {"type": "object", "required": ["a"], "additionalProperties": False,
              "properties": {"b": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "integer"}}}}
    assert schema_errors({"b": [1, 2.5], "c": 0}, schema) == [
        "manifest: missing required 'a'", "b: expected 3 items, got 2", "b[1]: expected integer, got 2.5",
        "manifest: unexpected key 'c'"]
    assert schema_errors(True, {"type": "number"}) == ["manifest: expected number, got true"]
