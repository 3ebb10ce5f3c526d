"""The same ensemble on other execution paths gives the same result on real cases, against ONNX Runtime's own
CPU provider with one session per member (the reference):

- f32 paths (fused folds on the CPU provider, native OpenVINO f32, CUDA): masks voxel-identical and fused
  probability within 1e-4;
- native OpenVINO bf16, the default on CPUs with native bf16: the gate users care about, on the masks: at most
  0.1 % of the lesion voxels differ and every case's Dice against its label stays within 0.005 of the reference's.
Paths this machine cannot run (no openvino package, no GPU, no native bf16) are skipped, saying so.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from realdata import real_cases_dir

from hieseg.app.pipeline import Segmenter
from hieseg.engine.manifest import BUNDLED_MODEL_DIR
from hieseg.engine.openvino_engine import cpu_has_native_bf16, openvino_available
from hieseg.engine.providers import CPU, CUDA, OPENVINO, nvidia_driver_present
from hieseg.evaluation.metrics import case_metrics
from hieseg.inputs.cases import find_cases
from hieseg.inputs.io import read_image

BF16_VOXEL_SHARE = 0.001  # of the reference's lesion voxels
BF16_DICE_DELTA = 0.005
# Both grid families (2 mm isotropic; 1.375 x 1.375 x 6 mm) and a 4 mm one; small and large lesion burden.
CASES = ("MGHNICU_264", "MGHNICU_379", "MGHNICU_014")
PROBABILITY_TOLERANCE = 1e-4


def _other_devices() -> list:
    available = ort.get_available_providers()
    cuda = CUDA in available and nvidia_driver_present()
    return [pytest.param("openvino", marks=() if openvino_available() else pytest.mark.skip(
                reason="the openvino package is not installed")),
            pytest.param("cuda", marks=() if cuda else pytest.mark.skip(
                reason=f"no usable CUDA here (onnxruntime offers {', '.join(available)})"))]


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
    shared = Segmenter(BUNDLED_MODEL_DIR, "cpu", share=True)
    assert len(shared.members) < len(segmenter.members)  # folds really share sessions
    _assert_same([shared.segment_case(case) for case in cases], expected, "fused folds on CPU")


@pytest.mark.parametrize("device", _other_devices())
def test_provider_matches_the_cpu_provider(reference, device):
    _, cases, expected = reference
    segmenter = Segmenter(BUNDLED_MODEL_DIR, device, precision="f32")  # f32: the 1e-4 probability parity
    providers = set(segmenter.providers.values())
    assert providers == {OPENVINO if device == "openvino" else CUDA}, f"some members fell back: {segmenter.providers}"
    _assert_same([segmenter.segment_case(case) for case in cases], expected, device)


@pytest.mark.slow
def test_bf16_masks_agree_with_f32(reference):
    if not openvino_available():
        pytest.skip("the openvino package is not installed")
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AMX-BF16 / AVX512_BF16): auto runs f32 here")
    _, cases, expected = reference
    segmenter = Segmenter(BUNDLED_MODEL_DIR, "openvino", precision="bf16")
    assert segmenter.plan.precision == "bf16" and set(segmenter.providers.values()) == {OPENVINO}
    for case, ref in zip(cases, expected):
        got = segmenter.segment_case(case)
        differ = int((got.mask != ref.mask).sum())
        assert differ <= BF16_VOXEL_SHARE * max(int(ref.mask.sum()), 1), (case.case_id, differ)
        truth = read_image(case.adc.parents[1] / "3LABEL" / f"{case.output_stem}.mha", dtype=None)[0]
        spacing = ref.geometry.spacing_zyx
        dice_bf16 = case_metrics(truth, got.mask, spacing)["dice"]
        dice_f32 = case_metrics(truth, ref.mask, spacing)["dice"]
        assert abs(dice_bf16 - dice_f32) <= BF16_DICE_DELTA, (case.case_id, dice_bf16, dice_f32)
