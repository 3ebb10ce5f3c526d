"""ONNX export of the finished folds' members, ORT parity with the network in float64 on a real case, manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from hieseg.files import file_digest

from . import config
from .data import REPO, TARBALL
from .domain import training_domain
from .figures import rounded
from .nets import WithSigmoid, build
from .publish import publish_model_dir, recover_model_dir, staging_dir
from .study import TrainingError

PARITY_TOL = 1e-4
PARITY_KEYS = ("parity_max_abs_ort_vs_torch_float64", "parity_max_abs_torch_float32_vs_float64",
               "parity_max_abs_ort_vs_torch")  # the last: manifests exported before the float64 reference
RECORD = REPO / "training" / "tuning.json"  # the shipped model's tuning record (report, verify)


def load_net(final_pt: Path, kind: str, n_ch: int, arch: dict) -> torch.nn.Module:
    net = build(kind, n_ch, arch)
    net.load_state_dict(torch.load(final_pt, map_location="cpu")["net"])
    return net.eval()


def net_from_onnx(onnx_path: Path, kind: str, n_ch: int, arch: dict) -> torch.nn.Module:
    """The training architecture with the weights of an exported network, for when its checkpoint is gone.

    The exporter folds each batch norm into the convolution before it, so every (transposed) convolution takes
    its weight and bias from its ONNX node (the node's name is the module path) and every batch norm becomes the
    identity. Modules the graph never calls (UNet++'s unused deep-supervision heads) keep their initial weights,
    which is why the result is checked with ``parity``: it must compute the ONNX graph's function in torch eager.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    net = build(kind, n_ch, arch).eval()
    modules = dict(net.named_modules())
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        # the node's scope is the call path (WithSigmoid's /net first; DynUNet calls its blocks through
        # skip_layers.next_layer...): its longest suffix that names a module is the module's own name. A
        # Sequential's child is scoped "cse/cse.1": drop the parent part its child repeats.
        scope = node.name.removeprefix("/net/").split("/")[:-1]
        parts = [p for p, nxt in zip(scope, scope[1:] + [""]) if not nxt.startswith(p + ".")]
        path = next((p for p in (".".join(parts[i:]) for i in range(len(parts))) if p in modules), None)
        if path is None:
            raise ValueError(f"{onnx_path}: node {node.name} matches no module of the {kind} architecture")
        conv = modules[path]
        conv.weight = torch.nn.Parameter(torch.from_numpy(weights[node.input[1]].copy()))
        if len(node.input) > 2:
            conv.bias = torch.nn.Parameter(torch.from_numpy(weights[node.input[2]].copy()))
    with torch.no_grad():
        for m in modules.values():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
                m.weight.fill_(1.0)
                m.bias.zero_()
    return net


def export_onnx(net: torch.nn.Module, kind: str, n_ch: int, path: Path) -> None:
    wrapped = WithSigmoid(net).eval()
    example = torch.zeros((1, n_ch, 8, 32, 32) if kind == "3d" else (2, n_ch, 32, 32))
    axes = {0: "n", 2: "z", 3: "y", 4: "x"} if kind == "3d" else {0: "n", 2: "y", 3: "x"}
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, example, str(tmp), input_names=["image"], output_names=["probability"],
                          dynamic_axes={"image": axes, "probability": axes}, opset_version=17, dynamo=False)
    os.replace(tmp, path)


# The exact function the ONNX graph must compute is the network's, evaluated here in float64: torch's own float32
# eager run is only one more rounding of it. On a barely trained network (a smoke run's logits reach |400|) torch
# float32 was itself 7.9e-5 from float64 while ORT was 2.1e-5 from it: gating ORT on torch float32 failed CI at
# 1.06e-4 on rounding that neither side got wrong. The tolerance stays 1e-4, now against the exact function.


def parity_errors(net: torch.nn.Module, onnx_path: Path, image: np.ndarray, spec: dict) -> dict[str, float]:
    """max |difference| of probabilities over the member's whole-volume input of a real case (as the runtime feeds
    it): ORT float32 and torch float32 each against the network in float64, and ORT against torch float32."""
    import copy

    import onnxruntime as ort

    from hieseg.engine.inferers import pad_spatial, padded_shape

    if spec["kind"] == "3d":
        batch = image[None]
        shape = padded_shape(batch.shape[2:], spec["divisible_by"])
    else:
        batch = np.moveaxis(image, 1, 0)
        shape = padded_shape(batch.shape[2:], spec["divisible_by"])
    batch, _ = pad_spatial(np.ascontiguousarray(batch, dtype=np.float32), shape)
    batch = np.ascontiguousarray(batch)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: batch})[0].astype(np.float64)
    x = torch.from_numpy(batch)
    with torch.no_grad():
        ref32 = torch.sigmoid(net(x)).numpy().astype(np.float64)
        exact = torch.sigmoid(copy.deepcopy(net).double()(x.double())).numpy()
    return {"ort_vs_float64": float(np.abs(got - exact).max()),
            "torch_float32_vs_float64": float(np.abs(ref32 - exact).max()),
            "ort_vs_torch_float32": float(np.abs(got - ref32).max())}


