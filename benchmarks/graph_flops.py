"""Multiply-accumulates of an ONNX graph for one input shape, counted from the graph itself.

Conv, ConvTranspose, MatMul and Gemm dominate a convolutional network's arithmetic; their MACs follow from the
tensor shapes that shape inference gives for the actual input shape (the graph's spatial axes are dynamic).
Everything else (activations, normalisation, resizing, concatenation) is counted as zero: the figure is the
conventional "2 x MACs" FLOP count that a machine's GEMM peak is compared against.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence


def _shapes(model) -> dict[str, list[int]]:
    """name -> static shape for every tensor shape inference resolved (inputs, outputs, intermediates)."""
    shapes = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def count_macs(path: str | Path, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs per op type of the model at ``path`` for one input of ``input_shape`` (the first graph input)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in initialisers)
    dims = first.type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise ValueError(f"{path}: input has {len(dims)} axes, shape {tuple(input_shape)} has {len(input_shape)}")
    for d, n in zip(dims, input_shape):
        d.ClearField("dim_param")
        d.dim_value = int(n)
    # ONNX Runtime's symbolic inference follows shape arithmetic (MONAI's UpCat pads by Shape -> Slice -> Pad),
    # which onnx.shape_inference leaves unresolved.
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = SymbolicShapeInference.infer_shapes(model, auto_merge=False)
    shapes = _shapes(model)
    macs: dict[str, int] = {}
    for node in model.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        try:
            x, w, y = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        except KeyError as missing:
            raise ValueError(f"{path}: shape inference left {missing} of {op} node {node.name!r} unresolved") from None
        # Grouped convolutions need no special case: the weight's second axis is already Cin/group (Cout/group).
        if op == "Conv":  # every output element: Cin/group x kernel MACs; weight (Cout, Cin/group, *k)
            n = math.prod(y) * math.prod(w[1:])
        elif op == "ConvTranspose":  # each input element scatters into Cout/group x kernel; w (Cin, Cout/g, *k)
            n = math.prod(x) * math.prod(w[1:])
        elif op == "MatMul":
            n = math.prod(y) * x[-1]
        else:  # Gemm: (M, K) x (K, N), transA/transB move K
            k = x[0] if _attr(node, "transA", 0) else x[-1]
            n = math.prod(y) * k
        macs[op] = macs.get(op, 0) + int(n)
    return macs


def flops(path: str | Path, input_shape: Sequence[int]) -> int:
    """2 x MACs: floating-point operations of one forward pass."""
    return 2 * sum(count_macs(path, input_shape).values())
