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
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CUDA, providers.CPU])
    monkeypatch.setattr(providers, "openvino_available", lambda: False)
    assert providers.provider_plan("cpu").ort_providers() == [providers.CPU]
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: False)
    assert providers.provider_plan("auto").ort_providers() == [providers.CPU]  # onnxruntime-gpu, no driver: CPU
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        providers.provider_plan("cuda")
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: True)
    requested = providers.provider_plan("auto", 2**30).ort_providers()
    assert requested[0][0] == providers.CUDA and requested[0][1]["gpu_mem_limit"] == 2**30
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CPU])
    assert providers.provider_plan("auto").ort_providers() == [providers.CPU]
    with pytest.raises(DeviceError, match="no CUDA provider"):
        providers.provider_plan("cuda")
    with pytest.raises(DeviceError):
        providers.provider_plan("tpu")


def test_cuda_fallback_inside_a_session_is_an_error_for_cuda(monkeypatch, toy_model):
    """get_available_providers can list CUDA while the session silently falls back to CPU (no driver)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CUDA, providers.CPU])
    monkeypatch.setattr(providers, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(providers, "openvino_available", lambda: False)
    from hieseg.engine.manifest import load_manifest

    member = load_manifest(toy_model).members[0]
    session, used = sessions.create_session(member.path, member.sha256, providers.provider_plan("auto"))
    assert used == providers.CPU
    if providers.CUDA not in ort.InferenceSession(str(member.path), providers=[providers.CPU]).get_providers():
        with pytest.raises(DeviceError, match="not usable|failed"):
            sessions.create_session(member.path, member.sha256, providers.provider_plan("cuda"))


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


@pytest.mark.parametrize("device, available, driver, openvino, expected", [
    ("auto", [providers.CUDA, providers.CPU], True, True, providers.CUDA),
    ("auto", [providers.CUDA, providers.CPU], False, True, providers.OPENVINO),
    ("auto", [providers.CPU], False, True, providers.OPENVINO),
    ("auto", [providers.CUDA, providers.CPU], False, False, providers.CPU),
    ("auto", [providers.CPU], False, False, providers.CPU),
    ("cpu", [providers.CUDA, providers.CPU], True, True, providers.CPU),  # forces ORT's own CPU provider
    ("openvino", [providers.CUDA, providers.CPU], True, True, providers.OPENVINO),
    ("cuda", [providers.CUDA, providers.CPU], True, True, providers.CUDA),
])
def test_provider_order_cuda_then_openvino_then_cpu(device, available, driver, openvino, expected):
    provider, why = providers.choose_provider(device, available, driver, openvino)
    assert provider == expected and why


def test_openvino_refused_where_the_package_is_missing():
    with pytest.raises(DeviceError, match=r"openvino package is not installed"):
        providers.choose_provider("openvino", [providers.CUDA, providers.CPU], True, False)


@pytest.mark.parametrize("provider, asked, has_bf16, expected", [
    (providers.OPENVINO, "auto", True, "bf16"),
    (providers.OPENVINO, "auto", False, "f32"),      # e.g. a Grand Challenge CPU without AMX / AVX512_BF16
    (providers.OPENVINO, "f32", True, "f32"),
    (providers.OPENVINO, "bf16", True, "bf16"),
    (providers.OPENVINO, "bf16", False, DeviceError),  # never an emulation slower than f32
    (providers.CPU, "auto", True, "f32"),
    (providers.CPU, "bf16", True, DeviceError),
    (providers.CUDA, "auto", True, "f32"),
    (providers.CPU, "fp8", True, DeviceError),
])
def test_precision_decision(provider, asked, has_bf16, expected):
    if expected is DeviceError:
        with pytest.raises(DeviceError):
            providers.choose_precision(provider, asked, has_bf16)
    else:
        assert providers.choose_precision(provider, asked, has_bf16) == expected


def test_plan_is_made_once_and_names_engine_and_precision(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CPU])
    monkeypatch.setattr(providers, "openvino_available", lambda: True)
    monkeypatch.setattr(providers, "cpu_has_native_bf16", lambda: False)
    plan = providers.provider_plan("auto", threads=3)
    assert (plan.provider, plan.precision, plan.threads) == (providers.OPENVINO, "f32", 3)
    assert "no native bf16" in plan.why and plan.engine == f"{providers.OPENVINO} f32"
    assert plan.on_cpu().provider == providers.CPU and plan.on_cpu().threads == 3


def _sigmoid_then_det() -> bytes:
    """(N, 4, 4) -> det(sigmoid(x)): OpenVINO has no Det, so it cannot compile this graph."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Det", ["s"], ["y"])],
                              "sigmoid_det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_graph_openvino_cannot_take_runs_wholly_on_cpu_with_a_warning(caplog):
    pytest.importorskip("openvino")
    plan = providers.ProviderPlan(providers.OPENVINO, "test", threads=1, precision="f32")
    with caplog.at_level("WARNING"):
        session, used = sessions.session_from_bytes(_sigmoid_then_det(), "sigmoid_det.onnx", plan)
    assert used == providers.CPU
    assert "sigmoid_det.onnx: OpenVINO cannot run this graph" in caplog.text
    x = np.random.default_rng(0).standard_normal((3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], np.linalg.det(1 / (1 + np.exp(-x))), rtol=1e-4)
