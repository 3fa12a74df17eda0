"""``SamPredictor``: segment-anything's predictor, method for method, on an exported artifact.

    predictor = SamPredictor.open("artifacts/")          # or SamPredictor(Segmenter.open(...))
    predictor.set_image(image)                            # (H, W, 3) uint8, RGB (or image_format="BGR")
    masks, scores, low_res_logits = predictor.predict(point_coords=..., point_labels=..., box=...)
    masks, scores, _ = predictor.predict(point_coords=..., point_labels=..., mask_input=low_res_logits[:1])

Code written for ``segment_anything.SamPredictor`` runs unchanged: the same
arguments, the same (masks, scores, low-res logits) as numpy arrays of the same
shapes and dtypes. Torch-free: ``Segmenter`` does the work (``Segmenter.predict``
is the same predictor with a dataclass answer and batched prompts).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import resized_shape
from naslora_deploy.runtime.segmenter import Segmenter


class SamPredictor:
    """``segment_anything.SamPredictor``'s interface over a ``Segmenter`` (with a prompt decoder)."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    @classmethod
    def open(cls, artifact_dir, backend: str = "auto", device: Optional[str] = None) -> "SamPredictor":
        """``Segmenter.open`` (the manifest checked, a backend chosen), as a predictor."""
        return cls(Segmenter.open(artifact_dir, backend, device))

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute ``image``'s embedding: (H, W, 3) uint8 (or a path), channels ``RGB`` or ``BGR``."""
        self.segmenter.set_image(image, image_format)

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt on the set image, as ``SamPredictor.predict``.

        ``point_coords`` (N, 2) x, y pixels with ``point_labels`` (N,) 1 object /
        0 background; ``box`` (4,) x0, y0, x1, y1; ``mask_input`` (1, h, w) low-res
        logits of an earlier prediction (h = w = 256 for 1024-pixel models).
        Returns masks (C, H, W) bool (float32 logits with ``return_logits``), scores
        (C,) float32 predicted IoU and low-res logits (C, h, w) float32; C = 3 with
        ``multimask_output``, else 1.
        """
        if box is not None:
            box = np.asarray(box)
            box = box.reshape(4) if box.size == 4 else box  # SamPredictor takes (4,) or (1, 4)
        prediction = self.segmenter.predict(
            point_coords,
            point_labels,
            box,
            multimask_output=multimask_output,
            return_logits=return_logits,
            mask_input=mask_input,
        )
        return prediction.masks, prediction.scores, prediction.low_res_logits

    def get_image_embedding(self) -> np.ndarray:
        """The set image's embedding, (1, C, h, w) float32 (a copy from the GPU where it lives there)."""
        embeddings = self.segmenter._current_image()["embeddings"]
        if isinstance(embeddings, np.ndarray):
            return embeddings
        if hasattr(embeddings, "numpy"):  # an onnxruntime OrtValue on the GPU
            return np.asarray(embeddings.numpy())
        raise NasloraError(
            f"the {self.segmenter.backend_name} backend keeps the embedding on the GPU where it cannot be "
            "read back; open the artifacts with backend='onnxruntime' to read it"
        )

    def reset_image(self) -> None:
        """Forget the set image."""
        self.segmenter.reset_image()

    @property
    def is_image_set(self) -> bool:
        """Whether an image is set."""
        return self.segmenter.is_image_set

    @property
    def original_size(self) -> Optional[Tuple[int, int]]:
        """(H, W) of the set image (None without one)."""
        image = self.segmenter._image
        return None if image is None else tuple(int(v) for v in image["size"])

    @property
    def input_size(self) -> Optional[Tuple[int, int]]:
        """(h, w) of the set image resized to the model input, before padding (None without one)."""
        size = self.original_size
        return None if size is None else resized_shape(*size, self.segmenter.image_size)