def parity(net: torch.nn.Module, onnx_path: Path, image: np.ndarray, spec: dict) -> float:
    """The gated figure: max |ORT - the network in float64| of probabilities on a real case."""
    return parity_errors(net, onnx_path, image, spec)["ort_vs_float64"]


def git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "dirty_training": bool(git("status", "--porcelain", "training"))}


def _previous_export(model_dir: Path) -> dict:
    """What the model folder's current manifest says of its networks (sha256, parity, checkpoints, training)."""
    path = model_dir / "manifest.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    prov = raw.get("provenance", {})
    return {"sha256": {m["file"]: m["sha256"] for m in raw.get("members", [])},
            # each network's recorded parity, under the key it was measured by (before the float64 reference:
            # torch float32), so a kept network never carries a figure under a reference it was not measured against
            "parity": {key: prov[key] for key in PARITY_KEYS if key in prov},
            "checkpoints": prov.get("torch_checkpoint_sha256", {}), "training": _trained_by(prov.get("training"))}


def _trained_by(training: dict | None) -> dict | None:
    """The record of the run that trained the networks: an export that only kept earlier networks points to its own
    ``previous_training``, so follow that chain instead of nesting one more level per re-export."""
    while training and training.get("previous_training") and all(
            isinstance(m.get("folds"), str) for m in (training.get("members") or {}).values()):
        training = training["previous_training"]
    return training


