"""Tiny ONNX ensembles whose outputs are known in closed form, for testing the runtime without trained weights.

toy3d: p = sigmoid(K * (0.4 - c1)) with c1 = (Z + 10) / 20, i.e. p > 0.5 exactly where Z-ADC < -2.
toy2d: p = sigmoid(K * (c2 - 0.5)) with c2 the Z-ADC < -2 prior channel.
So the fused mask is the classic Z-ADC < -2 baseline, up to the 2D member's resampling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hieseg.files import file_digest

ADC01 = {"source": "adc", "transform": {"type": "clip_scale", "low": 0, "high": 3400}}
ZADC01 = {"source": "zadc", "transform": {"type": "clip_scale", "low": -10, "high": 10}}
PRIOR = {"source": "zadc", "transform": {"type": "below", "threshold": -2}}


def channel_sigmoid_model(ndim: int, channel: int, offset: float, gain: float) -> onnx.ModelProto:
    """(N, C, *spatial) -> sigmoid(gain * (x[:, channel] - offset)) of shape (N, 1, *spatial)."""
    dims = ["N", "C"] + [f"s{i}" for i in range(ndim)]
    out_dims = ["N", 1] + [f"s{i}" for i in range(ndim)]
    inits = [numpy_helper.from_array(np.array([channel], np.int64), "start"),
             numpy_helper.from_array(np.array([channel + 1], np.int64), "end"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(np.array(offset, np.float32), "offset"),
             numpy_helper.from_array(np.array(gain, np.float32), "gain")]
    nodes = [helper.make_node("Slice", ["input", "start", "end", "axis"], ["sliced"]),
             helper.make_node("Sub", ["sliced", "offset"], ["centred"]),
             helper.make_node("Mul", ["centred", "gain"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probability"])]
    graph = helper.make_graph(nodes, f"toy{ndim}d",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT, out_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_toy_model(folder: Path, members: str = "3d+2d", fusion: dict[str, Any] | None = None,
                    patch_3d: tuple[int, int, int] = (16, 64, 64)) -> Path:
    """A model folder with manifest.json and the toy members."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    if "3d" in members:
        onnx.save(channel_sigmoid_model(3, 1, 0.4, -200.0), folder / "toy3d.onnx")
        entries.append({"name": "toy3d", "file": "toy3d.onnx", "kind": "3d", "channels": [ADC01, ZADC01],
                        "target_spacing_zyx": [None, None, None], "patch_size": list(patch_3d),
                        "divisible_by": [4, 8, 8], "batch_size": 2, "tta_flips": [[], [2]], "weight": 1.0})
    if "2d" in members:
        onnx.save(channel_sigmoid_model(2, 2, 0.5, 40.0), folder / "toy2d.onnx")
        entries.append({"name": "toy2d", "file": "toy2d.onnx", "kind": "2d", "channels": [ADC01, ZADC01, PRIOR],
                        "target_spacing_zyx": [None, 1.0, 1.0], "patch_size": [256, 256],
                        "divisible_by": [16, 16], "batch_size": 8, "tta_flips": [[]], "weight": 1.0})
    for entry in entries:
        entry["sha256"] = file_digest(folder / entry["file"])
    manifest = {"schema_version": 1, "name": "toy", "version": "test", "preprocessing": {"crop_margin_mm": 8.0},
                "members": entries,
                "fusion": fusion or {"threshold": 0.5, "min_component_mm3": 0.0},
                "provenance": {"note": "closed-form toy networks for tests; not a trained model"}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder
