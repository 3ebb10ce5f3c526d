"""Grand Challenge's /input/inputs.json: the sockets checked, the files it lists read, one clear error otherwise.

The inputs.json here is written the way Grand Challenge writes it: its ComponentInterfaceValueSerializer gives, per
input, the socket under both "socket" and (for older algorithms) "interface", the image as {"pk", "name"} (the
name the uploader gave, not the file name in the container: the file there is named after the stored image), and
"value", "file" and "pk" of the socket value. The socket objects carry title, description, slug, kind, pk,
default_value, super_kind, relative_path, overlay_segments and look_up_table.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from casefiles import files_under

from hieseg.app.cli import grand_challenge_main
from hieseg.inputs.gc_interface import (
    ADC_SOCKET,
    GC_ADC_DIR,
    GC_OUTPUT,
    GC_ZADC_DIR,
    INPUT_SOCKETS,
    OUTPUT_SOCKET,
    ZADC_SOCKET,
)
from hieseg.inputs.io import read_image, write_image
from hieseg.inputs.phantom import make_phantom

ADC_UUID = "0f5e2c1a-6b1d-4a8e-9d33-5b1f7c2e9a41"
ZADC_UUID = "7c9d0e4b-2a3f-4b6c-8e1d-0a9b8c7d6e5f"


def _socket(slug: str, title: str, relative_path: str, pk: int) -> dict:
    return {"title": title, "description": "", "slug": slug, "kind": "Image", "pk": pk, "default_value": None,
            "super_kind": "Image", "relative_path": relative_path, "overlay_segments": [], "look_up_table": None}


def socket_value(slug: str, title: str, relative_path: str, image_pk: str, image_name: str, pk: int) -> dict:
    socket = _socket(slug, title, relative_path, pk)
    return {"socket": socket, "interface": socket, "value": None, "file": None,
            "image": {"pk": image_pk, "name": image_name}, "pk": 900000 + pk}


def realistic_inputs() -> list[dict]:
    return [
        socket_value(ADC_SOCKET, "Skull Stripped ADC", "images/skull-stripped-adc-brain-mri", ADC_UUID,
                     "MGHNICU_010-VISIT_01-ADC_ss.mha", 412),
        socket_value(ZADC_SOCKET, "Z-score Apparent Diffusion Coefficient Map", "images/z-score-adc", ZADC_UUID,
                     "Zmap_MGHNICU_010-VISIT_01-ADC_smooth2mm_clipped10.mha", 413),
    ]


def write_gc_input(root, inputs=None, phantom=None):
    """A Grand Challenge /input: the two images under their sockets' folders (named by image pk) + inputs.json."""
    phantom = phantom or make_phantom(seed=3)
    write_image(phantom.adc, phantom.geometry, root / GC_ADC_DIR / f"{ADC_UUID}.mha")
    write_image(phantom.zadc, phantom.geometry, root / GC_ZADC_DIR / f"{ZADC_UUID}.mha")
    (root / "inputs.json").write_text(json.dumps(realistic_inputs() if inputs is None else inputs, indent=2))
    return phantom


def run(tmp_path, model, capsys):
    out = tmp_path / "out"
    code = grand_challenge_main(["--input", str(tmp_path / "in"), "--output", str(out), "--model", str(model)])
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    return code, errors, out


def test_constants_are_the_bonbid_sockets():
    assert INPUT_SOCKETS == {"skull-stripped-adc": GC_ADC_DIR,
                             "z-score-apparent-diffusion-coefficient-map": GC_ZADC_DIR}
    assert str(GC_ADC_DIR) == "images/skull-stripped-adc-brain-mri" and str(GC_ZADC_DIR) == "images/z-score-adc"
    assert OUTPUT_SOCKET == "hypoxic-ischemic-encephalopathy-lesion-segmentation"
    assert str(GC_OUTPUT) == "images/hie-lesion-segmentation/overlay.mha"


