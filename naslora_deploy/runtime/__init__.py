"""Torch-free inference runtime.

Nothing under this package may import torch at import time: it runs on Jetsons
and slim servers where PyTorch is absent (only the optional ``torch`` backend
imports it, when asked for).
"""

from naslora_deploy.runtime.segmenter import Segmentation, Segmenter

__all__ = ["Segmenter", "Segmentation"]
