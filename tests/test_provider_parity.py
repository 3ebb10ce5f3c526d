"""The same ensemble on other execution paths gives the same result on real cases: masks voxel-identical and
fused probability within 1e-4 of ONNX Runtime's own CPU provider with one session per member (the reference).

- fused folds (shared_sessions) on the CPU provider: runs everywhere the test tools are installed (CI);
- every other provider the installed onnxruntime offers (OpenVINO with hieseg[openvino], CUDA with a GPU);
  with only the CPU provider present these are skipped, saying so.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from hieseg.inputs.cases import find_cases
from hieseg.engine.ensemble import load_members
from hieseg.engine.manifest import BUNDLED_MODEL_DIR
from hieseg.app.pipeline import Segmenter
from hieseg.engine.providers import CPU, CUDA, OPENVINO, nvidia_driver_present
from realdata import real_cases_dir

# Both grid families (2 mm isotropic; 1.375 x 1.375 x 6 mm) and a 4 mm one; small and large lesion burden.
CASES = ("MGHNICU_264", "MGHNICU_379", "MGHNICU_014")
PROBABILITY_TOLERANCE = 1e-4


def _other_devices() -> list:
    available = ort.get_available_providers()
    devices = []
    for device, provider in (("openvino", OPENVINO), ("cuda", CUDA)):
        usable = provider in available and (provider != CUDA or nvidia_driver_present())
        devices.append(pytest.param(device, marks=() if usable else pytest.mark.skip(
            reason=f"this onnxruntime has no usable {provider} (only {', '.join(available)})")))
    return devices


@pytest.fixture(scope="module")
def reference():
    if not (BUNDLED_MODEL_DIR / "manifest.json").is_file():
        pytest.skip("no bundled model in this clone")
    cases = [c for c in find_cases(real_cases_dir()) if c.case_id in CASES]
    assert len(cases) == len(CASES)
    segmenter = Segmenter(BUNDLED_MODEL_DIR, "cpu")
    assert set(segmenter.providers.values()) == {CPU}
    return segmenter, cases, [segmenter.segment_case(case) for case in cases]


def _assert_same(results, reference_results, label):
    for got, ref in zip(results, reference_results):
        case = ref.case.case_id
        assert np.array_equal(got.mask, ref.mask), f"{label}, {case}: {int((got.mask != ref.mask).sum())} voxels differ"
        diff = float(np.abs(got.probability - ref.probability).max())
        assert diff <= PROBABILITY_TOLERANCE, f"{label}, {case}: max |probability difference| {diff:.2e}"


@pytest.mark.slow  # the shipped ensemble on real cases, twice (about 50 s)
def test_fused_folds_match_one_session_per_member(reference):
    segmenter, cases, expected = reference
    shared = Segmenter(BUNDLED_MODEL_DIR, "cpu")
    shared.members = load_members(shared.manifest, "cpu", share=True)
    assert len(shared.members) < len(segmenter.members)  # folds really share sessions
    _assert_same([shared.segment_case(case) for case in cases], expected, "fused folds on CPU")


@pytest.mark.parametrize("device", _other_devices())
def test_provider_matches_the_cpu_provider(reference, device):
    _, cases, expected = reference
    segmenter = Segmenter(BUNDLED_MODEL_DIR, device)
    providers = set(segmenter.providers.values())
    assert providers == {OPENVINO if device == "openvino" else CUDA}, f"some members fell back: {segmenter.providers}"
    _assert_same([segmenter.segment_case(case) for case in cases], expected, device)
