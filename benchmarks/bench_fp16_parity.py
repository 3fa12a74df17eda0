"""How far fp16 ONNX artifacts are from fp32 PyTorch: the measurement behind ``verify``'s fp16 criteria.

Each model is exported at fp16 (LayerNorm, reductions and softmax kept in fp32, as every
fp16 export is) and checked by ``verify_parity`` on real photographs (scikit-image's bundled
files composited as in ``training.data.photos``, the test split of one seed): relative and
max absolute error of the embeddings, of the decoders' outputs on PyTorch's embeddings, and
the IoU of end-to-end masks (logits > 0) against fp32 PyTorch's.

Models: LiteMedSAM on its real bundled weights, plain and after a short NAS-PC-LoRA run on
the photographs (fused and dense-merged, so the adapters' own weights go through fp16);
vit_tiny (random weights, the tests' model) and, with ``--models ... vit_b``, vit_b at
1024 px (random weights: its figures say how the real architecture behaves in fp16, not
real SAM). The printed criteria are the worst real-weight figure with a fourfold margin:
relative errors times 4 rounded up to one significant digit; the IoU floor
1 - 4 x (1 - worst IoU), rounded down to two decimals.

    python benchmarks/bench_fp16_parity.py
    python benchmarks/bench_fp16_parity.py --models litemedsam vit_tiny vit_b --images 4
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.core.model.variants import VARIANTS, build_sam
from naslora_deploy.exporters.criteria import FP16_MARGIN as MARGIN
from naslora_deploy.exporters.export import export_artifacts
from naslora_deploy.exporters.specs import ExportSpec
from naslora_deploy.exporters.verify import verify_parity
from naslora_deploy.training.config import TrainConfig
from naslora_deploy.training.data.photos import write_photo_dataset
from naslora_deploy.training.trainer import train

try:
    from timing import write_record
except ImportError:
    from benchmarks.timing import write_record


def sources(models: List[str], root: Path, data: Path, steps: int) -> Dict[str, tuple]:
    """name -> (export source, variant or None, merge mode, calibration folder or None)."""
    found: Dict[str, tuple] = {}
    for model in models:
        if model == "litemedsam":
            found["litemedsam plain"] = (VARIANTS["litemedsam"].pretrained_checkpoint(), model, "dense", None)
            config = TrainConfig(
                data=str(data),
                out=str(root / "run"),
                model=model,
                method="nas_pc_lora",
                epochs=2,
                search_start=1,
                batch_size=2,
                max_steps=steps,
                prompt="none",  # verify checks the prompt-free decoder
                progress=False,
            )
            run = train(config) / "last"
            found["litemedsam nas_pc_lora fused"] = (run, None, "fused", None)
            found["litemedsam nas_pc_lora dense"] = (run, None, "dense", str(data / "train" / "images"))
        else:  # random weights, saved so the export (and verify's rebuild) read them from a file
            torch.manual_seed(0)
            path = root / f"{model}_random.pth"
            torch.save(build_sam(model, pretrained=False).state_dict(), path)
            found[f"{model} random"] = (path, model, "dense", None)
    return found


def measure(name: str, source, variant, merge: str, calibration, images: Path, count: int, root: Path):
    """One model's fp16 rows, as verify reports them."""
    spec = ExportSpec(precision="fp16", merge=MergeSpec(mode=merge, calibration=calibration))
    started = time.perf_counter()
    out, _ = export_artifacts(source, root / name.replace(" ", "_"), spec, variant=variant)
    report = verify_parity(out, images, count=count)
    rows = []
    for row in report.rows:
        rows.append(
            {
                "model": name,
                "output": row.output,
                "backend": row.backend,
                "rel": row.rel,
                "max_abs": row.max_abs,
                "mean_abs": row.mean_abs,
                "mask_iou": row.mask_iou,
            }
        )
        iou = f"{row.mask_iou:.5f}" if row.mask_iou is not None else "-"
        print(f"{name:<32} {row.output:<40} rel {row.rel:.2e}  max {row.max_abs:.2e}  IoU {iou}")
    print(f"  ({time.perf_counter() - started:.0f} s)")
    return rows


def round_up(value: float) -> float:
    """``value`` rounded up to one significant digit (0.02001 -> 0.03, 0.0099 -> 0.01)."""
    decade = 10.0 ** math.floor(math.log10(value))
    return float(f"{math.ceil(value / decade * (1 - 1e-9)) * decade:.1g}")


def criteria(rows: List[dict]) -> dict:
    """The fp16 pass criteria the real-weight rows support, with ``MARGIN``."""
    real = [r for r in rows if "random" not in r["model"]]

    def worst_rel(kind: str) -> float:
        return max(r["rel"] for r in real if kind(r["output"]))

    embeddings = worst_rel(lambda o: o == "image_embeddings")
    decoder = worst_rel(lambda o: o.endswith("(torch embeddings)"))
    worst_iou = min(r["mask_iou"] for r in real if r["output"].endswith("(end to end)"))
    return {
        "worst": {"embeddings_rel": embeddings, "decoder_rel": decoder, "end_to_end_mask_iou": worst_iou},
        "criteria": {
            "embeddings_max_rel": round_up(MARGIN * embeddings),
            "decoder_max_rel": round_up(MARGIN * decoder),
            "end_to_end_min_mask_iou": math.floor(100 * (1 - MARGIN * (1 - worst_iou))) / 100,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["litemedsam", "vit_tiny"])
    parser.add_argument("--images", type=int, default=4, help="test photographs per model")
    parser.add_argument("--steps", type=int, default=12, help="training steps of the NAS-PC-LoRA run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fp16_parity.json"))
    args = parser.parse_args()
    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_photo_dataset(root / "data", count=8, seed=0, val=2, test=args.images)
        images = data / "test" / "images"
        for name, (source, variant, merge, calibration) in sources(
            args.models, root, data, args.steps
        ).items():
            rows += measure(name, source, variant, merge, calibration, images, args.images, root)
    derived = criteria(rows)
    print(f"worst real-weight figures: {derived['worst']}")
    print(f"fp16 criteria (x{MARGIN:g} margin): {derived['criteria']}")
    write_record(args.out, rows, {"args": vars(args) | {"out": str(args.out)}, "margin": MARGIN, **derived})


if __name__ == "__main__":
    main()
