"""The PyTorch backend, built outside the runtime and handed to ``Segmenter``."""

import numpy as np
import pytest

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.exporters.fast_attention import sdpa_enabled_count
from naslora_deploy.exporters.torch_backend import TorchBackend, open_segmenter
from naslora_deploy.runtime import Segmenter


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_onnxruntime_and_torch_backends_agree_with_training_inference(
    binary_artifacts, binary_adapter, photo
):
    from naslora_deploy.core.runs.checkpoint import load_adapter
    from naslora_deploy.training.evaluate import predict_probabilities

    ort_seg = Segmenter.open(binary_artifacts, backend="onnxruntime")
    torch_seg = open_segmenter(binary_artifacts, backend="torch")
    assert ort_seg.backend_name == "onnxruntime (CPU)" and torch_seg.backend_name == "torch (cpu)"
    for session in ort_seg.backend.sessions.values():  # idle threads must not busy-wait between sessions
        assert (
            session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        )
    assert sdpa_enabled_count(torch_seg.backend.encoder) == len(torch_seg.backend.encoder.blocks)
    a, b = ort_seg.segment(photo), torch_seg.segment(photo)
    assert a.size == photo.shape[:2] and a.mask.shape == photo.shape[:2]
    assert np.abs(a.probability - b.probability).max() < 1e-4
    assert set(a.timings) == {"pre", "encoder", "decoder", "post"}
    # the dense-merged artifact against the unmerged trained model through the training-side inference path
    reference = predict_probabilities(load_adapter(binary_adapter), [photo], "cpu")[0]
    assert _iou(a.mask, reference > 0.5) > 0.9


def test_prompted_torch_equals_onnxruntime(binary_artifacts, photo):
    prompts = dict(points=[(60, 50, 1), (10, 10, 0)], box=(20, 20, 150, 120))
    ort_result = Segmenter.open(binary_artifacts, backend="onnxruntime").segment(photo, **prompts)
    torch_result = open_segmenter(binary_artifacts, backend="torch").segment(photo, **prompts)
    assert np.abs(ort_result.probability - torch_result.probability).max() < 1e-4


def test_any_model_can_be_handed_to_the_segmenter(binary_artifacts, binary_adapter, photo):
    """The unmerged trained model, through the runtime's processing, agrees with the dense artifact."""
    from naslora_deploy.core.runs.checkpoint import load_adapter
    from naslora_deploy.runtime.manifest import read_manifest

    backend = TorchBackend(load_adapter(binary_adapter), "cpu", label="unmerged")
    seg = Segmenter(binary_artifacts, read_manifest(binary_artifacts), backend)
    assert seg.backend_name == "torch (cpu, unmerged)"
    reference = Segmenter.open(binary_artifacts, backend="onnxruntime").segment(photo)
    assert _iou(seg.segment(photo).mask, reference.mask) > 0.9


def test_the_runtime_itself_does_not_offer_torch(binary_artifacts):
    with pytest.raises(NasloraError, match="unknown backend 'torch'"):
        Segmenter.open(binary_artifacts, backend="torch")
