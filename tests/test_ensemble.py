"""Member runners: plain and I/O-bound execution agree, fp16 graphs are fed fp16, fusion is a weighted mean."""

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from toy_models import ADC01, ZADC01, channel_sigmoid_model

from hieseg.engine import preprocess
from hieseg.engine.ensemble import LoadedMember, bound_runner, plain_runner, run_ensemble
from hieseg.engine.manifest import load_manifest
from hieseg.files import file_digest


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_io_binding_runner_matches_plain_run():
    session = _session(channel_sigmoid_model(3, 1, 0.4, -20.0))
    batch = np.random.default_rng(1).random((2, 2, 8, 16, 16), dtype=np.float32)
    expected = plain_runner(session, "toy")(batch)
    bound = bound_runner(session, "toy", device="cpu")
    np.testing.assert_allclose(bound(batch), expected, rtol=1e-6)
    np.testing.assert_allclose(bound(batch[:1]), expected[:1], rtol=1e-6)  # the binding is reusable


def test_fp16_member_gets_fp16_input_and_returns_fp32():
    model = channel_sigmoid_model(2, 0, 0.5, 10.0)
    graph = model.graph
    graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    graph.node.insert(0, helper.make_node("Cast", ["input16"], ["input"], to=TensorProto.FLOAT))
    graph.input[0].name = "input16"
    onnx.checker.check_model(model)
    session = _session(model)
    batch = np.random.default_rng(2).random((3, 1, 16, 16), dtype=np.float32)
    out = plain_runner(session, "fp16")(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-10 * (batch - 0.5))), atol=2e-3)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_fusion_is_the_weighted_mean_of_restored_members(tmp_path):
    """Two native-spacing members known in closed form, weights 3 and 1: inside the brain crop the fused probability
    is (3 sigmoid(-20 (z01 - 0.4)) + sigmoid(5 (a01 - 0.3))) / 4, with z01 = (clip(Z, -10, 10) + 10) / 20 and
    a01 = clip(ADC, 0, 3400) / 3400 (the channels' clip_scale transforms); outside the crop it is 0."""
    from hieseg.inputs.phantom import make_phantom

    specs = [("zadc_member", 1, 0.4, -20.0, 3.0), ("adc_member", 0, 0.3, 5.0, 1.0)]
    entries = []
    for name, channel, offset, gain, weight in specs:
        onnx.save(channel_sigmoid_model(3, channel, offset, gain), tmp_path / f"{name}.onnx")
        entries.append({"name": name, "file": f"{name}.onnx", "kind": "3d", "channels": [ADC01, ZADC01],
                        "target_spacing_zyx": [None, None, None], "patch_size": [16, 64, 64],
                        "divisible_by": [4, 8, 8], "batch_size": 2, "tta_flips": [[], [2]], "weight": weight,
                        "sha256": file_digest(tmp_path / f"{name}.onnx")})
    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "name": "weights", "version": "test", "preprocessing": {"crop_margin_mm": 8.0},
        "members": entries, "fusion": {"threshold": 0.5, "min_component_mm3": 0.0},
        "provenance": {"note": "closed-form members for the fusion test"}}))
    manifest = load_manifest(tmp_path)
    members = [LoadedMember(m, ort.InferenceSession(str(m.path), providers=["CPUExecutionProvider"]),
                            "CPUExecutionProvider") for m in manifest.members]
    p = make_phantom()
    crop = preprocess.crop_to_brain(p.adc, p.geometry.spacing_zyx, 8.0)
    fused = run_ensemble([m.runner() for m in members], p.adc, p.zadc, p.geometry.spacing_zyx, crop).probability
    z01 = (np.clip(p.zadc.astype(np.float64), -10, 10) + 10) / 20
    a01 = np.clip(p.adc.astype(np.float64), 0, 3400) / 3400
    expected = (3 * _sigmoid(-20 * (z01 - 0.4)) + _sigmoid(5 * (a01 - 0.3))) / 4
    np.testing.assert_allclose(fused[crop], expected[crop], atol=1e-5)
    outside = np.ones(fused.shape, bool)
    outside[crop] = False
    assert outside.any() and fused[outside].max() == 0  # nothing outside the brain crop
