"""The PyTorch backend: the model artifacts came from, run behind the runtime's ``Backend`` protocol.

It lives here, not in the torch-free runtime: it needs torch and the export
wrappers, and it is handed a model instead of building one (as Polygraphy's
runners are). ``Segmenter(directory, manifest, TorchBackend(model))`` runs any
``SegmentationModel``; ``open_segmenter(dir, "torch")`` rebuilds the model an
artifact directory was exported from (its source must still exist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from naslora_deploy.common import contract as names
from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.core.runs.checkpoint import source_sha256
from naslora_deploy.exporters.export import ExportSpec, rebuild_source
from naslora_deploy.exporters.fast_attention import use_sdpa
from naslora_deploy.exporters.wrappers import MaskDecoderGraph, PromptDecoderGraph
from naslora_deploy.runtime import Segmenter
from naslora_deploy.runtime.manifest import read_manifest


class TorchBackend:
    """A ``SegmentationModel`` (merged, fused or unmerged) through the export wrappers, SDPA attention."""

    def __init__(self, model, device: Optional[str] = None, label: str = "") -> None:
        auto = device in (None, "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if auto else device)
        model = model.to(self.device).eval()
        self.encoder = model.sam.image_encoder
        if hasattr(self.encoder, "blocks"):  # SAM ViT: SDPA equals its attention to ~2e-6, and is faster
            use_sdpa(self.encoder)
        self.decoder = MaskDecoderGraph(model).to(self.device)
        self.prompter = PromptDecoderGraph(model.sam).to(self.device)
        self.outputs = names.decoder_outputs(model.class_head is not None)
        self.name = f"torch ({self.device.type}{', ' + label if label else ''})"
        self.on_gpu = self.device.type == "cuda"

    @classmethod
    def for_artifacts(cls, manifest: dict, device: Optional[str] = None, directory=None) -> "TorchBackend":
        """The PyTorch model an artifact directory was exported from, rebuilt and merged the same way
        (after checking that its source is the one exported: ``rebuild_verified``)."""
        return cls(rebuild_verified(manifest, directory).model, device)

    def encode(self, images: np.ndarray):
        with torch.no_grad():
            return self.encoder(torch.from_numpy(images).to(self.device))

    def decode(self, embeddings) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            return {n: t.float().cpu().numpy() for n, t in zip(self.outputs, self.decoder(embeddings))}

    def prompt_decode(
        self, embeddings, coords: np.ndarray, labels: np.ndarray, mask_input=None
    ) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            masks = () if mask_input is None else (torch.from_numpy(mask_input).to(self.device),)
            outs = self.prompter(
                embeddings,
                torch.from_numpy(coords).to(self.device),
                torch.from_numpy(labels).to(self.device),
                *masks,
            )
        return {n: o.float().cpu().numpy() for n, o in zip(names.PROMPT_OUTPUTS, outs)}


def check_source_unchanged(manifest: dict, directory=None) -> None:
    """The export source must still have the sha256 recorded at export (else it rebuilds another model)."""

    where = directory or "these artifacts"
    described = manifest.source
    path = Path(described["path"])
    if not path.exists():
        raise NasloraError(
            f"the export source {path} of {where} is gone; the PyTorch model cannot be rebuilt without it"
        )
    recorded = described.get("sha256")
    if recorded is None:
        raise NasloraError(
            f"{where} record no sha256 of their export source {path}, so the rebuilt PyTorch model cannot "
            "be checked against it; re-export the artifacts"
        )
    found = source_sha256(path)
    if found != recorded:
        raise NasloraError(
            f"the export source {path} changed since {where} were exported (sha256 {found[:12]}..., "
            f"recorded {recorded[:12]}...); re-export the artifacts from it"
        )


def rebuild_verified(manifest: dict, directory=None, progress: Optional[bool] = False):
    """``rebuild_source`` after ``check_source_unchanged``; the model must take the manifest's image size.
    ``progress``: the rebuild's merge, per block (``common.progress``)."""

    try:
        ExportSpec.from_manifest(manifest)
    except (TypeError, ValueError) as exc:
        raise NasloraError(
            f"the 'export' section of {Path(directory or '.') / names.MANIFEST_NAME} is damaged "
            f"({first_line(exc)}); "
            "export the artifacts again"
        ) from None
    check_source_unchanged(manifest, directory)
    source = rebuild_source(manifest, progress=progress)
    if source.model.image_size != manifest.image_size:
        raise NasloraError(
            f"{directory or 'the manifest'} says image_size {manifest.image_size}, but its source model "
            f"takes {source.model.image_size} (the manifest was changed); re-export the artifacts"
        )
    return source


def open_segmenter(artifact_dir, backend: str = "auto", device: Optional[str] = None) -> Segmenter:
    """``Segmenter.open`` for the runtime's own backends, plus ``torch`` (built here and handed in)."""
    if backend != "torch":
        return Segmenter.open(artifact_dir, backend, device)
    directory = Path(artifact_dir)
    manifest = read_manifest(directory)
    return Segmenter(directory, manifest, TorchBackend.for_artifacts(manifest, device, directory))
