"""``naslora-deploy demo``: synthetic data -> train vit_tiny (NAS-PC-LoRA) -> evaluate -> merge both ways."""

from __future__ import annotations

import time
from pathlib import Path

from naslora_deploy.core.calibration import calibration_images
from naslora_deploy.core.checkpoint import load_adapter, write_merged
from naslora_deploy.training.config import DemoConfig, TrainConfig
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.data.synthetic import write_synthetic_dataset
from naslora_deploy.training.evaluate import evaluate
from naslora_deploy.training.trainer import train


def run_demo(config: DemoConfig) -> Path:
    """Run the whole demo, printing what it measured and wrote; returns the run directory."""
    started = time.perf_counter()
    out = Path(config.out)
    data = write_synthetic_dataset(out / "data", count=config.images, seed=config.seed)
    print(f"synthetic data set: {data} ({config.images} training images)")
    run = train(
        TrainConfig(
            data=str(data),
            out=str(out / "run"),
            model="vit_tiny",
            method="nas_pc_lora",
            epochs=config.epochs,
            search_start=config.search_start,
            lr=config.lr,
            seed=config.seed,
            progress=config.progress,
        )
    )
    model = load_adapter(run)
    test = discover(data, check=False).split("test")
    metrics = evaluate(model, test, model.spec.classes)
    print(
        f"test set ({len(test)} images): IoU {metrics['iou']:.4f}, Dice {metrics['dice']:.4f}, BER "
        f"{metrics['ber']:.2f} %"
    )
    calibration = calibration_images(data, 8, model.spec.image_size, model.spec.normalization)
    written = []
    for mode in ("fused", "dense"):
        merged, report, paths = write_merged(
            model,
            mode,
            out / "merged" / f"sam_vit_tiny_{mode}.pth",
            calibration,
            source=str(run),
            progress=config.progress,
        )
        written += paths
        merged_metrics = evaluate(merged, test, model.spec.classes)
        print()
        print(report.summary())
        print(
            f"  test IoU after the {mode} merge: {merged_metrics['iou']:.4f} (unmerged {metrics['iou']:.4f})"
        )
    print(f"\nrun directory (best/, last/, metrics.jsonl): {run}")
    for path in written:
        print(f"wrote {path}")
    print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return run
