"""``Segmenter``: torch-free segmentation with an exported artifact directory.

    seg = Segmenter.open("artifacts/", backend="auto")
    result = seg.segment("photo.jpg")                 # or an (H, W[, C]) uint8 array
    result = seg.segment(image, points=[(120, 80, 1)], box=(10, 20, 200, 220))

Pre- and post-processing are the training pipeline's own numpy + Pillow
functions (``naslora_deploy.common.imaging``): resize the longest side, normalise,
pad; then crop the padding and resize the masks back to the original size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from naslora_deploy.common import contract as names
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import (
    check_resizable,
    image_array,
    postprocess_probabilities,
    preprocess_image,
    read_image,
    resized_shape,
)
from naslora_deploy.runtime.backends import Backend, open_backend
from naslora_deploy.runtime.manifest import read_manifest

ImageInput = Union[str, Path, np.ndarray]


@dataclass
class Segmentation:
    """One image's result, at the image's original size."""

    size: Tuple[int, int]
    mask: np.ndarray  # (H, W) bool: foreground (binary) or any non-background class
    probability: np.ndarray  # (H, W) float32: foreground / winning-class probability
    class_map: Optional[np.ndarray] = None  # (H, W) uint8 class indices (multi-class)
    class_areas: Optional[Dict[str, int]] = None  # pixels per class name (multi-class)
    score: Optional[float] = None  # SAM's IoU prediction, for prompted results
    timings: Dict[str, float] = field(default_factory=dict)  # milliseconds

    @property
    def area(self) -> int:
        """Foreground pixels."""
        return int(self.mask.sum())


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def semantic_probabilities(mask_logits: np.ndarray, class_logits: np.ndarray) -> np.ndarray:
    """(B, K, H, W): class probabilities (no-object dropped) times mask probabilities, summed over queries."""
    shifted = class_logits - class_logits.max(-1, keepdims=True)
    class_prob = np.exp(shifted)
    class_prob = (class_prob / class_prob.sum(-1, keepdims=True))[..., :-1]
    return np.einsum("bqk,bqhw->bkhw", class_prob, sigmoid(mask_logits))


class Segmenter:
    """An artifact directory opened on one backend, with pre- and post-processing.

    ``Segmenter.open(dir)`` checks the manifest and picks a backend the runtime
    owns; ``Segmenter(dir, manifest, backend)`` takes any ``Backend`` built by the
    caller (e.g. ``exporters.torch_backend.TorchBackend``).
    """

    def __init__(self, directory: Path, manifest: dict, backend: Backend) -> None:
        self.directory = directory
        self.manifest = manifest
        self.backend = backend
        self.image_size = int(manifest["image_size"])
        self.normalization = manifest.get("normalization", "imagenet")  # older manifests: SAM's
        self.classes = manifest.get("classes") or {"num_classes": 1}
        self.multiclass = manifest["head"] == "multiclass"
        self.point_slots = manifest.get("prompt_point_slots")
        self._input = np.zeros((1, 3, self.image_size, self.image_size), np.float32)  # reused batch buffer

    @classmethod
    def open(cls, artifact_dir, backend: str = "auto", device: Optional[str] = None) -> "Segmenter":
        """Check the manifest (sha256 of every file), then open ``backend``: ``auto``, ``tensorrt``
        or ``onnxruntime`` (``backend_name`` says which ``auto`` took). ``device``: ``cpu``,
        ``cuda``, or ``auto``/None for the best available."""
        directory = Path(artifact_dir)
        manifest = read_manifest(directory)
        device = None if device == "auto" else device
        return cls(directory, manifest, open_backend(directory, manifest, backend, device))

    @property
    def backend_name(self) -> str:
        """Which backend (and execution provider) runs the model."""
        return self.backend.name

    def _load(self, image: ImageInput) -> np.ndarray:
        """A path or an array, checked and converted (``load_image``), that resizes to the model's input."""
        array = load_image(image)
        source = image if isinstance(image, (str, Path)) else "the image array"
        check_resizable(*array.shape[:2], self.image_size, source)
        return array

    def _batch(self, images: List[np.ndarray]) -> np.ndarray:
        if self._input.shape[0] != len(images):
            self._input = np.zeros((len(images), 3, self.image_size, self.image_size), np.float32)
        for i, image in enumerate(images):
            self._input[i] = preprocess_image(image, self.image_size, self.normalization)
        return self._input

    def segment(
        self, image: ImageInput, points: Optional[Sequence] = None, box: Optional[Sequence[float]] = None
    ) -> Segmentation:
        """Segment one image; with ``points`` ((x, y, label), or (x, y) = positive) or ``box``, prompted."""
        if points is not None or box is not None:
            return self._segment_prompted(self._load(image), points, box)
        return self.segment_batch([image])[0]

    def segment_batch(self, images: Sequence[ImageInput]) -> List[Segmentation]:
        """Segment several images in one encoder / decoder pass (prompt-free)."""
        start = time.perf_counter()
        if len(images) == 0:
            raise NasloraError("segment_batch got no images; give at least one path or array")
        arrays = [self._load(image) for image in images]
        batch = self._batch(arrays)
        t_pre = time.perf_counter()
        embeddings = self.backend.encode(batch)
        t_enc = time.perf_counter()
        outputs = self.backend.decode(embeddings)
        t_dec = time.perf_counter()
        results = [self._postprocess(outputs, i, array.shape[:2]) for i, array in enumerate(arrays)]
        t_post = time.perf_counter()
        timings = {
            "pre": t_pre - start,
            "encoder": t_enc - t_pre,
            "decoder": t_dec - t_enc,
            "post": t_post - t_dec,
        }
        for result in results:  # batch timings, shared by its images
            result.timings = {k: 1000.0 * v for k, v in timings.items()}
        return results

    def dense_maps(self, images: Sequence[ImageInput]) -> List[np.ndarray]:
        """Prompt-free maps at each image's original size, from one encoder / decoder pass.

        Binary: (H, W) float32 foreground logits; multi-class: (K, H, W) float32
        class probabilities (``semantic_probabilities``). What tiling blends.
        """
        if len(images) == 0:
            raise NasloraError("dense_maps got no images; give at least one path or array")
        arrays = [self._load(image) for image in images]
        outputs = self.backend.decode(self.backend.encode(self._batch(arrays)))
        maps = []
        for i, array in enumerate(arrays):
            logits = outputs[names.MASK_LOGITS][i : i + 1]
            if self.multiclass:
                dense = semantic_probabilities(logits, outputs[names.CLASS_LOGITS][i : i + 1])[0]
            else:
                dense = logits[0, 0]
            maps.append(postprocess_probabilities(dense, array.shape[:2], self.image_size).astype(np.float32))
        return maps

    def _postprocess(self, outputs: Dict[str, np.ndarray], index: int, size: Tuple[int, int]) -> Segmentation:
        logits = outputs[names.MASK_LOGITS][index : index + 1]
        if not self.multiclass:
            prob = postprocess_probabilities(sigmoid(logits[0, 0]), size, self.image_size)
            return Segmentation(size, prob > 0.5, prob.astype(np.float32))
        semantic = semantic_probabilities(logits, outputs[names.CLASS_LOGITS][index : index + 1])[0]
        prob = postprocess_probabilities(semantic, size, self.image_size)
        class_map = prob.argmax(0).astype(np.uint8)
        class_names = self.classes.get("names") or [str(i) for i in range(prob.shape[0])]
        areas = {name: int((class_map == k).sum()) for k, name in enumerate(class_names)}
        return Segmentation(size, class_map != 0, prob.max(0).astype(np.float32), class_map, areas)

    def prompt_arrays(
        self, size: Tuple[int, int], points: Optional[Sequence], box: Optional[Sequence[float]]
    ):
        """Fill the fixed prompt slots: points, then a box (labels 2, 3) or padding (-1), model frame."""
        if self.point_slots is None:
            raise NasloraError(f"{self.directory} has no prompt decoder; export it with --prompts")
        height, width = size
        new_h, new_w = resized_shape(height, width, self.image_size)
        scale = np.array([new_w / width, new_h / height], np.float32)
        coords = np.zeros((1, self.point_slots, 2), np.float32)
        labels = np.full((1, self.point_slots), -1.0, np.float32)
        points = [] if points is None else list(points)
        if len(points) > self.point_slots - 2:
            raise ValueError(
                f"{len(points)} points, but the prompt decoder has {self.point_slots - 2} point slots; "
                "export with a larger --point-slots"
            )
        for i, point in enumerate(points):
            if len(point) not in (2, 3):
                raise ValueError(
                    f"point {i} is {point!r}; give (x, y) or (x, y, label) with label 1 (object) or 0 "
                    "(background)"
                )
            label = float(point[2]) if len(point) == 3 else 1.0
            if label not in (0.0, 1.0):
                raise ValueError(f"point {i} has label {point[2]!r}; labels are 1 (object) or 0 (background)")
            coords[0, i] = np.asarray(point[:2], np.float32) * scale
            labels[0, i] = label
        if box is not None:
            if len(box) != 4 or not (box[0] <= box[2] and box[1] <= box[3]):
                raise ValueError(f"box {box!r} must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
            coords[0, -2] = np.asarray(box[:2], np.float32) * scale
            coords[0, -1] = np.asarray(box[2:], np.float32) * scale
            labels[0, -2:] = (2.0, 3.0)
        return coords, labels

    def _segment_prompted(self, image: np.ndarray, points, box) -> Segmentation:
        start = time.perf_counter()
        coords, labels = self.prompt_arrays(image.shape[:2], points, box)
        batch = self._batch([image])
        t_pre = time.perf_counter()
        embeddings = self.backend.encode(batch)
        t_enc = time.perf_counter()
        outputs = self.backend.prompt_decode(embeddings, coords, labels)
        t_dec = time.perf_counter()
        prob = postprocess_probabilities(
            sigmoid(outputs[names.MASK_LOGITS][0, 0]), image.shape[:2], self.image_size
        )
        result = Segmentation(
            image.shape[:2],
            prob > 0.5,
            prob.astype(np.float32),
            score=float(outputs[names.IOU_PREDICTIONS][0, 0]),
        )
        t_post = time.perf_counter()
        result.timings = {
            "pre": 1000 * (t_pre - start),
            "encoder": 1000 * (t_enc - t_pre),
            "decoder": 1000 * (t_dec - t_enc),
            "post": 1000 * (t_post - t_dec),
        }
        return result


def load_image(image: ImageInput) -> np.ndarray:
    """A path or an array as (H, W, 3) uint8 (gray, RGBA, 16-bit and float are converted).

    Anything else (an empty, NaN, wrongly shaped or non-numeric array; an unreadable
    file) is one ``ImageReadError`` line (a ``NasloraError``) naming the file or the array.
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    return image_array(image, "the image array")
