"""The benchmark's FLOP counter against hand-derived MAC counts (conventional definitions: a convolution does
C_in/groups x prod(kernel) multiply-accumulates per output element, a transposed convolution C_out/groups x
prod(kernel) per input element, a matrix product K per output element)."""

from __future__ import annotations

import sys

import numpy as np
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(REPO / "benchmarks"))
from graph_flops import count_macs, flops  # noqa: E402


def test_conv_transposed_conv_grouped_conv_and_matmul(tmp_path):
    w = lambda name, *shape: numpy_helper.from_array(np.zeros(shape, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 6),                   # 2 -> 4, 3x3x3
             helper.make_node("ConvTranspose", ["a", "w2"], ["b"], strides=[2] * 3),       # 4 -> 3, 2x2x2
             helper.make_node("Conv", ["b", "w3"], ["c"], group=3),                        # 3 -> 6, 1x1x1, 3 groups
             helper.make_node("MatMul", ["c", "w4"], ["y"])]                               # (..., 16) x (16, 5)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "z", "y", "x"])
    graph = helper.make_graph(nodes, "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [w("w1", 4, 2, 3, 3, 3), w("w2", 4, 3, 2, 2, 2), w("w3", 6, 1, 1, 1, 1), w("w4", 16, 5)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    macs = count_macs(path, (1, 2, 8, 8, 8))
    conv1 = (4 * 8**3) * (2 * 27)
    deconv = (4 * 8**3) * (3 * 8)
    grouped = (6 * 16**3) * (1 * 1)
    matmul = (6 * 16 * 16 * 5) * 16
    assert macs == {"Conv": conv1 + grouped, "ConvTranspose": deconv, "MatMul": matmul}
    assert flops(path, (3, 2, 8, 8, 8)) == 3 * 2 * sum(macs.values())  # linear in the batch
