"""ORT parity of the exported members on a real case: max |ORT - the network in float64| of probabilities <= 1e-4.

Needs the training environment (torch + MONAI, ``training/setup.sh``) and the real cases; skips otherwise, so the
runtime suite runs without training dependencies. With the training checkpoints of the shipped ``model/`` (in
``training/runs/cv``), the shipped ONNX files themselves are checked; without them, the export path is checked on
freshly initialised networks of the shipped architectures.
"""

import copy
import json
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
MODEL = REPO / "model"
RUNS = REPO / "training" / "runs" / "cv"
TARBALL = REPO.parent / "shared" / "data" / "bonbid2023-train-40cases.tar.gz"
CASE = "MGHNICU_438"


@pytest.fixture(scope="module")
def real_case():
    if not TARBALL.is_file() and not (REPO / ".cache" / "data" / "BONBID2023_Train").is_dir():
        skip_unless_ci("real cases not available (../shared/data)")
    from training.data import ensure_data, load_cases

    return load_cases(ensure_data(), [CASE])[CASE]


def _manifest():
    if not (MODEL / "manifest.json").is_file():
        pytest.skip("no model/manifest.json")
    from hieseg.engine.manifest import load_manifest

    return load_manifest(MODEL), json.loads((MODEL / "manifest.json").read_text())


def _prepare(case, member):
    from training.train import prepare_case

    return prepare_case(case, list(member.channels), list(member.target_spacing_zyx), 8.0)


def _spec(member):
    return {"kind": member.kind, "divisible_by": list(member.divisible_by)}


def test_shipped_members_match_their_checkpoints(real_case):
    from training.export import PARITY_TOL, load_net, parity

    manifest, raw = _manifest()
    checked = 0
    for member in manifest.members:
        base, fold = member.name.rsplit("_f", 1)
        ckpt = RUNS / base / f"fold{fold}" / "final.pt"
        if not ckpt.is_file():
            continue
        arch = raw["provenance"]["training"]["members"][base]["arch"]
        net = load_net(ckpt, member.kind, len(member.channels), arch)
        diff = parity(net, member.path, _prepare(real_case, member).image, _spec(member))
        assert diff <= PARITY_TOL, f"{member.name}: max |ORT - torch| = {diff:.2e}"
        checked += 1
    if not checked:
        pytest.skip("training checkpoints of the shipped members not present (training/runs/cv)")


def test_shipped_networks_are_the_training_architectures(real_case):
    """Every shipped ONNX file, loaded back into its training architecture (batch norm folded), computes the same
    probabilities in torch eager: the graphs are these networks, and the benchmark's torch run uses their weights."""
    from training.export import PARITY_TOL, net_from_onnx, parity

    manifest, raw = _manifest()
    trained = raw["provenance"].get("training", {}).get("members", {})
    for member in manifest.members:
        base = member.name.rsplit("_f", 1)[0]
        if base not in trained:
            pytest.skip(f"{member.name}: not a trained network of the training package")
        net = net_from_onnx(member.path, member.kind, len(member.channels), trained[base]["arch"])
        diff = parity(net, member.path, _prepare(real_case, member).image, _spec(member))
        assert diff <= PARITY_TOL, f"{member.name}: max |ORT - torch| = {diff:.2e}"


@pytest.mark.parametrize("base", ["unet3d", "unetpp2d"])
def test_export_path_parity_on_fresh_network(real_case, tmp_path, base):
    from training import config
    from training.export import PARITY_TOL, export_onnx, parity
    from training.nets import build
    from training.train import prepare_case

    spec = config.MEMBERS[base]
    stats = config.brain_stats([real_case])
    channels = config.channel_specs(spec["sources"], config.DEFAULT_INTENSITY, stats)
    torch.manual_seed(0)
    net = build(spec["kind"], len(channels), spec["arch"]).eval()
    # non-trivial batch-norm statistics so the folded graph is really compared
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{base}.onnx"
    export_onnx(net, spec["kind"], len(channels), path)
    image = prepare_case(real_case, channels, spec["target_spacing_zyx"], config.CROP_MARGIN_MM).image
    diff = parity(net, path, image, spec)
    assert diff <= PARITY_TOL, f"max |ORT - the network in float64| = {diff:.2e}"
    # the gate has teeth: a graph whose first folded norm is off by 0.05 (an export bug) fails it
    wrong = copy.deepcopy(net)
    first_norm = next(m for m in wrong.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)))
    with torch.no_grad():
        first_norm.running_mean.add_(0.05)
    wrong_diff = parity(wrong, path, image, spec)
    assert wrong_diff > PARITY_TOL, f"a wrong norm passed the gate: {wrong_diff:.2e}"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (_out,) = sess.get_inputs(), sess.get_outputs()
    assert len(inp.shape) == (5 if spec["kind"] == "3d" else 4)
    assert all(isinstance(d, str) for d in inp.shape[:1] + inp.shape[2:]), inp.shape  # dynamic batch + spatial