def test_run_with_inputs_json_as_grand_challenge_writes_it(tmp_path, toy_model_3d, capsys):
    phantom = write_gc_input(tmp_path / "in")
    code, errors, out = run(tmp_path, toy_model_3d, capsys)
    assert code == 0 and errors == []
    assert files_under(out) == ["hieseg-report.json", str(GC_OUTPUT)]
    mask, geometry = read_image(out / GC_OUTPUT)
    assert geometry == phantom.geometry
    # the toy 3D member at native spacing is exactly Z-ADC < -2 inside the brain: the listed files were read
    np.testing.assert_array_equal(mask > 0, (phantom.zadc < -2) & (phantom.adc > 0))
    report = json.loads((out / "hieseg-report.json").read_text())
    assert report["inputs"]["adc"].endswith(f"{GC_ADC_DIR}/{ADC_UUID}.mha")
    assert report["inputs"]["zadc"].endswith(f"{GC_ZADC_DIR}/{ZADC_UUID}.mha")


def test_legacy_inputs_json_with_interface_only(tmp_path, toy_model_3d, capsys):
    inputs = [{k: v for k, v in sv.items() if k != "socket"} for sv in realistic_inputs()]
    write_gc_input(tmp_path / "in", inputs)
    assert run(tmp_path, toy_model_3d, capsys)[0] == 0


def test_the_folder_that_inputs_json_lists_is_read(tmp_path, toy_model_3d, capsys):
    """relative_path comes from inputs.json: a socket placed elsewhere is read from there."""
    inputs = realistic_inputs()
    inputs[1]["socket"] = inputs[1]["interface"] = {**inputs[1]["socket"], "relative_path": "images/zadc-moved"}
    write_gc_input(tmp_path / "in", inputs)
    shutil.move(tmp_path / "in" / GC_ZADC_DIR, tmp_path / "in/images/zadc-moved")
    assert run(tmp_path, toy_model_3d, capsys)[0] == 0


def _assert_one_error(result, *needles):
    code, errors, out = result
    assert code == 1 and len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not out.exists() or files_under(out) == []


def test_unexpected_socket_is_named(tmp_path, toy_model_3d, capsys):
    inputs = realistic_inputs() + [socket_value("t2-brain-mri", "T2", "images/t2-brain-mri", "x", "t2.mha", 7)]
    write_gc_input(tmp_path / "in", inputs)
    _assert_one_error(run(tmp_path, toy_model_3d, capsys), "inputs.json", "unexpected socket 't2-brain-mri'")


def test_missing_socket_is_named(tmp_path, toy_model_3d, capsys):
    write_gc_input(tmp_path / "in", realistic_inputs()[:1])
    _assert_one_error(run(tmp_path, toy_model_3d, capsys), "inputs.json",
                      "missing socket 'z-score-apparent-diffusion-coefficient-map'")


def test_listed_file_that_is_absent_is_named(tmp_path, toy_model_3d, capsys):
    write_gc_input(tmp_path / "in")
    (tmp_path / "in" / GC_ADC_DIR / f"{ADC_UUID}.mha").unlink()
    _assert_one_error(run(tmp_path, toy_model_3d, capsys), str(GC_ADC_DIR), "'skull-stripped-adc'",
                      "image file is absent")


@pytest.mark.parametrize("text, needle", [
    ("{not json", "cannot parse"),
    ('{"socket": {}}', "expected a list"),
    ('[{"value": 1}]', "no socket slug"),
])
def test_malformed_inputs_json(tmp_path, toy_model_3d, capsys, text, needle):
    write_gc_input(tmp_path / "in")
    (tmp_path / "in/inputs.json").write_text(text)
    _assert_one_error(run(tmp_path, toy_model_3d, capsys), "inputs.json", needle)


def test_relative_path_may_not_leave_the_input(tmp_path, toy_model_3d, capsys):
    inputs = realistic_inputs()
    inputs[0]["socket"] = {**inputs[0]["socket"], "relative_path": "../elsewhere"}
    write_gc_input(tmp_path / "in", inputs)
    _assert_one_error(run(tmp_path, toy_model_3d, capsys), "leaves the input folder")


def test_without_inputs_json_the_folder_layout_still_works(tmp_path, toy_model_3d, capsys):
    write_gc_input(tmp_path / "in")
    (tmp_path / "in/inputs.json").unlink()
    assert run(tmp_path, toy_model_3d, capsys)[0] == 0
