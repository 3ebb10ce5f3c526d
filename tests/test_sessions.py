import numpy as np
import onnxruntime as ort
import pytest

from hieseg.engine import providers, sessions
from hieseg.errors import DeviceError


def test_cuda_options_are_heuristic_with_a_memory_cap():
    options = providers.cuda_provider_options(4 * 2**30)
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["gpu_mem_limit"] == 4 * 2**30
    assert "gpu_mem_limit" not in providers.cuda_provider_options(None)


def test_session_options_full_graph_optimisation_and_cpu_count():
    opts = sessions.session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.intra_op_num_threads == providers.available_cpus() >= 1
    assert sessions.session_options(3).intra_op_num_threads == 3


def test_provider_request_per_device(monkeypatch):
    assert providers.requested_providers("cpu") == [providers.CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CUDA, providers.CPU])
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: False)
    assert providers.requested_providers("auto") == [providers.CPU]  # onnxruntime-gpu without a driver: quiet CPU
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        providers.requested_providers("cuda")
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: True)
    requested = providers.requested_providers("auto", 2**30)
    assert requested[0][0] == providers.CUDA and requested[0][1]["gpu_mem_limit"] == 2**30
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CPU])
    assert providers.requested_providers("auto") == [providers.CPU]
    with pytest.raises(DeviceError, match="no CUDA provider"):
        providers.requested_providers("cuda")
    with pytest.raises(DeviceError):
        providers.requested_providers("tpu")


def test_cuda_fallback_inside_a_session_is_an_error_for_cuda(monkeypatch, toy_model):
    """get_available_providers can list CUDA while the session silently falls back to CPU (no driver)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CUDA, providers.CPU])
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: True)
    from hieseg.engine.manifest import load_manifest

    member = load_manifest(toy_model).members[0]
    session, used = sessions.create_session(member.path, member.sha256, "auto")
    assert used == providers.CPU
    if providers.CUDA not in ort.InferenceSession(str(member.path), providers=[providers.CPU]).get_providers():
        with pytest.raises(DeviceError, match="not usable|failed"):
            sessions.create_session(member.path, member.sha256, "cuda")


def test_available_cpus_respects_affinity():
    import os

    assert providers.available_cpus() <= len(os.sched_getaffinity(0))


def test_threads_respect_a_pids_limit(monkeypatch):
    monkeypatch.setattr(providers, "available_cpus", lambda: 64)
    monkeypatch.setattr(providers, "pids_limit", lambda: 256)
    assert providers.default_threads(10) == 22  # (256 - 32) // 10: ten pools stay under the limit
    assert providers.default_threads(1) == 64
    monkeypatch.setattr(providers, "pids_limit", lambda: None)
    assert providers.default_threads(10) == 64


def test_sessions_share_one_cpu_arena():
    assert sessions.shared_cpu_arena() is True
    assert sessions.session_options().get_session_config_entry("session.use_env_allocators") == "1"


@pytest.mark.parametrize("device, available, driver, expected", [
    ("auto", [providers.CUDA, providers.OPENVINO, providers.CPU], True, providers.CUDA),
    ("auto", [providers.CUDA, providers.OPENVINO, providers.CPU], False, providers.OPENVINO),
    ("auto", [providers.OPENVINO, providers.CPU], False, providers.OPENVINO),
    ("auto", [providers.CUDA, providers.CPU], False, providers.CPU),
    ("auto", [providers.CPU], False, providers.CPU),
    ("cpu", [providers.CUDA, providers.OPENVINO, providers.CPU], True, providers.CPU),  # forces ORT's own CPU EP
    ("openvino", [providers.CUDA, providers.OPENVINO, providers.CPU], True, providers.OPENVINO),
    ("cuda", [providers.CUDA, providers.OPENVINO, providers.CPU], True, providers.CUDA),
])
def test_provider_order_cuda_then_openvino_then_cpu(device, available, driver, expected):
    provider, why = providers.choose_provider(device, available, driver)
    assert provider == expected and why


def test_openvino_refused_where_the_build_has_none():
    with pytest.raises(DeviceError, match=r"no OpenVINO provider.*hieseg\[openvino\]"):
        providers.choose_provider("openvino", [providers.CUDA, providers.CPU], True)


def test_openvino_request_is_float32_cpu_alone(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.OPENVINO, providers.CPU])
    requested = providers.requested_providers("auto", threads=3)
    assert len(requested) == 1  # no CPU entry: a graph runs wholly on OpenVINO or is refused (then CPU, logged)
    name, options = requested[0]
    assert name == providers.OPENVINO
    assert options["device_type"] == "CPU" and options["precision"] == "FP32" and options["num_of_threads"] == "3"
    assert sessions.session_options(2, whole_graph=True).get_session_config_entry(
        "session.disable_cpu_ep_fallback") == "1"


def _sigmoid_then_det() -> bytes:
    """(N, 4, 4) -> det(sigmoid(x)): OpenVINO 2025.4 has no Det, so it could take only part of this graph."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Det", ["s"], ["y"])],
                              "sigmoid_det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_graph_openvino_cannot_take_runs_wholly_on_cpu_with_a_warning(monkeypatch, caplog):
    if providers.OPENVINO not in ort.get_available_providers():  # simulated: the request itself cannot be met
        monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.OPENVINO, providers.CPU])
    with caplog.at_level("WARNING"):
        session, used = sessions.session_from_bytes(_sigmoid_then_det(), "sigmoid_det.onnx", "openvino")
    assert used == providers.CPU
    assert "sigmoid_det.onnx: OpenVINOExecutionProvider cannot run this graph" in caplog.text
    x = np.random.default_rng(0).standard_normal((3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], np.linalg.det(1 / (1 + np.exp(-x))), rtol=1e-4)
