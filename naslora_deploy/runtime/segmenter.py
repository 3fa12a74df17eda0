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
from inspect import signature
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from naslora_deploy.common import contract as names
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import (
    InputMapping,
    check_resizable,
    image_array,
    postprocess_probabilities,
    preprocess_image,
    read_image,
)
from naslora_deploy.runtime.backends import Backend, open_backend
from naslora_deploy.runtime.everything import CandidateCounts, EverythingSpec, generate_crop_masks
from naslora_deploy.runtime.manifest import Manifest, read_manifest
from naslora_deploy.runtime.prompts import MaskUpscaler, Prediction, mask_batch, prompt_batch
from naslora_deploy.runtime.results import ImageInput, Segmentation
from naslora_deploy.runtime.tiling import segment_tiled

IMAGE_FORMATS = ("RGB", "BGR")  # SamPredictor.set_image's channel orders


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

    def __init__(self, directory: Path, manifest: Manifest, backend: Backend) -> None:
        self.directory = directory
        self.manifest = manifest = Manifest.of(manifest, Path(directory) / names.MANIFEST_NAME)  # or its JSON
        self.backend = backend
        self.image_size = int(manifest.image_size)
        self.normalization = manifest.normalization
        self.classes = manifest.classes
        self.multiclass = manifest.multiclass
        self.point_slots = manifest.prompt_point_slots
        try:  # the run's --bands / --stretch, applied to every input as in training (None: plain reading)
            self.input_mapping = InputMapping.from_dict(manifest.input_mapping)
        except ValueError as exc:
            raise NasloraError(f"{directory}: the manifest's input_mapping is damaged ({exc})") from None
        self._input = np.zeros((1, 3, self.image_size, self.image_size), np.float32)  # reused batch buffer
        self._image: Optional[dict] = None  # set_image's embedding, size and upscaler

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

    def read(self, image: ImageInput) -> np.ndarray:
        """A path or an array as (H, W, 3) uint8, checked and converted (``load_image``), with the
        manifest's input mapping (the run's bands and stretch) applied as in training."""
        if self.input_mapping.identity:
            return load_image(image)
        if isinstance(image, (str, Path)):
            return read_image(image, self.input_mapping)
        return image_array(image, "the image array", self.input_mapping)

    def _load(self, image: ImageInput) -> np.ndarray:
        """``read``, and checked to resize to the model's input."""
        array = self.read(image)
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
        embeddings = self._encode(batch)
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
        outputs = self.backend.decode(self._encode(self._batch(arrays)))
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

    def segment_tiled(self, image: ImageInput, tile: int, overlap: int, batch: int = 4) -> Segmentation:
        """Segment an image larger than the model input window by window (``tile`` pixels square,
        neighbours sharing ``overlap``), logits blended in the overlaps (``runtime.tiling``)."""
        return segment_tiled(self, image, tile, overlap, batch)

    # -- the predictor: one embedding, many prompts (SamPredictor's shape) --

    def set_image(self, image: ImageInput, image_format: str = "RGB") -> None:
        """Compute and keep ``image``'s embedding for ``predict`` and ``generate`` (as SamPredictor's).

        ``image_format``: the channel order of an array, ``RGB`` or ``BGR`` (OpenCV's; flipped to RGB, as
        SamPredictor does); files are read as RGB whatever it says.
        """
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format {image_format!r} is unknown; give {' or '.join(IMAGE_FORMATS)}")
        if image_format == "BGR" and not isinstance(image, (str, Path)):
            image = np.asarray(image)
            if image.ndim == 3 and image.shape[-1] in (3, 4):  # BGRA keeps its alpha last
                image = np.concatenate([image[..., 2::-1], image[..., 3:]], axis=-1)
        self._set_array(self._load(image))

    def _set_array(self, array: np.ndarray) -> None:
        """``set_image`` for an image already read (``_load``)."""
        start = time.perf_counter()
        embeddings = self._encode(self._batch([array]))
        self._image = {
            "embeddings": embeddings,
            "size": array.shape[:2],
            "upscale": MaskUpscaler(self.image_size, array.shape[:2]),
            "encoder_ms": 1000.0 * (time.perf_counter() - start),
        }

    def reset_image(self) -> None:
        """Forget the image set by ``set_image``."""
        self._image = None

    @property
    def is_image_set(self) -> bool:
        """Whether ``set_image`` has an embedding ready for ``predict``."""
        return self._image is not None

    def _encode(self, batch: np.ndarray):
        if getattr(self.backend, "reuses_embeddings", False):
            self._image = None  # the backend's one embeddings buffer is about to be overwritten
        return self.backend.encode(batch)

    def _current_image(self) -> dict:
        if self.point_slots is None:
            raise NasloraError(f"{self.directory} has no prompt decoder; export it with --prompts")
        if self._image is None:
            raise NasloraError("no image is set: call set_image(image) before predict or generate")
        return self._image

    def decode_prompts(
        self, coords: np.ndarray, labels: np.ndarray, mask_input: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The set image's prompt decoder on K prompts: ``coords`` (K, T, 2), ``labels`` (K, T) in the
        model frame (``prompts.prompt_batch``), ``mask_input`` (1 or K, 1, h, w) earlier low-res logits
        or None -> every mask token's low-res logits (K, M, h, w) and IoU predictions (K, M), in chunks
        the backend takes."""
        embeddings = self._current_image()["embeddings"]
        chunk = int(getattr(self.backend, "max_prompts", 64))
        if mask_input is not None and "mask_input" not in signature(self.backend.prompt_decode).parameters:
            raise NasloraError(f"the {self.backend_name} backend takes no mask_input")
        low_res, iou = [], []
        for first in range(0, len(coords), chunk):
            part = slice(first, first + chunk)
            extra = {}
            if mask_input is not None:
                extra["mask_input"] = mask_input if len(mask_input) == 1 else mask_input[part]
            out = self.backend.prompt_decode(embeddings, coords[part], labels[part], **extra)
            low_res.append(out[names.LOW_RES_LOGITS])
            iou.append(out[names.IOU_PREDICTIONS])
        return np.concatenate(low_res), np.concatenate(iou)

    def predict(
        self,
        points=None,
        labels=None,
        boxes=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        mask_input=None,
    ) -> Prediction:
        """Masks for prompts on the image of ``set_image`` (SamPredictor's ``predict`` / ``predict_torch``;
        ``runtime.SamPredictor`` has its very arguments and tuple).

        ``points`` (N, 2) x, y pixels with ``labels`` (N,) 1 object / 0 background
        (default 1), and/or ``boxes`` (4,) x0, y0, x1, y1: one prompt, masks (C, H, W).
        ``points`` (K, N, 2) / ``labels`` (K, N) and/or ``boxes`` (K, 4): K prompts in
        one decoder call, masks (K, C, H, W). C = 3 with ``multimask_output`` (SAM's
        three masks), else 1. ``return_logits``: float32 logits instead of masks.
        ``mask_input``: an earlier prediction's low-res logits of one mask, (1, h, w)
        for one prompt, (1 or K, 1, h, w) for K (refinement; needs a prompt
        decoder exported with mask inputs). The ``Prediction`` unpacks as
        ``masks, scores, low_res_logits``.
        """
        image = self._current_image()
        start = time.perf_counter()
        coords, point_labels, batched = prompt_batch(points, labels, boxes, image["size"], self.image_size)
        masks_in = mask_batch(mask_input, len(coords), batched, self.image_size // 4)
        low_res, iou = self.decode_prompts(coords, point_labels, masks_in)
        t_dec = time.perf_counter()
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = low_res[:, chosen], iou[:, chosen]
        logits = image["upscale"](low_res)
        masks = logits if return_logits else logits > 0.0
        if not batched:
            masks, iou, low_res = masks[0], iou[0], low_res[0]
        timings = {"decoder": 1000 * (t_dec - start), "post": 1000 * (time.perf_counter() - t_dec)}
        return Prediction(masks, iou.astype(np.float32), low_res.astype(np.float32), timings)

    def generate(
        self,
        image: ImageInput,
        spec: Optional[EverythingSpec] = None,
        progress: Optional[bool] = False,
        counts: Optional[CandidateCounts] = None,
        **options,
    ) -> List[dict]:
        """Everything mode (SamAutomaticMaskGenerator's ``generate``): a point grid through the batched
        prompt decoder, filtered by predicted IoU and stability, box NMS, small-region removal; with
        ``crop_n_layers``, again on crops of the image, duplicates across crops removed by box NMS.

        ``spec`` or keyword ``options`` (``EverythingSpec`` fields: ``points_per_side=32``,
        ``pred_iou_thresh``, ``crop_n_layers``, ``point_grids``, ``output_mode="coco_rle"``...). Returns
        SAM's records, best first: ``segmentation`` ((H, W) bool or COCO RLE), ``area``, ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box`` (XYWH). ``progress``: a bar
        over the point batches (None: on a terminal; a log gets one line per crop); ``counts``: filled with
        how many candidates each filter removed (finding none warns with them). The predictor's image is
        the last crop's afterwards.
        """
        spec = spec or EverythingSpec(**options)
        if self.point_slots is None:
            raise NasloraError(f"{self.directory} has no prompt decoder; export it with --prompts")
        array = self._load(image)

        def embed_crop(crop_box) -> Tuple[Callable, Callable]:
            x0, y0, x1, y1 = crop_box
            crop = array[y0:y1, x0:x1]
            check_resizable(*crop.shape[:2], self.image_size, f"crop {list(crop_box)} of the image")
            self._set_array(crop)
            size = self._image["size"]

            def decode(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
                coords, labels, _ = prompt_batch(points[:, None, :], None, None, size, self.image_size)
                low_res, iou = self.decode_prompts(coords, labels)
                return low_res[:, 1:], iou[:, 1:]  # SAM's three multimask outputs

            return decode, self._image["upscale"]

        return generate_crop_masks(embed_crop, array.shape[:2], spec, progress, counts)

    def _segment_prompted(self, image: np.ndarray, points, box) -> Segmentation:
        """One-shot prompted segmentation: ``set_image`` + a single-mask ``predict``."""
        start = time.perf_counter()
        point_xy, point_labels = None, None
        if points:
            point_xy, point_labels = _point_list(points)
        self._set_array(image)
        prediction = self.predict(point_xy, point_labels, box, multimask_output=False, return_logits=True)
        logits = prediction.masks[0]
        prob = sigmoid(logits)
        result = Segmentation(
            image.shape[:2], logits > 0, prob.astype(np.float32), score=float(prediction.scores[0])
        )
        result.timings = {"encoder": self._image["encoder_ms"], **prediction.timings}
        result.timings["pre"] = 1000 * (time.perf_counter() - start) - sum(result.timings.values())
        return result


def _point_list(points: Sequence) -> Tuple[np.ndarray, np.ndarray]:
    """``segment``'s points, (x, y) or (x, y, label), as (N, 2) coordinates and (N,) labels."""
    coords, labels = [], []
    for i, point in enumerate(points):
        if len(point) not in (2, 3):
            raise ValueError(
                f"point {i} is {point!r}; give (x, y) or (x, y, label) with label 1 (object) "
                "or 0 (background)"
            )
        label = point[2] if len(point) == 3 else 1.0
        if label not in (0, 1):
            raise ValueError(f"point {i} has label {label!r}; labels are 1 (object) or 0 (background)")
        coords.append(point[:2])
        labels.append(float(label))
    return np.asarray(coords, np.float32), np.asarray(labels, np.float32)


def load_image(image: ImageInput) -> np.ndarray:
    """A path or an array as (H, W, 3) uint8 (gray, RGBA, 16-bit and float are converted).

    Anything else (an empty, NaN, wrongly shaped or non-numeric array; an unreadable
    file) is one ``ImageReadError`` line (a ``NasloraError``) naming the file or the array.
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    return image_array(image, "the image array")
