import onnxruntime as ort
import pytest

from hieseg import sessions
from hieseg.errors import DeviceError


def test_cuda_options_are_heuristic_with_a_memory_cap():
    options = sessions.cuda_provider_options(4 * 2**30)
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["gpu_mem_limit"] == 4 * 2**30
    assert "gpu_mem_limit" not in sessions.cuda_provider_options(None)


def test_session_options_full_graph_optimisation_and_cpu_count():
    opts = sessions.session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.intra_op_num_threads == sessions.available_cpus() >= 1
    assert sessions.session_options(3).intra_op_num_threads == 3


def test_provider_request_per_device(monkeypatch):
    assert sessions.requested_providers("cpu") == [sessions.CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [sessions.CUDA, sessions.CPU])
    monkeypatch.setattr(sessions, "nvidia_driver_present", lambda: False)
    assert sessions.requested_providers("auto") == [sessions.CPU]  # onnxruntime-gpu without a driver: quiet CPU
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        sessions.requested_providers("cuda")
    monkeypatch.setattr(sessions, "nvidia_driver_present", lambda: True)
    providers = sessions.requested_providers("auto", 2**30)
    assert providers[0][0] == sessions.CUDA and providers[0][1]["gpu_mem_limit"] == 2**30
    monkeypatch.setattr(ort, "get_available_providers", lambda: [sessions.CPU])
    assert sessions.requested_providers("auto") == [sessions.CPU]
    with pytest.raises(DeviceError, match="no CUDA provider"):
        sessions.requested_providers("cuda")
    with pytest.raises(DeviceError):
        sessions.requested_providers("tpu")


def test_cuda_fallback_inside_a_session_is_an_error_for_cuda(monkeypatch, toy_model):
    """get_available_providers can list CUDA while the session silently falls back to CPU (no driver)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [sessions.CUDA, sessions.CPU])
    monkeypatch.setattr(sessions, "nvidia_driver_present", lambda: True)
    from hieseg.manifest import load_manifest

    member = load_manifest(toy_model).members[0]
    session, used = sessions.create_session(member.path, member.sha256, "auto")
    assert used == sessions.CPU
    if sessions.CUDA not in ort.InferenceSession(str(member.path), providers=[sessions.CPU]).get_providers():
        with pytest.raises(DeviceError, match="not usable|failed"):
            sessions.create_session(member.path, member.sha256, "cuda")


def test_available_cpus_respects_affinity():
    import os

    assert sessions.available_cpus() <= len(os.sched_getaffinity(0))


def test_threads_respect_a_pids_limit(monkeypatch):
    monkeypatch.setattr(sessions, "available_cpus", lambda: 64)
    monkeypatch.setattr(sessions, "pids_limit", lambda: 256)
    assert sessions.default_threads(10) == 22  # (256 - 32) // 10: ten pools stay under the limit
    assert sessions.default_threads(1) == 64
    monkeypatch.setattr(sessions, "pids_limit", lambda: None)
    assert sessions.default_threads(10) == 64


def test_sessions_share_one_cpu_arena():
    assert sessions.shared_cpu_arena() is True
    assert sessions.session_options().get_session_config_entry("session.use_env_allocators") == "1"
