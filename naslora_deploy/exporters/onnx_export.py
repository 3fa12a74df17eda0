"""PyTorch module -> checked ONNX file (external data past 2 GB), and fp32 -> fp16."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.io import atomic_write
from naslora_deploy.exporters.specs import TWO_GB

# Kept in float32 by the fp16 conversion: SAM's LayerNorms (nn.LayerNorm exports as
# LayerNormalization, LayerNorm2d as ReduceMean/Pow/Sqrt) overflow in fp16; softmax too.
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"]


def module_to_onnx(
    module: torch.nn.Module,
    example_inputs: Tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    opset: int = 17,
    external_threshold: int = TWO_GB,
    dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
) -> Path:
    """Export ``module`` to ``path`` (atomically), then check and shape-infer it.

    The batch axis (dim 0 of every input and output) is dynamic when asked;
    ``dynamic_axes`` (name -> {axis: name}) replaces that default where a graph
    has other dynamic axes (the prompt decoder's images, prompts and points).
    Models whose tensors exceed ``external_threshold`` bytes keep their weights
    in ``<name>.data`` beside the graph (ONNX protobufs stop at 2 GB). A module
    may declare inputs of its own after the caller's (``onnx_extra_inputs``: the
    prompt decoder's optional ``mask_input`` / ``has_mask_input``).
    """
    import onnx

    if dynamic_axes is None and dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    example_inputs, input_names, dynamic_axes = _with_extra_inputs(
        module, example_inputs, input_names, dynamic_axes
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # SAM's window padding and rel-pos sizes are Python ints at trace time: fixed for a fixed
            # image size, which is what the graph has (only the batch axis is dynamic).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module.eval(),
                example_inputs,
                str(raw),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(raw))
    with torch.no_grad():
        outputs = module(*example_inputs)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    for value, tensor in zip(model.graph.output, outputs):  # static output shapes, dynamic axes named
        named = (dynamic_axes or {}).get(value.name, {})
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in named:
                dim.dim_param = named[axis]
            else:
                dim.dim_value = int(tensor.shape[axis])
    return save_onnx(model, path, external_threshold)


def _with_extra_inputs(module, example_inputs, input_names, dynamic_axes):
    """The caller's inputs plus those ``module`` declares beyond them (``onnx_extra_inputs()``: names,
    example tensors, dynamic axes), e.g. the prompt decoder's ``mask_input`` / ``has_mask_input``."""
    declare = getattr(module, "onnx_extra_inputs", None)
    if declare is None:
        return tuple(example_inputs), list(input_names), dynamic_axes
    names, examples, axes = declare()
    if any(name in input_names for name in names):  # the caller named them: it gives their tensors too
        return tuple(example_inputs), list(input_names), dynamic_axes
    return (
        (*example_inputs, *examples),
        [*input_names, *names],
        None if dynamic_axes is None else {**dynamic_axes, **axes},
    )


def tensor_bytes(model) -> int:
    """Total bytes of the model's initializers."""
    import numpy as np
    from onnx import helper

    total = 0
    for tensor in model.graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total


def save_onnx(model, path: Path, external_threshold: int = TWO_GB) -> Path:
    """Save (external data when large), then run the full checker and shape inference."""
    import onnx

    path = Path(path)
    external = tensor_bytes(model) > external_threshold
    data_name = path.name + ".data"
    if external:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            onnx.save_model(
                model,
                str(Path(tmp) / path.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=0,
            )
            os.replace(
                Path(tmp) / data_name, path.parent / data_name
            )  # data first, then the graph that names it
            os.replace(Path(tmp) / path.name, path)
    else:
        atomic_write(path, lambda tmp: onnx.save_model(model, str(tmp)))
    check_onnx(path)
    return path


def check_onnx(path: Path) -> None:
    """Full ``onnx.checker`` and strict shape inference; a damaged file raises one clear line."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise NasloraError(f"{path} not found")
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", strict_mode=True)
    except Exception as exc:  # onnx raises several types (ValidationError, DecodeError, ...)
        raise NasloraError(
            f"{path}: not a valid ONNX model ({first_line(exc, 200)}); export it again"
        ) from None
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)


def onnx_to_fp16(src: Path, dst: Path, external_threshold: int = TWO_GB) -> Path:
    """fp16 weights and math, float32 inputs/outputs, LayerNorm and softmax kept in fp32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP32_OPS
    )
    del converted.graph.value_info[:]  # stale float32 annotations; shape inference redoes them
    return save_onnx(converted, dst, external_threshold)


def io_signature(path: Path) -> Dict[str, List[dict]]:
    """Names, element types and shapes (``batch`` for the dynamic axis) of inputs and outputs."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> List[dict]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append(
                {
                    "name": value.name,
                    "dtype": helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                    "shape": dims,
                }
            )
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
