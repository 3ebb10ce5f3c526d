"""The CPU training speed-ups (bf16 autocast, channels-last memory order) change neither the arithmetic beyond bf16
rounding nor what is saved: on real prepared cases, a channels-last float32 step equals the default step, a bf16 +
channels-last step stays within bf16 tolerance of it, and a checkpoint trained that way loads into a freshly built
network and exports to a float32 ONNX that passes the export parity gate.

Needs the training environment (torch + MONAI) and the real cases; skips otherwise (fails in CI without the cases).
On a CPU without native bf16 the bf16 step is skipped (with its reason) and the checkpoint test trains in float32:
there ``--bf16`` is refused, because torch emulates bfloat16 about a hundred times slower than float32.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from realdata import skip_unless_ci

torch = pytest.importorskip("torch", reason="training environment (torch) not installed: see training/setup.sh")
pytest.importorskip("monai", reason="training environment (MONAI) not installed: see training/setup.sh")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the training package lives at the repo root, beside hieseg/
    sys.path.insert(0, str(REPO))
TARBALL = REPO.parent / "shared" / "data" / "bonbid2023-train-40cases.tar.gz"
CASES = ["MGHNICU_438", "MGHNICU_447"]  # lesion burden 1-5 % and < 1 %
# bfloat16 keeps 8 significant bits (one rounding <= 2^-9 relative); the loss is a mean over the batch's ~10^5
# voxels, so the roundings of the forward pass largely average out (observed: ~1e-4 relative on both members).
# 1 % leaves a wide margin and still catches a wrong dtype or memory order (tens of percent, or NaN).
BF16_RTOL = 1e-2
# channels-last alone is the same float32 arithmetic summed in another order (observed: <1e-4 relative; the second
# step also carries the first AdamW update, whose size hardly depends on the gradient's magnitude)
FP32_RTOL = 5e-4


NO_BF16 = ("this CPU has no native bf16 (AVX512-BF16 or AMX): torch emulates bfloat16 autocast about 100x slower "
           "than float32, and --bf16 is refused here")


def _native_bf16() -> bool:
    from training.train import cpu_has_native_bf16

    return cpu_has_native_bf16()


def test_bf16_is_refused_where_the_cpu_only_emulates_it(monkeypatch):
    from types import SimpleNamespace

    from training import stages, train
    from training.study import TrainingError

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(TrainingError, match="no native bf16"):
        stages.require_native_bf16(SimpleNamespace(bf16=True))
    stages.require_native_bf16(SimpleNamespace(bf16=False))  # float32 runs anywhere
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    stages.require_native_bf16(SimpleNamespace(bf16=True))


@pytest.fixture(scope="module")
def real_cases():
    if not TARBALL.is_file() and not (REPO / ".cache" / "data" / "BONBID2023_Train").is_dir():
        skip_unless_ci("real cases not available (../shared/data)")
    from training.data import ensure_data, load_cases

    return load_cases(ensure_data(), CASES)


def _samples(cases, base):
    from training import config
    from training.train import prepare_case

    spec = config.MEMBERS[base]
    channels = config.channel_specs(spec["sources"], config.DEFAULT_INTENSITY, config.brain_stats(list(cases.values())))
    return spec, [prepare_case(c, channels, spec["target_spacing_zyx"], config.CROP_MARGIN_MM) for c in cases.values()]


def _two_steps(spec, samples, amp, channels_last):
    """The first two losses of train_member's step on the same seeded batches."""
    from training import config
    from training.nets import build
    from training.train import Loss, Sampler, memory_format, next_batch, train_step

    torch.manual_seed(0)
    fmt = memory_format(spec["kind"], channels_last)
    net = build(spec["kind"], samples[0].image.shape[0], spec["arch"]).to(memory_format=fmt).train()
    opt = torch.optim.AdamW(net.parameters(), lr=spec["lr"], weight_decay=1e-4)
    sampler = Sampler(samples, spec["kind"], spec["train_patch"], np.random.default_rng(3))
    gen = torch.Generator().manual_seed(3)
    loss_fn = Loss(config.DEFAULT_LOSS, 100)
    n_int = sum(1 for s in spec["sources"] if s != "prior")
    losses = []
    for it in range(2):
        x, y = next_batch(sampler, spec["batch"], n_int, gen, torch.device("cpu"), fmt)
        assert x.is_contiguous(memory_format=fmt)
        losses.append(float(train_step(net, opt, loss_fn, x, y, it, amp)))
    return np.array(losses)


@pytest.mark.parametrize("base", ["unet3d", "unetpp2d"])
def test_fast_cpu_steps_match_the_float32_step(real_cases, base):
    spec, samples = _samples(real_cases, base)
    ref = _two_steps(spec, samples, amp=False, channels_last=False)
    assert np.all(np.isfinite(ref)) and np.all(ref > 0)
    cl = _two_steps(spec, samples, amp=False, channels_last=True)
    np.testing.assert_allclose(cl, ref, rtol=FP32_RTOL, err_msg="channels-last float32 step")
    if not _native_bf16():  # the float32 checks above have run; the bf16 step needs a CPU that has bf16
        pytest.skip(NO_BF16)
    fast = _two_steps(spec, samples, amp=True, channels_last=True)
    np.testing.assert_allclose(fast, ref, rtol=BF16_RTOL, err_msg="bf16 + channels-last step")


@pytest.mark.parametrize("base", ["unet3d", "unetpp2d"])
def test_channels_last_checkpoint_loads_plain_and_exports(real_cases, tmp_path, base):
    from training.export import PARITY_TOL, export_onnx, load_net, parity
    from training.train import train_member

    spec, samples = _samples(real_cases, base)
    spec = {**spec, "iterations": 2, "batch": 2}
    # bf16 where the CPU has it (as --bf16 trains); elsewhere float32, which --bf16 refuses to emulate: the
    # checkpoint's channels-last layout is what this test is about
    trained = train_member(spec, samples, [], tmp_path / "run", "dicefocal", seed=0, log=lambda m: None,
                           amp=_native_bf16(), channels_last=True)
    saved = torch.load(tmp_path / "run" / "final.pt", map_location="cpu")
    assert saved["channels_last"] is True
    assert all(t.is_contiguous() for t in saved["net"].values())  # plain tensors, as a default run writes
    net = load_net(tmp_path / "run" / "final.pt", spec["kind"], len(samples[0].image), spec["arch"])  # strict load
    from hieseg.engine.inferers import pad_spatial, padded_shape

    image = samples[0].image
    batch = np.ascontiguousarray(image[None] if spec["kind"] == "3d" else np.moveaxis(image, 1, 0))
    batch = torch.from_numpy(pad_spatial(batch, padded_shape(batch.shape[2:], spec["divisible_by"]))[0])
    with torch.no_grad():
        # probabilities, as the parity gate compares them: the channels-last net sums in another order
        np.testing.assert_allclose(torch.sigmoid(net(batch)).numpy(), torch.sigmoid(trained(batch)).numpy(),
                                   rtol=0, atol=PARITY_TOL)
    path = tmp_path / f"{base}.onnx"
    export_onnx(net, spec["kind"], len(image), path)
    import onnx

    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    diff = parity(net, path, image, spec)
    assert diff <= PARITY_TOL, f"max |ORT - torch| = {diff:.2e}"
