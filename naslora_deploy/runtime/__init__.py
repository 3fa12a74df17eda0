"""Torch-free inference runtime: ``Segmenter`` over an exported artifact directory.

It runs on Jetsons and slim servers where PyTorch is absent. The backends it
owns (TensorRT, onnxruntime) import their libraries lazily; any other backend
(e.g. ``exporters.torch_backend``) is built by the caller and passed in. It may
import ``common`` only, and never torch, in any function: the import-rule test
guards both. ``SamPredictor`` is segment-anything's predictor interface on a ``Segmenter``.
"""

from naslora_deploy.runtime.predictor import SamPredictor
from naslora_deploy.runtime.segmenter import Segmentation, Segmenter

__all__ = ["Segmenter", "Segmentation", "SamPredictor"]
