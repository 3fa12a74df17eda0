"""What an ONNX graph is made of: operator multiset, initializers and multiply-adds.

The zero-overhead proof compares these for a dense-merged artifact and the
artifact exported from plain ``build_sam(variant)``: equal operator counts,
equal initializer names and shapes, equal MACs mean the merge added nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

MAC_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum")


@dataclass
class GraphSignature:
    """The structure of one ONNX graph (batch fixed to 1 for the MAC count)."""

    operators: Dict[str, int]
    initializers: Dict[str, Tuple[int, ...]]
    parameters: int
    macs: int
    uncounted: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (initializers summarised by count)."""
        return {
            "operators": dict(sorted(self.operators.items())),
            "nodes": sum(self.operators.values()),
            "initializers": len(self.initializers),
            "parameters": self.parameters,
            "gmacs": self.macs / 1e9,
            "uncounted": self.uncounted,
        }


def _batch_one(model) -> None:
    """Fix every dynamic input dimension of ``model`` to 1 (the MAC count is per image)."""
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1


def _inferred_shapes(model) -> Dict[str, List[int]]:
    """Static shapes from ONNX shape inference with data propagation; unresolved tensors left out."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    graph = inferred.graph
    for value in [*graph.value_info, *graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(dim.HasField("dim_value") for dim in dims):
            shapes[value.name] = [dim.dim_value for dim in dims]
    return shapes


def _measured_shapes(path: Path, names: List[str]) -> Dict[str, List[int]]:
    """Shapes of ``names`` at batch 1, measured by running the graph once in onnxruntime."""
    import tempfile

    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    _batch_one(model)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    feeds = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = [dim.dim_value for dim in tensor.shape.dim]
        feeds[value.name] = np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shapes.onnx"
        onnx.save_model(
            model, str(path), save_as_external_data=True, location="shapes.data", size_threshold=1024
        )
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return {name: list(np.shape(value)) for name, value in zip(names, session.run(names, feeds))}


def _shapes(path: Path, model, nodes) -> Dict[str, List[int]]:
    """Tensor shapes at batch 1 of every input and output of ``nodes``.

    Shape inference resolves most graphs without running them (and without
    holding every activation or even the weights in memory); whatever it
    cannot resolve, such as a reshape it loses track of, is measured by
    running the graph once.
    """
    _batch_one(model)
    shapes = _inferred_shapes(model)
    missing = [n for node in nodes for n in [*node.input, *node.output] if n and n not in shapes]
    if missing:
        shapes.update(_measured_shapes(path, list(dict.fromkeys(missing))))
    return shapes


def _node_macs(node, shapes: Dict[str, List[int]]):
    from onnx import helper

    try:
        if node.op_type == "MatMul":
            a = shapes[node.input[0]]
            out = shapes[node.output[0]]
            return int(np.prod(out, dtype=np.int64)) * a[-1]
        if node.op_type == "Gemm":
            out = shapes[node.output[0]]
            a = shapes[node.input[0]]
            trans_a = next((helper.get_attribute_value(x) for x in node.attribute if x.name == "transA"), 0)
            return int(np.prod(out, dtype=np.int64)) * (a[0] if trans_a else a[-1])
        if node.op_type in ("Conv", "ConvTranspose"):
            weight, out = shapes[node.input[1]], shapes[node.output[0]]
            spatial = int(np.prod(weight[2:], dtype=np.int64))
            if node.op_type == "Conv":
                return int(np.prod(out, dtype=np.int64)) * weight[1] * spatial
            inp = shapes[node.input[0]]
            return int(np.prod(inp, dtype=np.int64)) * weight[1] * spatial
        if node.op_type == "Einsum":
            equation = next(
                helper.get_attribute_value(x) for x in node.attribute if x.name == "equation"
            ).decode()
            sizes = {}
            for term, name in zip(equation.split("->")[0].split(","), node.input):
                for letter, size in zip(term.strip(), shapes[name]):
                    sizes[letter] = size
            return int(np.prod(list(sizes.values()), dtype=np.int64))
    except (KeyError, IndexError, StopIteration):
        return None
    return 0


def graph_signature(path) -> GraphSignature:
    """Operators, initializers, parameter count and MACs (batch 1) of an ONNX file."""
    import onnx

    model = onnx.load(str(Path(path)), load_external_data=False)  # structure only, not the weights
    mac_nodes = [node for node in model.graph.node if node.op_type in MAC_OPS]
    operators = Counter(node.op_type for node in model.graph.node)
    initializers = {t.name: tuple(t.dims) for t in model.graph.initializer}
    parameters = sum(int(np.prod(dims, dtype=np.int64)) for dims in initializers.values())
    shapes = _shapes(Path(path), model, mac_nodes)
    macs, uncounted = 0, []
    for node in mac_nodes:
        count = _node_macs(node, shapes)
        if count is None:
            uncounted.append(node.name or node.op_type)
        else:
            macs += count
    return GraphSignature(dict(operators), initializers, parameters, macs, uncounted)


def compare_signatures(candidate: GraphSignature, reference: GraphSignature) -> dict:
    """How ``candidate`` differs from ``reference``: extra nodes, parameters and MACs."""
    extra_ops = Counter(candidate.operators)
    extra_ops.subtract(reference.operators)
    differing_inits = sorted(
        set(candidate.initializers.items()) ^ set(reference.initializers.items()), key=lambda item: item[0]
    )
    return {
        "identical_operators": candidate.operators == reference.operators,
        "identical_initializers": candidate.initializers == reference.initializers,
        "identical_macs": candidate.macs == reference.macs,
        "extra_nodes": {op: n for op, n in sorted(extra_ops.items()) if n},
        "extra_parameters": candidate.parameters - reference.parameters,
        "extra_gmacs": (candidate.macs - reference.macs) / 1e9,
        "extra_macs_percent": 100.0 * (candidate.macs - reference.macs) / reference.macs
        if reference.macs
        else 0.0,
        "differing_initializers": [name for name, _ in differing_inits[:10]],
        "candidate": candidate.to_dict(),
        "reference": reference.to_dict(),
    }
