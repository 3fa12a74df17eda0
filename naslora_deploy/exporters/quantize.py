"""fp32 ONNX graph -> INT8 graph, statically quantized (QDQ) on activations from your own images.

``onnx_to_int8`` runs onnxruntime's pre-processing (``quant_pre_process``) and
``quantize_static`` with QuantizeLinear/DequantizeLinear pairs: int8 weights per
output channel, int8 activations per tensor from MinMax ranges over the
calibration batches, both symmetric (zero point 0, as TensorRT requires), biases
left in float (TensorRT's parser refuses an int32 DequantizeLinear), Q/DQ on the
quantized nodes' inputs only (their outputs stay float: faster on onnxruntime's
CPU, and TensorRT's recommended placement). The same graph runs
on onnxruntime and builds a TensorRT engine with explicit quantization.

Only the weight-bearing nodes are quantized: MatMul and Gemm whose weight is a
constant. LayerNorm, Softmax and the activation-by-activation MatMuls of
attention (vit_b's global attention scores are 12 x 4096 x 4096 per image) stay
in float. Convolutions are left in float by default: on LiteMedSAM (TinyViT's
convolution stages) int8 convolutions moved the box-prompted masks to a mean IoU
of 0.75 (min 0.17) against fp32, and without an int32 bias onnxruntime's CPU runs
them as float convolutions behind a dequantize: the encoder was 1.16x faster than
fp32 with them, 1.46x without (benchmarks/RESULTS.md, Issue 14: INT8).
``op_types`` can ask for them.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.exporters.onnx_export import io_signature, save_onnx
from naslora_deploy.exporters.specs import TWO_GB

QUANTIZED_OPS = ("MatMul", "Gemm")
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")  # the op types that carry a weight onnx_to_int8 can quantize

try:
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
except ImportError:  # pragma: no cover - onnxruntime is a dependency; keep the import error for the call
    CalibrationDataReader = MinMaxCalibrater = object


class BatchReader(CalibrationDataReader):
    """Hands onnxruntime's calibrator one feed (input name -> array) at a time, and counts them."""

    def __init__(self, batches: Iterable[Dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)
        self.count = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        """The next feed, or None when the batches are used up."""
        feed = next(self._batches, None)
        if feed is None:
            return None
        self.count += 1
        return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in feed.items()}


class NodeInputCalibrater(MinMaxCalibrater):
    """ORT's MinMax calibrater measuring only ``wanted``: the node list's activation inputs.

    ``quantize_static`` calibrates every input and output of every node of the
    quantized op types, the attention scores and probabilities included: on vit_b
    at 1024 px that went past 17 GB before it was stopped; these inputs alone
    peak at 3.8 GB (plain inference: 2.5 GB). The outputs need no range: they
    are not quantized (the graph comes out the same with them calibrated too).
    """

    wanted: frozenset = frozenset()

    def select_tensors_to_calibrate(self, model):
        """The parent's choice, cut to ``wanted``."""
        tensors, value_infos = super().select_tensors_to_calibrate(model)
        return tensors & self.wanted, value_infos


def weight_nodes(model, op_types: Sequence[str] = QUANTIZED_OPS) -> List[str]:
    """Names of the ``op_types`` nodes whose weight (second input) is a constant initializer."""
    constants = {tensor.name for tensor in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in constants
    ]


