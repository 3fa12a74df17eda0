"""``naslora-deploy demo``: real LiteMedSAM weights on real photographs, the methods side by side.

A seeded data set is cut from the photographs in scikit-image's wheel (one
texture in a random shape on another). Zero-shot LiteMedSAM, then the decoder
only, LoRA and NAS-PC-LoRA fine-tuned the same number of steps (box prompts,
as MedSAM is trained), then NAS-PC-LoRA after the fused and the dense merge,
are all evaluated box-prompted on the same held-out images. The table is
printed and written to ``summary.md`` with one overlay picture per row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from naslora_deploy.common.imaging import overlay, read_image, save_png
from naslora_deploy.common.io import atomic_write_text
from naslora_deploy.core.calibration import calibration_images
from naslora_deploy.core.checkpoint import load_adapter, write_merged
from naslora_deploy.core.classes import ClassSpec
from naslora_deploy.core.heads import SegmentationModel
from naslora_deploy.core.variants import build_sam
from naslora_deploy.training.config import DemoConfig, TrainConfig
from naslora_deploy.training.data.dataset import load_labels
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.data.photos import write_photo_dataset
from naslora_deploy.training.evaluate import evaluate, predict_probabilities
from naslora_deploy.training.prompts import component_boxes
from naslora_deploy.training.trainer import train

MODEL = "litemedsam"
METHODS = (("decoder only", "none"), ("LoRA", "lora"), ("NAS-PC-LoRA", "nas_pc_lora"))
BINARY = ClassSpec()  # the demo's task: one object per photograph


def run_demo(config: DemoConfig) -> Path:
    """Run the whole demo, printing what it measured and wrote; returns the summary file."""
    started = time.perf_counter()
    out = Path(config.out)
    data = write_photo_dataset(
        out / "data", count=config.images, seed=config.seed, val=2, test=config.test_images
    )
    test = discover(data, check=False).split("test")
    steps = config.epochs * -(-config.images // config.batch_size)
    print(
        f"{MODEL} (real pretrained weights), {config.images} training / {len(test)} test photographs, "
        f"box prompts; each method: {config.epochs} epochs x batch {config.batch_size} = {steps} steps, "
        "adapters on all 10 attention blocks"
    )
    rows: List[Dict[str, object]] = []
    zero_shot = SegmentationModel(build_sam(MODEL)).eval()
    rows.append(_row("zero-shot (box)", zero_shot, test, 0.0))
    trained = {}
    for label, method in METHODS:
        begun = time.perf_counter()
        run = train(_train_config(config, data, out / "runs" / method, method))
        trained[method] = load_adapter(run)
        rows.append(_row(f"{label} (box)", trained[method], test, time.perf_counter() - begun))
    calibration = calibration_images(data, 2, 256, "minmax")
    for mode in ("fused", "dense"):
        merged, report, _ = write_merged(
            trained["nas_pc_lora"],
            mode,
            out / "merged" / f"litemedsam_nas_pc_lora_{mode}.pth",
            calibration,
            source=str(out / "runs" / "nas_pc_lora"),
            progress=config.progress,
        )
        row = _row(f"NAS-PC-LoRA, {mode} merge (box)", merged, test, 0.0)
        row["merge embedding rel. error"] = report.embedding_rel_error
        rows.append(row)
    summary = _write_summary(out, rows, test, time.perf_counter() - started)
    print(_table(rows))
    print(f"\nsummary with overlays: {summary}\ndemo finished in {time.perf_counter() - started:.1f} s")
    return summary


def _train_config(config: DemoConfig, data: Path, out: Path, method: str) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        out=str(out),
        model=MODEL,
        method=method,
        epochs=config.epochs,
        search_start=min(1, config.epochs - 1),
        batch_size=config.batch_size,
        lr=config.lr,
        prompt="box",
        alpha_pass="same",
        seed=config.seed,
        progress=config.progress,
        overwrite=True,  # OUT/runs/METHOD is the demo's own: a rerun replaces the run it wrote before
    )


def _row(name: str, model, test: List[Tuple[Path, Path]], seconds: float) -> Dict[str, object]:
    metrics = evaluate(model, test, BINARY, batch_size=4, device="cpu", prompt="box")
    return {
        "model": name,
        "model_object": model,
        "iou": metrics["iou"],
        "dice": metrics["dice"],
        "train s": seconds,
    }


def _table(rows: List[Dict[str, object]]) -> str:
    lines = [f"{'model':<38} {'test IoU':>9} {'Dice':>7} {'train s':>8}"]
    for row in rows:
        lines.append(f"{row['model']:<38} {row['iou']:>9.4f} {row['dice']:>7.4f} {row['train s']:>8.1f}")
    return "\n".join(lines)


def _write_summary(out: Path, rows: List[Dict[str, object]], test, seconds: float) -> Path:
    """``summary.md``: the table, and per row the first test photograph with that model's mask."""
    image_path, mask_path = test[0]
    image = read_image(image_path)
    boxes = component_boxes(load_labels(mask_path, BINARY) == 1)[0]
    lines = [
        "# naslora-deploy demo",
        "",
        f"Finished in {seconds:.0f} s.",
        "",
        "| model | test IoU | Dice | train s | overlay |",
        "|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows):
        with torch.no_grad():
            prob = predict_probabilities(row["model_object"], [image], "cpu", [boxes])[0]
        picture = save_png(out / "overlays" / f"{index}.png", overlay(image, prob > 0.5))
        lines.append(
            f"| {row['model']} | {row['iou']:.4f} | {row['dice']:.4f} | {row['train s']:.1f} | "
            f"![]({picture.relative_to(out)}) |"
        )
    table = [{k: v for k, v in row.items() if k != "model_object"} for row in rows]
    atomic_write_text(out / "summary.json", json.dumps(table, indent=2) + "\n")
    return atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
