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


def _shapes(model, nodes) -> Dict[str, List[int]]:
    """Actual tensor shapes at batch 1, measured by running the graph once in onnxruntime.

    Static inference loses track of SAM's window partition reshapes; running
    the graph with the wanted tensors exposed as outputs gives every shape.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    wanted = [n for node in nodes for n in [*node.input, *node.output] if n and n not in shapes]
    existing = {o.name for o in model.graph.output}
    for name in dict.fromkeys(wanted):
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    feeds = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]  # batch 1
        feeds[value.name] = np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shapes.onnx"
        onnx.save_model(
            model, str(path), save_as_external_data=True, location="shapes.data", size_threshold=1024
        )
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for name, value in zip(names, session.run(None, feeds)):
            shapes[name] = list(np.shape(value))
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

    model = onnx.load(str(Path(path)))
    mac_nodes = [node for node in model.graph.node if node.op_type in MAC_OPS]
    operators = Counter(node.op_type for node in model.graph.node)
    initializers = {t.name: tuple(t.dims) for t in model.graph.initializer}
    parameters = sum(int(np.prod(dims, dtype=np.int64)) for dims in initializers.values())
    shapes = _shapes(model, mac_nodes)
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
