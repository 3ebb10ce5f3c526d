"""Native OpenVINO sessions (hieseg/engine/openvino_engine.py): the InferenceSession interface the runtime uses,
f32 parity with ONNX Runtime's CPU provider at dynamic shapes, bf16 agreement, and the precision decision."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hieseg.engine.openvino_engine import (
    OPENVINO_NATIVE,
    cpu_bf16_flags,
    cpu_has_native_bf16,
    openvino_available,
    resolve_precision,
)
from hieseg.errors import ModelError

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="the openvino package is not installed")
SHAPES = [(1, 2, 24, 40), (3, 2, 17, 33)]  # two batches and spatial sizes: the graph's dims are dynamic


def conv_sigmoid_model() -> bytes:
    """(N, 2, H, W) -> sigmoid(conv3x3(x) + b) of shape (N, 3, H, W), with fixed random weights."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.5, (3, 2, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "weight", "bias"], ["logits"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["logits"], ["probability"])]
    graph = helper.make_graph(
        nodes, "conv_sigmoid",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return conv_sigmoid_model()


def inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(0, 1, shape).astype(np.float32) for shape in SHAPES]


def ort_outputs(data: bytes) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [session.run(None, {"image": x})[0] for x in inputs()]


@pytest.mark.parametrize("precision, has_bf16, expected", [
    ("auto", True, "bf16"), ("auto", False, "f32"),
    ("bf16", True, "bf16"),
    ("f32", True, "f32"), ("f32", False, "f32"),
    ("AUTO", False, "f32"), (" bf16 ", True, "bf16"),
])
def test_resolve_precision(precision, has_bf16, expected):
    assert resolve_precision(precision, has_bf16) == expected


def test_resolve_precision_refuses_bf16_without_native_support_and_unknown_names():
    with pytest.raises(ValueError, match="no native bf16") as info:
        resolve_precision("bf16", False)
    assert "\n" not in str(info.value)  # one line for the log
    for bad in ("fp16", "int8", ""):
        with pytest.raises(ValueError, match="choose one of auto, bf16, f32"):
            resolve_precision(bad, True)


def test_cpu_bf16_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_bf16_flags(cpuinfo) == {"avx512_bf16", "amx_bf16"}
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_bf16_flags(cpuinfo) == set()
    assert cpu_bf16_flags(tmp_path / "missing") == set()


@needs_openvino
def test_session_interface(model_bytes):
    from hieseg.engine.openvino_engine import create_openvino_session

    session = create_openvino_session(model_bytes, "conv_sigmoid", "f32", threads=1)
    assert session.get_providers() == [OPENVINO_NATIVE]
    assert session.precision == "f32"
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(float)", [None, 2, None, None])
    assert (out.name, out.type, len(out.shape)) == ("probability", "tensor(float)", 4)
    x = inputs()[0]
    everything = session.run(None, {inp.name: x})
    named = session.run([out.name], {inp.name: x})
    assert len(everything) == len(named) == 1
    assert everything[0].shape == (1, 3, 24, 40) and everything[0].dtype == np.float32
    # The caller owns what run returns: the next call must not overwrite it.
    before = everything[0].copy()
    session.run(None, {inp.name: inputs()[1]})
    np.testing.assert_array_equal(everything[0], before)
    with pytest.raises(ValueError, match="unknown input"):
        session.run(None, {"other": x})
    with pytest.raises(ValueError, match="unknown output"):
        session.run(["other"], {inp.name: x})


@needs_openvino
def test_f32_matches_onnxruntime_on_two_shapes(model_bytes):
    from hieseg.engine.openvino_engine import create_openvino_session

    session = create_openvino_session(model_bytes, "conv_sigmoid", "f32", threads=1)
    for x, expected in zip(inputs(), ort_outputs(model_bytes)):
        got = session.run(None, {"image": x})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@needs_openvino
def test_bf16_runs_and_agrees_with_onnxruntime(model_bytes):
    from hieseg.engine.openvino_engine import create_openvino_session

    if not cpu_has_native_bf16():
        flags = ", ".join(sorted(cpu_bf16_flags())) or "none"
        pytest.skip(f"this CPU has no native bf16 (OpenVINO does not report BF16; /proc/cpuinfo bf16 flags: {flags})")
    session = create_openvino_session(model_bytes, "conv_sigmoid", "bf16", threads=1)
    assert session.precision == "bf16"
    for x, expected in zip(inputs(), ort_outputs(model_bytes)):
        np.testing.assert_allclose(session.run(None, {"image": x})[0], expected, rtol=0, atol=1e-2)


@needs_openvino
def test_auto_precision_follows_the_cpu(model_bytes):
    from hieseg.engine.openvino_engine import create_openvino_session

    session = create_openvino_session(model_bytes, "conv_sigmoid", "auto", threads=1)
    assert session.precision == ("bf16" if cpu_has_native_bf16() else "f32")


@needs_openvino
def test_unloadable_bytes_are_a_model_error():
    from hieseg.engine.openvino_engine import create_openvino_session

    with pytest.raises(ModelError, match="broken.onnx: not a loadable ONNX model"):
        create_openvino_session(b"not an onnx model", "broken.onnx", "f32", threads=1)


@needs_openvino
def test_release_memory_keeps_the_session_usable(model_bytes):
    from hieseg.engine.openvino_engine import create_openvino_session

    session = create_openvino_session(model_bytes, "conv_sigmoid", "f32", threads=1)
    x = inputs()[1]
    before = session.run(None, {"image": x})[0]
    session.release_memory()  # buffers go; the next run allocates them again and gives the same result
    np.testing.assert_array_equal(session.run(None, {"image": x})[0], before)