def export_all(study, tuning: dict, log=print) -> dict:
    """The shipped choice of ``tuning`` as ONNX networks (parity-checked against torch) and model/manifest.json."""
    from hieseg.engine.manifest import SCHEMA_VERSION, load_manifest, validate_manifest
    from hieseg.inputs.io import write_json

    folds = tuning["folds"]
    cfg = study.config
    if cfg.train_cases:
        raise TrainingError(f"{cfg.workdir}: trained on {cfg.train_cases} cases per fold (a data curve); never shipped")
    ship = cfg.ship_folds or ([folds[0]] if cfg.quick else None)
    if ship:
        missing = [k for k in ship if k not in folds]
        if missing:
            raise TrainingError(f"--ship-folds {missing}: not finished")
        folds = sorted(ship)
    from .model_card import DATA_PAPER, DEFAULT_INTENDED_USE, DEFAULT_LICENSE
    from .provenance import check_clean_tree

    tree = check_clean_tree(cfg.allow_dirty or cfg.quick)
    fusion = tuning["fusion"]
    model_dir: Path = cfg.model_dir
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_model_dir(model_dir)  # an earlier export that died mid-swap: put its old model back, drop its staging
    previous = _previous_export(model_dir)
    # the new model is written beside the old one and swapped in whole once it loads (training/publish.py)
    staged = staging_dir(model_dir)
    sources = study.pool_sources()
    members, checkpoints, reused, trained = [], {}, [], {}
    parities: dict[str, dict[str, float]] = {key: {} for key in PARITY_KEYS}
    for pool_name in fusion["members"]:
        name, label = pool_name.split("@", 1)
        spec, weight = study.members[name], fusion["weights"][pool_name]
        channels = study.channels(name)
        runs = []
        for k in folds:
            fname = f"{name}_f{k}.onnx"
            ckpt = sources[label] / name / f"fold{k}" / "final.pt"
            if ckpt.is_file():
                state = torch.load(ckpt, map_location="cpu", weights_only=False)
                trained_spec = state.get("spec", spec)
                runs.append({"fold": k, "iterations": trained_spec["iterations"], "batch": trained_spec["batch"],
                             "device": state.get("device", "cpu"), "amp": state.get("amp", False),
                             "channels_last": state.get("channels_last", False),
                             "hard_negative_fraction": trained_spec.get("hard_negative_fraction", 0.0),
                             "carvemix_fraction": trained_spec.get("carvemix_fraction", 0.0)})
                net = load_net(ckpt, spec["kind"], len(channels), spec["arch"])
                export_onnx(net, spec["kind"], len(channels), staged / fname)
                sample = study.samples(name, [study.folds[k][0]])[0]
                err = parity_errors(net, staged / fname, sample.image, spec)
                parities[PARITY_KEYS[0]][fname] = err["ort_vs_float64"]
                parities[PARITY_KEYS[1]][fname] = err["torch_float32_vs_float64"]
                checkpoints[fname] = file_digest(ckpt)
                log(f"  {fname}: parity max|ORT - torch float64| = {err['ort_vs_float64']:.2e} on {sample.case_id} "
                    f"({pool_name}; torch float32 is {err['torch_float32_vs_float64']:.2e} from float64, "
                    f"ORT {err['ort_vs_torch_float32']:.2e} from torch float32)")
                if err["ort_vs_float64"] > PARITY_TOL:
                    raise TrainingError(f"{fname}: ORT parity {err['ort_vs_float64']:.2e} with the network in "
                                        f"float64 exceeds {PARITY_TOL}")
            elif fname in previous["sha256"] and file_digest(model_dir / fname) == previous["sha256"][fname]:
                shutil.copy2(model_dir / fname, staged / fname)
                # checkpoint gone (e.g. a new machine): keep the network exported from it, bytes verified
                for key, recorded in previous["parity"].items():
                    if fname in recorded:
                        parities[key][fname] = recorded[fname]
                checkpoints[fname] = previous["checkpoints"].get(fname)
                reused.append(fname)
                log(f"  {fname}: no checkpoint; keeping the exported network (sha256 as in the manifest)")
            else:
                raise TrainingError(f"{fname}: neither the checkpoint {ckpt} nor a verified exported network")
            members.append({"name": f"{name}_f{k}", "file": fname, "sha256": file_digest(staged / fname),
                            **config.member_entry(spec, channels, fusion["tta_flips"][pool_name],
                                                  round(weight / len(folds), 6))})
        settings = sources[label] / "settings.json"
        trained[name] = {"source": pool_name, "workdir": tuning.get("sources", {}).get(label, label),
                         # the settings the source workdir was trained with (loss, intensity, sampling, precision)
                         "settings": json.loads(settings.read_text()) if settings.is_file() else None,
                         "folds": runs or "kept from the earlier export (see previous_training)",
                         **{k: v for k, v in spec.items() if k not in ("iterations", "batch")}}
    complete = len(tuning["folds"]) == tuning["n_folds_total"]
    n_cases = sum(len(study.folds[k]) for k in tuning["folds"])
    status = (f"final: all {tuning['n_folds_total']} folds cross-validated, fusion tuned on all {n_cases} "
              f"out-of-fold predictions; shipped networks of fold(s) {folds}" if complete else
              f"interim: fold(s) {tuning['folds']} only, fusion tuned and scored on their {n_cases} validation "
              f"cases; shipped networks of fold(s) {folds}")
    if cfg.quick:
        status = "quick (CI smoke run): a few iterations on 2 cases; not a real model"
    scores = tuning["scores"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": "hieseg-bonbid",
        "version": ("quick" if cfg.quick
                    else ("cv5" if complete else "interim-f" + "".join(map(str, tuning["folds"])))),
        "license": DEFAULT_LICENSE,
        "intended_use": DEFAULT_INTENDED_USE,
        "references": [DATA_PAPER],
        "preprocessing": {"crop_margin_mm": cfg.crop_margin_mm},
        "domain": training_domain(study.cases.values()),
        "members": members,
        "fusion": {"threshold": fusion["threshold"], "min_component_mm3": fusion["min_component_mm3"],
                   "empty_case": {"max_probability_below": fusion["empty_max_probability_below"],
                                  "min_lesion_mm3": fusion["empty_min_lesion_mm3"]},
                   **({"component_filter": fusion["component_filter"]} if fusion.get("component_filter") else {})},
        "provenance": rounded({
            "status": status,
            # networks kept from an earlier export keep the record of the run that trained them
            # every network kept from the earlier export: no run trained anything here, so the record of the run
            # that trained them stays as it is (this workdir's settings are not theirs)
            "training": previous["training"] if previous["training"] and len(reused) == len(members) else
            {**git_commit(), "command": cfg.command(), "loss": cfg.loss,
             "intensity": cfg.intensity, "torch": torch.__version__, "members": trained,
             "previous_training": previous["training"] if reused else None},
            "manifest_written": {**git_commit(), "tree": tree,
                                 "command": " ".join(["python -m training", *sys.argv[1:]]),
                                 "networks_kept_from_earlier_export": reused,
                                 "their_training_commit": ((previous["training"] or {}).get("commit")
                                                           if reused else None)},
            "data": {"tarball": TARBALL.name, "tarball_sha256": file_digest(TARBALL), "n_cases": len(study.cases),
                     "split": "training/splits.json" if not cfg.quick else "quick: 2 cases, 2 folds",
                     "folds_scored": tuning["folds"], "folds_shipped": folds, "n_cases_scored": n_cases},
            "cv_scores": {
                "note": "out-of-fold, challenge rules (MASD mean skips cases with an empty mask or truth). ensemble: "
                        "nested, every choice (members and weights, TTA, threshold, minimum component, component "
                        "filter) made among the pre-registered candidates of training/pool.json on the pool's "
                        "objective (rank3: mean rank over Dice, MASD and NSD) on the other folds before each fold "
                        "is scored -- the honest estimate (with a single fold, in-sample); margins_over_rule: "
                        "dDice, MASD ratio, dNSD of that figure over the Z-ADC < -2 rule on the same cases; "
                        "nested_by_objective: the same nesting with another objective (dice: mean Dice alone); "
                        "in_sample_optimistic: the shipped choice scored on the cases it was chosen on "
                        "(optimistic). OOF uses one fold network per case; the shipped model averages all folds' "
                        "networks",
                "ensemble": scores["nested"] or scores["in_sample"], "baseline_zadc_below_-2": scores["baseline"],
                "margins_over_rule": tuning.get("margins"),
                "nested_by_objective": {k: {"overall": v["overall"], "margins": v["margins"]}
                                        for k, v in (tuning.get("nested_by_objective") or {}).items()},
                "in_sample_optimistic": scores["in_sample"], "selection_rule": tuning.get("selection_rule"),
                "nested_choice_spread": tuning.get("nested_choice_spread"),
                "nested_by_member_set": tuning.get("nested_by_member_set")},
            "fusion_tuning": {"weights": fusion["weights"], "choice": fusion.get("label"),
                              "objective": fusion.get("objective"), "candidate_pool": tuning.get("candidate_pool"),
                              "n_cases": fusion["n_cases"]},
            **{key: values for key, values in parities.items() if values},  # PARITY_KEYS, measured as named
            "torch_checkpoint_sha256": checkpoints,
        }),
    }
    write_json(manifest, staged / "manifest.json")
    validate_manifest(json.loads((staged / "manifest.json").read_text()), staged / "manifest.json")  # as written
    m = load_manifest(staged)  # the schema and semantic checks and every member's sha256, before it is published
    publish_model_dir(staged, model_dir)
    if not cfg.quick:  # the tuning record the manifest's figures come from, written once the model is in place (verify)
        write_json(tuning, RECORD)
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    log(f"  manifest OK: {len(m.members)} members, {size / 2**20:.1f} MiB in {model_dir}")
    return manifest