def _pre_process(src: Path, out: Path, large: bool) -> Path:
    """ORT's recommended pre-processing (basic fusions, shape inference); the source where it fails.

    ONNX's shape inference, not ORT's symbolic one: the graphs are static but for the batch
    axis, and the symbolic one gives up on SAM's encoders, dumping the model into the
    working directory as it does.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(
            str(src),
            str(out),
            skip_symbolic_shape=True,
            save_as_external_data=large,
            all_tensors_to_one_file=True,
        )
    except Exception:  # onnxruntime raises bare Exceptions here
        return src  # quantize the graph as exported
    return out


def _calibrate(prepared: Path, nodes: List[str], reader, tmp: Path, large: bool) -> Optional[Path]:
    """The node list's activation ranges in an ORT calibration cache, or None where ORT takes none."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return None  # onnxruntime before calibration caches: quantize_static calibrates (more memory)
    import onnx

    model = onnx.load(str(prepared), load_external_data=False)
    calibrater = NodeInputCalibrater(
        prepared, augmented_model_path=str(tmp / "augmented.onnx"), use_external_data_format=large
    )
    chosen = [node for node in model.graph.node if node.name in set(nodes)]
    calibrater.wanted = frozenset(node.input[0] for node in chosen)
    calibrater.augment_graph()
    calibrater.create_inference_session()
    calibrater.collect_data(reader)
    if not reader.count:
        raise NasloraError("no calibration images were given: INT8 needs at least one")
    save_tensors_data(calibrater.compute_data(), tmp / "ranges.json")
    return tmp / "ranges.json"


def onnx_to_int8(
    src,
    dst,
    calibration_batches: Iterable[Dict[str, np.ndarray]],
    op_types: Sequence[str] = QUANTIZED_OPS,
    per_channel: bool = True,
    external_threshold: int = TWO_GB,
) -> Path:
    """Quantize the fp32 graph ``src`` to an INT8 QDQ graph at ``dst`` (may be ``src``); returns ``dst``.

    ``calibration_batches``: feeds (input name -> float32 array) the activation
    ranges are measured on, e.g. one preprocessed image each. Temporary files stay
    in a temporary directory; ``dst`` is written atomically by ``save_onnx``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = Path(src), Path(dst)
    unknown = sorted(set(op_types) - set(WEIGHT_OPS))
    if unknown:
        raise ValueError(f"onnx_to_int8 quantizes {', '.join(WEIGHT_OPS)} nodes, not {', '.join(unknown)}")
    signature = io_signature(src)
    large = Path(str(src) + ".data").is_file()
    reader = BatchReader(calibration_batches)
    with tempfile.TemporaryDirectory(prefix="naslora-int8-") as tmp:
        prepared = _pre_process(src, Path(tmp) / "prepared.onnx", large)
        nodes = weight_nodes(onnx.load(str(prepared), load_external_data=False), op_types)
        if not nodes:
            kinds = "/".join(op_types)
            raise NasloraError(f"{src.name} has no {kinds} node with a constant weight to quantize")
        try:
            cache = _calibrate(prepared, nodes, reader, Path(tmp), large)
            quantize_static(
                str(prepared),
                str(Path(tmp) / "int8.onnx"),
                None if cache else reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                use_external_data_format=large,
                calibrate_method=CalibrationMethod.MinMax,  # histograms hold every tensor: out of memory
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "OpTypesToExcludeOutputQuantization": list(op_types),  # Q/DQ on inputs only
                },
                **({"calibration_cache_path": str(cache)} if cache else {}),
            )
        except (ValueError, RuntimeError) as exc:
            raise NasloraError(f"quantizing {src.name} failed: {first_line(exc, 200)}") from None
        if reader.count == 0:
            raise NasloraError(f"no calibration images reached {src.name}: INT8 needs at least one")
        quantized = onnx.load(str(Path(tmp) / "int8.onnx"))
    _restore_io(quantized, signature)
    return save_onnx(quantized, dst, external_threshold)


def _restore_io(model, signature: Dict[str, List[dict]]) -> None:
    """Give inputs and outputs the exported shapes again (``batch`` axis name included)."""
    values = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    for described in [*signature["inputs"], *signature["outputs"]]:
        value = values.get(described["name"])
        if value is None:
            raise NasloraError(f"quantization lost the graph's {described['name']!r}")
        for dim, size in zip(value.type.tensor_type.shape.dim, described["shape"]):
            if isinstance(size, str):
                dim.dim_param = size
            elif size:
                dim.dim_value = int(size)
