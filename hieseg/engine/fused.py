"""Members that can share one session: the folds of a network, fused inside one ONNX graph.

Under OpenVINO every session keeps its own intermediate buffers at the size of the largest input it has seen
(ONNX Runtime's CPU provider shares one arena between sessions) and prepares each new input shape itself. One
graph that runs the folds side by side and returns their weighted mean lets OpenVINO plan one set of buffers for
all of them and prepare each shape once per network instead of once per fold (docs/benchmark.md: peak RSS with
and without). The folds' arithmetic is unchanged; only the weighted sum moves from numpy into the graph, which is
exact up to float32 rounding because cropping, resampling, flips and blending are linear.

Building the graph needs the ``onnx`` package (part of ``hieseg[openvino]``); without it each member keeps its
own session.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Sequence

from hieseg.engine.manifest import Member

log = logging.getLogger(__name__)


def share_key(member: Member) -> str:
    """Members with the same key see the same input and the same tiling and flips, so one graph can run them."""
    return json.dumps([member.kind, member.channels, member.target_spacing_zyx, member.patch_size,
                       member.divisible_by, member.batch_size, member.tta_flips], sort_keys=True)


def group_members(members: Sequence[Member]) -> list[list[Member]]:
    """Members grouped by ``share_key``, groups and members in manifest order."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(share_key(member), []).append(member)
    return list(groups.values())


def group_member(group: Sequence[Member]) -> Member:
    """The member that stands for a group in the ensemble: its folds' names joined, their weights summed."""
    if len(group) == 1:
        return group[0]
    return dataclasses.replace(group[0], name="+".join(m.name for m in group),
                               weight=sum(m.weight for m in group))


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    except Exception as exc:  # e.g. SystemError from its extension modules under a tight RLIMIT_DATA
        log.warning("the onnx package failed to load (%s): one session per member", exc)
        return False
    return True


def fused_graph(models: Sequence[bytes], weights: Sequence[float]) -> bytes:
    """One ONNX model that feeds its single input to every model and returns sum_i (w_i / sum w) * output_i.

    The models must have one input and one output each, and the same opset (folds of one export do).
    """
    import numpy as np
    import onnx
    from onnx import compose, helper, numpy_helper

    loaded = [onnx.load_from_string(data) for data in models]
    first = loaded[0]
    for model in loaded:
        if len(model.graph.input) - len(model.graph.initializer) > 1 or len(model.graph.output) != 1:
            raise ValueError("fused_graph: every model needs exactly one input and one output")
        if list(model.opset_import) != list(first.opset_import):
            raise ValueError("fused_graph: the models were exported with different opsets")
    graph_input = first.graph.input[0]
    total = float(sum(weights))
    nodes, initialisers, scaled = [], [], []
    for i, (model, weight) in enumerate(zip(loaded, weights)):
        model = compose.add_prefix(model, f"fold{i}/")
        graph = model.graph
        own_input = graph.input[0].name
        for node in graph.node:
            node.input[:] = [graph_input.name if name == own_input else name for name in node.input]
        nodes.extend(graph.node)
        initialisers.extend(graph.initializer)
        scale = f"fold{i}/fusion_weight"
        initialisers.append(numpy_helper.from_array(np.array(weight / total, dtype=np.float32), scale))
        nodes.append(helper.make_node("Mul", [graph.output[0].name, scale], [f"fold{i}/weighted"]))
        scaled.append(f"fold{i}/weighted")
    output = helper.make_tensor_value_info("probability", onnx.TensorProto.FLOAT, None)
    nodes.append(helper.make_node("Sum", scaled, [output.name]))
    graph = helper.make_graph(nodes, "folds_fused", [graph_input], [output], initialisers)
    fused = helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version,
                              producer_name="hieseg.engine.fused")
    return fused.SerializeToString()
