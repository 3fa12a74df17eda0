"""Everything mode and the predictor: ours (numpy + onnxruntime) against segment-anything's own.

On the real LiteMedSAM weights (or any variant, random weights) and scikit-image's
photographs: ``Segmenter.generate`` against ``SamAutomaticMaskGenerator.generate``
(PyTorch) on the same model, alternating, median seconds per image, and the share
of SAM's non-empty masks that ours matches (IoU >= 0.9); then the predictor path
(``set_image`` + one batched ``predict`` of N boxes) against SamPredictor's
(``set_image`` + ``predict_torch``).

    python benchmarks/bench_everything.py [--model litemedsam] [--points-per-side 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from naslora_deploy import build_sam
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.runtime import Segmenter
from naslora_deploy.training.data.photos import load_photos

try:
    from timing import alternate, median_ms, median_ratio, write_record
except ImportError:
    from benchmarks.timing import alternate, median_ms, median_ratio, write_record

PHOTOS = ("astronaut.png", "coffee.png")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def sam_with_normalisation(sam, image: np.ndarray) -> None:
    """MedSAM's min-max normalisation, given to SamPredictor as pixel mean / std (per image)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    if getattr(sam, "normalization", "imagenet") == "minmax":
        resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image).astype(np.float32)
        low, high = float(resized.min()), float(resized.max())
        sam.pixel_mean = torch.full((3, 1, 1), low)
        sam.pixel_std = torch.full((3, 1, 1), max(high - low, 1e-8))


def everything_rows(sam, seg, options: dict, repeats: int):
    from segment_anything import SamAutomaticMaskGenerator

    rows = []
    for name, image in zip(PHOTOS, load_photos(PHOTOS)):
        sam_with_normalisation(sam, image)
        generator = SamAutomaticMaskGenerator(sam, **options)
        found = {}

        def theirs():
            with torch.no_grad():
                found["sam"] = generator.generate(image)

        def ours():
            found["ours"] = seg.generate(image, **options)

        times = alternate({"sam": theirs, "ours": ours}, repeats, warmup=0)  # seconds per run: no warm-up
        wanted = [r for r in found["sam"] if r["area"] > 0]
        best = [
            max((mask_iou(r["segmentation"], o["segmentation"]) for o in found["ours"]), default=0.0)
            for r in wanted
        ]
        rows.append(
            {
                "photo": name,
                "size": list(image.shape[:2]),
                "sam_s": median_ms(times["sam"]) / 1000,
                "ours_s": median_ms(times["ours"]) / 1000,
                "ours_over_sam": median_ratio(times["ours"], times["sam"]),
                "sam_masks": len(found["sam"]),
                "ours_masks": len(found["ours"]),
                "non_empty_sam_masks": len(wanted),
                "matched_share": float(np.mean(np.array(best) >= 0.9)) if best else None,
            }
        )
        print(rows[-1])
    return rows


def predictor_rows(sam, seg, counts, repeats: int):
    from segment_anything import SamPredictor

    image = load_photos(("astronaut.png",))[0]
    sam_with_normalisation(sam, image)
    predictor = SamPredictor(sam)
    rng = np.random.default_rng(0)
    rows = []
    for count in counts:
        corners = np.sort(rng.uniform(0, min(image.shape[:2]) - 1, (count, 2, 2)), axis=1)
        boxes = corners.reshape(count, 4).astype(np.float32)
        tboxes = torch.as_tensor(predictor.transform.apply_boxes(boxes, image.shape[:2]))

        def theirs():
            with torch.no_grad():
                predictor.set_image(image)
                predictor.predict_torch(None, None, tboxes, multimask_output=False)

        def ours():
            seg.set_image(image)
            seg.predict(boxes=boxes, multimask_output=False)

        times = alternate({"sam": theirs, "ours": ours}, repeats, warmup=1)
        rows.append(
            {
                "prompts": count,
                "sam_ms": median_ms(times["sam"]),
                "ours_ms": median_ms(times["ours"]),
                "ours_over_sam": median_ratio(times["ours"], times["sam"]),
            }
        )
        print(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", default="1,16,64")
    parser.add_argument("--settings", default="sam_defaults,keep_all_scores")
    parser.add_argument("--keep-all-points-per-side", type=int, default=16)
    parser.add_argument("--tag", default="", help="suffix of the result file")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    sam = build_sam(args.model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(sam.state_dict(), Path(tmp) / "sam.pth")
        out, _ = export_artifacts(
            Path(tmp) / "sam.pth", Path(tmp) / "art", ExportSpec(prompts=True), variant=args.model
        )
        seg = Segmenter.open(out, backend="onnxruntime", device="cpu")
        settings = {
            "sam_defaults": dict(points_per_side=args.points_per_side),
            "keep_all_scores": dict(
                points_per_side=args.keep_all_points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0
            ),
        }
        settings = {k: v for k, v in settings.items() if k in args.settings.split(",")}
        everything = {
            label: everything_rows(sam, seg, options, args.repeats) for label, options in settings.items()
        }
        predictor = predictor_rows(sam, seg, [int(c) for c in args.prompts.split(",")], args.repeats)
    write_record(
        args.out / f"everything_{args.model}{args.tag}.json",
        [],
        {
            "model": args.model,
            "settings": settings,
            "everything": everything,
            "predictor": predictor,
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()