def test_one_ensemble_loop_for_onnx_and_torch_predictors(real_case):
    """The runtime's ensemble loop (hieseg.engine.ensemble.run_ensemble) run twice on a real case with the same weights:
    once with ONNX Runtime sessions as the predictors (as the runtime and the OOF stage run it), once with torch
    modules (as training validation, the cv stage and the torch-eager benchmark run it). Fused maps and the
    per-flip maps the OOF stage keeps agree within the export parity tolerance."""
    from dataclasses import replace

    from hieseg.engine import preprocess
    from hieseg.engine.ensemble import Runner, plain_runner, run_ensemble
    from hieseg.engine.providers import provider_plan
    from hieseg.engine.sessions import create_session
    from training.export import PARITY_TOL, net_from_onnx
    from training.train import torch_predictor

    manifest, raw = _manifest()
    trained = raw["provenance"].get("training", {}).get("members", {})
    # one fold of each network, both TTA passes, so tiling, flips, restoring and weighting are all exercised
    members = [replace(m, tta_flips=((), (2,))) for m in manifest.members if m.name.endswith("_f0")]
    if not members or any(m.name.rsplit("_f", 1)[0] not in trained for m in members):
        pytest.skip("the shipped members are not networks of the training package")
    onnx_runners, torch_runners = [], []
    for m in members:
        session, provider = create_session(m.path, m.sha256, provider_plan("cpu", threads=2))
        onnx_runners.append(Runner(m, plain_runner(session, m.name), m.batch_size, provider))
        net = net_from_onnx(m.path, m.kind, len(m.channels), trained[m.name.rsplit("_f", 1)[0]]["arch"])
        torch_runners.append(Runner(m, torch_predictor(net), m.batch_size, "torch"))
    c = real_case
    crop = preprocess.crop_to_brain(c.adc, c.spacing_zyx, manifest.crop_margin_mm)
    ort_out = run_ensemble(onnx_runners, c.adc, c.zadc, c.spacing_zyx, crop, keep_flips=True)
    torch_out = run_ensemble(torch_runners, c.adc, c.zadc, c.spacing_zyx, crop, keep_flips=True)
    assert ort_out.probability.shape == c.adc.shape and ort_out.probability.max() > 0.5  # the case has lesions
    assert np.abs(ort_out.probability - torch_out.probability).max() <= PARITY_TOL
    for m in members:
        assert len(ort_out.per_flip[m.name]) == 2
        for a, b in zip(ort_out.per_flip[m.name], torch_out.per_flip[m.name]):
            assert np.abs(a - b).max() <= PARITY_TOL
    # keep_flips changes what is returned, not the fused map: the runtime's path gives the same probabilities
    plain = run_ensemble(onnx_runners, c.adc, c.zadc, c.spacing_zyx, crop)
    np.testing.assert_allclose(plain.probability, ort_out.probability, atol=1e-6)


def test_a_kept_network_keeps_its_parity_under_the_reference_it_was_measured_by(tmp_path):
    """A network kept without its checkpoint carries its recorded figure over: a manifest exported before the float64
    reference recorded ORT vs torch float32, and that figure must not reappear as one against float64."""
    from training.export import PARITY_KEYS, _previous_export

    old = {"members": [{"file": "a.onnx", "sha256": "0" * 64}],
           "provenance": {"parity_max_abs_ort_vs_torch": {"a.onnx": 3e-6}}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    assert _previous_export(tmp_path)["parity"] == {"parity_max_abs_ort_vs_torch": {"a.onnx": 3e-6}}
    measured = {PARITY_KEYS[0]: {"a.onnx": 1e-6}, PARITY_KEYS[1]: {"a.onnx": 2e-6}}
    (tmp_path / "manifest.json").write_text(json.dumps({"members": old["members"], "provenance": measured}))
    assert _previous_export(tmp_path)["parity"] == measured
