"""Member runners: plain and I/O-bound execution agree, fp16 graphs are fed fp16, fusion is a weighted mean."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from hieseg import preprocess
from hieseg.ensemble import LoadedMember, bound_runner, plain_runner, run_ensemble
from hieseg.manifest import load_manifest
from toy_models import channel_sigmoid_model


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


def test_fusion_is_the_weighted_mean_of_restored_members(toy_model):
    from hieseg.phantom import make_phantom

    manifest = load_manifest(toy_model)
    members = [LoadedMember(m, ort.InferenceSession(str(m.path), providers=["CPUExecutionProvider"]),
                            "CPUExecutionProvider") for m in manifest.members]
    p = make_phantom()
    crop = preprocess.crop_to_brain(p.adc, p.geometry.spacing_zyx, 8.0)
    singles = [run_ensemble([m], p.adc, p.zadc, p.geometry.spacing_zyx, crop) for m in members]
    fused = run_ensemble(members, p.adc, p.zadc, p.geometry.spacing_zyx, crop)
    np.testing.assert_allclose(fused, 0.5 * singles[0] + 0.5 * singles[1], atol=1e-6)
    outside = np.ones(fused.shape, bool)
    outside[crop] = False
    assert outside.any() and fused[outside].max() == 0  # nothing outside the brain crop
