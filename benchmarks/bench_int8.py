"""INT8 against fp32 ONNX on onnxruntime CPU: encoder and end-to-end latency, and mask agreement.

Per model: the fp32 graphs from ``export_graphs`` (encoder, prompt-free decoder, box-prompted
decoder), the encoder quantized by ``exporters.quantize.onnx_to_int8`` (MatMul/Gemm, the
export's default) and, for comparison, with its convolutions too; the prompt-free decoder
quantized on the fp32 encoder's embeddings (to decide whether decoders are worth it).
Calibration: preprocessed real photographs (scikit-image's bundled files, composited as in
``training.data.photos``, one seed); the masks are compared on held-out composites of
another seed: box-prompted (the blob's box) and prompt-free, logits > 0, IoU per image
against the fp32 graphs' masks. Latency: batch 1, contenders alternating run by run,
medians and the median of per-round ratios (``timing``).

LiteMedSAM runs on its real bundled weights; vit_b (1024 px) has random weights, so its
IoU says little about real SAM, only its latency does.

    python benchmarks/bench_int8.py                         # litemedsam and vit_b
    python benchmarks/bench_int8.py --models litemedsam --repeats 20
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from naslora_deploy.common import contract as names
from naslora_deploy.common.imaging import preprocess_image
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.exporters.export import export_graphs
from naslora_deploy.exporters.quantize import onnx_to_int8
from naslora_deploy.exporters.specs import ExportSpec
from naslora_deploy.runtime.backends import ort_session
from naslora_deploy.training.data.photos import load_photos, photo_sample

try:
    from timing import alternate, median_ms, median_ratio, write_record
except ImportError:
    from benchmarks.timing import alternate, median_ms, median_ratio, write_record

TARGET_SPEEDUP, TARGET_IOU = 1.5, 0.97


def photographs(count: int, seed: int, size: int, normalization: str):
    """``count`` composites: (preprocessed inputs (N, 3, S, S), boxes in the input frame (N, 4))."""
    rng, photos = np.random.default_rng(seed), load_photos()
    images, boxes = [], []
    for _ in range(count):
        image, mask = photo_sample(rng, photos)
        ys, xs = np.nonzero(mask)
        scale = size / max(mask.shape)
        images.append(preprocess_image(image, size, normalization))
        boxes.append([xs.min() * scale, ys.min() * scale, xs.max() * scale, ys.max() * scale])
    return np.stack(images).astype(np.float32), np.asarray(boxes, np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class Graphs:
    """onnxruntime CPU sessions of one model's graphs, by name."""

    def __init__(self, paths: Dict[str, Path]) -> None:
        self.sessions = {name: ort_session(path, "CPUExecutionProvider") for name, path in paths.items()}

    def embed(self, encoder: str, image: np.ndarray) -> np.ndarray:
        """Image embeddings of one (1, 3, S, S) input."""
        return self.sessions[encoder].run(None, {names.IMAGE: image})[0]

    def free_mask(self, decoder: str, embeddings: np.ndarray) -> np.ndarray:
        """Prompt-free mask (logits > 0) at S x S."""
        return (
            self.sessions[decoder].run([names.MASK_LOGITS], {names.IMAGE_EMBEDDINGS: embeddings})[0][0, 0] > 0
        )

    def box_mask(self, embeddings: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Box-prompted single-mask output (low-res logits > 0); one padding point, then the box."""
        coords = np.concatenate([np.zeros((1, 2)), box.reshape(2, 2)])[None].astype(np.float32)
        labels = np.array([[-1, 2, 3]], np.float32)
        session = self.sessions["prompt"]
        feed = dict(zip([i.name for i in session.get_inputs()], (embeddings, coords, labels)))
        return session.run(None, feed)[0][0, 0] > 0


def agreement(graphs: Graphs, encoders: List[str], images, boxes) -> Dict[str, dict]:
    """Per encoder: mask IoU against fp32's (box-prompted and prompt-free), and the int8 decoder's."""
    scores = {name: {"box": [], "free": []} for name in encoders}
    scores["int8 decoder"] = {"free": []}
    for image, box in zip(images, boxes):
        reference = graphs.embed("fp32", image[None])
        box_ref, free_ref = graphs.box_mask(reference, box), graphs.free_mask("decoder", reference)
        for name in encoders:
            embeddings = reference if name == "fp32" else graphs.embed(name, image[None])
            scores[name]["box"].append(iou(graphs.box_mask(embeddings, box), box_ref))
            scores[name]["free"].append(iou(graphs.free_mask("decoder", embeddings), free_ref))
        scores["int8 decoder"]["free"].append(iou(graphs.free_mask("decoder int8", reference), free_ref))
    return {
        name: {
            f"{kind}_iou_{f}": fn(v) for kind, v in s.items() for f, fn in (("mean", np.mean), ("min", min))
        }
        for name, s in scores.items()
    }


def quantized_graphs(model, root: Path, calibration: np.ndarray, with_conv: bool) -> Dict[str, Path]:
    """fp32 graphs, the int8 encoder(s) and the int8 prompt-free decoder."""
    files = export_graphs(model, ExportSpec(prompts=True, point_slots=1), root)
    encoder, decoder = files[names.IMAGE_ENCODER], files[names.MASK_DECODER]
    feeds = [{names.IMAGE: image[None]} for image in calibration]
    paths = {"fp32": encoder, "decoder": decoder, "prompt": files[names.PROMPT_DECODER]}
    paths["int8"] = onnx_to_int8(encoder, root / "encoder_int8.onnx", feeds)
    if with_conv:
        paths["int8 +conv"] = onnx_to_int8(
            encoder, root / "encoder_int8_conv.onnx", feeds, op_types=("Conv", "MatMul", "Gemm")
        )
    fp32 = ort_session(encoder, "CPUExecutionProvider")
    embedded = [{names.IMAGE_EMBEDDINGS: fp32.run(None, feed)[0]} for feed in feeds]
    paths["decoder int8"] = onnx_to_int8(decoder, root / "decoder_int8.onnx", embedded)
    return paths


def timings(graphs: Graphs, encoders: List[str], image: np.ndarray, repeats: int) -> Dict[str, dict]:
    """Encoder, end-to-end (encoder + prompt-free decoder) and decoder latencies, alternating.

    Keys ``"kind|name"``; each speedup is the median of per-round ratios to ``"kind|fp32"``.
    """
    embeddings = graphs.embed("fp32", image)
    contenders = {}
    for n in encoders:
        contenders[f"encoder|{n}"] = lambda n=n: graphs.embed(n, image)
        contenders[f"end to end|{n}"] = lambda n=n: graphs.free_mask("decoder", graphs.embed(n, image))
    contenders["decoder|fp32"] = lambda: graphs.free_mask("decoder", embeddings)
    contenders["decoder|int8"] = lambda: graphs.free_mask("decoder int8", embeddings)
    times = alternate(contenders, repeats, warmup=1)
    return {
        key: {
            "median_ms": median_ms(samples),
            "speedup": median_ratio(times[key.split("|")[0] + "|fp32"], samples),
        }
        for key, samples in times.items()
    }


def run_model(variant: str, args, root: Path) -> List[dict]:
    """Every row for one model."""
    torch.manual_seed(0)
    model = SegmentationModel(build_sam(variant)).eval()
    size, normalization = model.image_size, model.normalization
    calibration, _ = photographs(args.calibration, 0, size, normalization)
    test, boxes = photographs(args.test, 1, size, normalization)
    with_conv = variant == "litemedsam"
    graphs = Graphs(quantized_graphs(model, root / variant, calibration, with_conv))
    encoders = ["fp32", "int8"] + (["int8 +conv"] if with_conv else [])
    masks = agreement(graphs, encoders, test, boxes)
    repeats = args.repeats if size <= 256 else args.repeats_1024
    speed = timings(graphs, encoders, test[:1], repeats)
    rows = []
    for name in encoders:
        rows.append(
            {
                "model": variant,
                "graph": f"encoder {name}",
                **speed[f"encoder|{name}"],
                "end_to_end_ms": speed[f"end to end|{name}"]["median_ms"],
                "end_to_end_speedup": speed[f"end to end|{name}"]["speedup"],
                **masks[name],
                "repeats": repeats,
            }
        )
    for name in ("fp32", "int8"):
        extra = masks["int8 decoder"] if name == "int8" else {}
        row = {"model": variant, "graph": f"prompt-free decoder {name}", **speed[f"decoder|{name}"], **extra}
        rows.append({**row, "repeats": repeats})
    return rows


def show(rows: List[dict]) -> None:
    """Print the table."""
    print(
        f"{'model':<11} {'graph':<26} {'ms':>8} {'speedup':>8} {'e2e ms':>8} {'e2e x':>6} "
        f"{'box IoU mean/min':>17} {'free IoU mean/min':>18}"
    )
    for r in rows:

        def pair(kind):
            return (
                f"{r[kind + '_iou_mean']:.4f}/{r[kind + '_iou_min']:.4f}" if kind + "_iou_mean" in r else "-"
            )

        e2e = (
            f"{r['end_to_end_ms']:>8.1f} {r['end_to_end_speedup']:>6.2f}"
            if "end_to_end_ms" in r
            else f"{'-':>8} {'-':>6}"
        )
        print(
            f"{r['model']:<11} {r['graph']:<26} {r['median_ms']:>8.1f} {r['speedup']:>8.2f} {e2e} "
            f"{pair('box'):>17} {pair('free'):>18}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="litemedsam,vit_b")
    parser.add_argument("--calibration", type=int, default=8, help="calibration photographs")
    parser.add_argument("--test", type=int, default=8, help="held-out photographs the masks are compared on")
    parser.add_argument("--repeats", type=int, default=20, help="alternating rounds at 256 px")
    parser.add_argument("--repeats-1024", type=int, default=5, help="alternating rounds for vit_b (1024 px)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_cpu.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.models.split(","):
            rows += run_model(variant, args, Path(tmp))
            show(rows)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    write_record(
        args.out, rows, {"settings": settings, "targets": {"speedup": TARGET_SPEEDUP, "mask_iou": TARGET_IOU}}
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
