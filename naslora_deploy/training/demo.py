"""``naslora-deploy demo``: real LiteMedSAM weights on real photographs, the methods side by side.

A seeded data set is cut from the photographs in scikit-image's wheel (one
texture in a random shape on another). The trivial baselines and zero-shot
LiteMedSAM come first; then the decoder only, LoRA and NAS-PC-LoRA, fine-tuned
the same number of steps with the fast CPU recipe (``recipe``: adapters on every
block, the frozen front cached, bf16 autocast where the CPU has native bf16),
then NAS-PC-LoRA after the fused and the dense merge, all evaluated on the same
held-out images. By default prompt-free (the paper's setting, where the
comparison in benchmarks/RESULTS.md found the adapters' gain; baselines all
background, all foreground, zero-shot without and, for reference, with a box);
``--prompt box`` trains and evaluates box-prompted (MedSAM's setting, baselines
all background, all foreground, the box filled in, zero-shot). Each trained row
says how it differs from the decoder only, image by image, with a 95 % interval:
where the interval holds zero the row is a tie, and says so. The table is printed
and written to ``summary.md`` with an overlay per trained row and
``summary.png``: a grid of every row (methods) by the test photographs, each mask
with the ground truth outlined (and the prompt box drawn where there is one).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch

from naslora_deploy.common.imaging import overlay, read_image, save_png
from naslora_deploy.common.io import atomic_write_text
from naslora_deploy.common.outputs import prepare_output_dir, take_marked_folder
from naslora_deploy.common.plots import picture_grid
from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.files import write_merged
from naslora_deploy.core.merging.run import merge_run
from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.core.runs.checkpoint import load_adapter
from naslora_deploy.training.acceleration import pick_device, uses_bf16
from naslora_deploy.training.config import DemoConfig, TrainConfig
from naslora_deploy.training.data.dataset import load_labels
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.data.photos import write_photo_dataset
from naslora_deploy.training.evaluate import predict_probabilities
from naslora_deploy.training.prefix_cache import PrefixCache
from naslora_deploy.training.prompts import component_boxes
from naslora_deploy.training.trainer import train

MODEL = "litemedsam"
METHODS = (("decoder only", "none"), ("LoRA", "lora"), ("NAS-PC-LoRA", "nas_pc_lora"))
VAL_IMAGES = 4  # held out to pick each run's best/ epoch
SHARED_MB = 512  # SharedEmbeddings' bound: LiteMedSAM's test embeddings are 4 MB each; past it, recomputed
PROMPT_WORDS = {"none": "no prompt", "box": "box"}  # how a row names the prompt it was given


def recipe() -> Dict[str, object]:
    """The demo's training recipe, every method alike (benchmarks/RESULTS.md, issue 25): adapters on
    every block (0.861 test IoU prompt-free over three seeds against 0.712 on blocks 8-9), the
    frozen front cached (exact) and ``train``'s precision: bf16 autocast where this CPU computes
    bf16 natively (three paired seeds kept test IoU), fp32 elsewhere."""
    return dict(blocks=None, prefix_cache=True, precision="auto")


BINARY = ClassSpec()  # the demo's task: one object per photograph


class TestSet:
    """The held-out photographs: images, masks and their ground-truth boxes (the prompts)."""

    def __init__(self, images: List[np.ndarray], masks: List[np.ndarray]) -> None:
        self.images, self.masks = images, masks
        self.boxes = [component_boxes(mask)[0] for mask in self.masks]

    @classmethod
    def read(cls, pairs: List[Tuple[Path, Path]]) -> "TestSet":
        """The test set of (image, mask) files, read once."""
        return cls(
            [read_image(image) for image, _ in pairs], [load_labels(mask, BINARY) == 1 for _, mask in pairs]
        )

    def ious(self, predictions: List[np.ndarray]) -> List[float]:
        """Per image IoU of boolean predictions."""
        return [
            float((p & m).sum() / max((p | m).sum(), 1)) if (p | m).any() else 1.0
            for p, m in zip(predictions, self.masks)
        ]

    def predict(
        self, model, prompt: str = "box", shared: Optional["SharedEmbeddings"] = None
    ) -> List[np.ndarray]:
        """Masks of ``model`` (probability >= 0.5), box-prompted or (``prompt`` "none") prompt-free;
        through ``shared`` embeddings where they are exactly this model's encoder's."""
        model.encoder_cache = shared if shared is not None and shared.serves(model) else None
        try:
            with torch.no_grad():
                return [
                    predict_probabilities(model, [image], "cpu", None if prompt == "none" else [boxes])[0]
                    >= 0.5
                    for image, boxes in zip(self.images, self.boxes)
                ]
        finally:
            model.encoder_cache = None

    def filled_boxes(self) -> List[np.ndarray]:
        """The prompt boxes themselves, filled: what a box alone already says."""
        masks = []
        for mask, boxes in zip(self.masks, self.boxes):
            filled = np.zeros_like(mask)
            for x0, y0, x1, y1 in np.asarray(boxes, dtype=int):
                filled[y0 : y1 + 1, x0 : x1 + 1] = True
            masks.append(filled)
        return masks


class SharedEmbeddings:
    """The untouched image encoder's embeddings of the test photographs, computed once and shared by
    every model whose encoder is bit-identical to it (zero-shot, the decoder-only run): on a 2-core
    CPU the encoder is nearly all of a prediction's time. Set as a model's ``encoder_cache``; the
    memory is the trainer's ``PrefixCache`` over the whole (frozen) encoder."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        encoder.requires_grad_(False)  # nothing trains it: the whole encoder is the cached prefix
        self.weights = encoder.state_dict()
        self.cache = PrefixCache(encoder, SHARED_MB * 2**20)

    def serves(self, model) -> bool:
        """Whether ``model``'s image encoder has exactly the shared encoder's weights."""
        weights = model.sam.image_encoder.state_dict()
        return weights.keys() == self.weights.keys() and all(
            torch.equal(weights[name], tensor) for name, tensor in self.weights.items()
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.cache(images)


DEMO_MARKER = ".naslora-demo"  # written into every demo output folder: what --overwrite may replace
GRID_NAME = "summary.png"  # every row's masks on the test photographs, ground truth outlined
GRID_IMAGES = 8  # test photographs (columns) the grid shows at most
DEMO_NAMES = {DEMO_MARKER, "data", "runs", "merged", "overlays", "summary.json", "summary.md", GRID_NAME}


def _earlier_demo(folder: Path) -> Optional[Set[str]]:
    return DEMO_NAMES if (folder / DEMO_MARKER).is_file() else None


def prepare_demo_dir(out, overwrite: bool) -> Path:
    """The demo's ``--out``, checked, locked and marked: new or empty, or (with ``--overwrite``) an
    earlier demo's folder holding nothing else, whose outputs are removed first."""
    folder = prepare_output_dir(
        out, kind="naslora-deploy demo", earlier=_earlier_demo, replace=overwrite, writer="demo"
    )
    return take_marked_folder(folder, DEMO_NAMES, DEMO_MARKER, {"format": "naslora-deploy demo"})


def run_demo(config: DemoConfig) -> Path:
    """Run the whole demo, printing what it measured and wrote; returns the summary file."""
    started = time.perf_counter()
    out = prepare_demo_dir(config.out, config.overwrite)
    data = write_photo_dataset(
        out / "data", count=config.images, seed=config.seed, val=VAL_IMAGES, test=config.test_images
    )
    test = TestSet.read(discover(data, check=False).split("test"))
    header = _header(config, len(test.images))
    print(header)
    zero_shot = SegmentationModel(build_sam(MODEL)).eval()
    shared = SharedEmbeddings(zero_shot.sam.image_encoder)
    rows = _baseline_rows(test, config.prompt, zero_shot, shared)
    said = PROMPT_WORDS[config.prompt]
    trained = {}
    for label, method in METHODS:
        begun = time.perf_counter()
        run = train(_train_config(config, data, out / "runs" / method, method))
        seconds = time.perf_counter() - begun  # training alone, its prefix cache included
        trained[method] = load_adapter(run)
        predictions = test.predict(trained[method], config.prompt, shared)
        rows.append(_row(f"{label} ({said})", predictions, test, seconds, config.prompt))
        rows[-1]["model_object"] = trained[method]
    rows.extend(_merged_rows(trained["nas_pc_lora"], config, data, out, test))
    _compare_with(rows, f"decoder only ({said})")
    pictures = _overlays(out, rows, test)
    seconds = time.perf_counter() - started
    summary = _write_summary(out, header, rows, pictures, seconds)
    print(_table(rows))
    print(f"\nsummary with overlays: {summary}, grid: {out / GRID_NAME}\ndemo finished in {seconds:.1f} s")
    return summary


def _merged_rows(model, config: DemoConfig, data: Path, out: Path, test: TestSet) -> List[Dict[str, object]]:
    """NAS-PC-LoRA after the fused and the dense merge: written under ``out/merged``, evaluated like
    the unmerged run, each with its embedding error against it."""
    calibration = calibration_images(data, 2, 256, "minmax")
    rows = []
    for mode in ("fused", "dense"):
        merged, report = merge_run(
            model, MergeSpec(mode=mode), calibration=calibration, progress=config.progress
        )
        path = out / "merged" / f"litemedsam_nas_pc_lora_{mode}.pth"
        write_merged(merged, report, path, source=str(out / "runs" / "nas_pc_lora"))
        name = f"NAS-PC-LoRA, {mode} merge ({PROMPT_WORDS[config.prompt]})"
        row = _row(name, test.predict(merged, config.prompt), test, 0.0, config.prompt)
        row["merge embedding rel. error"] = report.embedding_rel_error
        row["model_object"] = merged
        rows.append(row)
    return rows


def _header(config: DemoConfig, test_images: int) -> str:
    """What the table measured: model, data, prompt, steps, seed and recipe, in one sentence."""
    steps = config.epochs * -(-config.images // config.batch_size)
    bf16 = uses_bf16(recipe()["precision"], pick_device("auto"))  # as the training runs resolve it
    prompt = "prompt-free (the paper's setting)" if config.prompt == "none" else "box prompts"
    return (
        f"{MODEL} (real pretrained weights), {config.images} training / {test_images} test photographs, "
        f"{prompt}; each method: {_count(config.epochs, 'epoch')} x batch {config.batch_size} = "
        f"{_count(steps, 'step')}, "
        f"seed {config.seed} (one seed); adapters on every block, the frozen front cached, "
        f"{'bf16 autocast' if bf16 else 'fp32'}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _baseline_rows(
    test: TestSet, prompt: str, zero_shot, shared: SharedEmbeddings
) -> List[Dict[str, object]]:
    """The rows every trained one is read against: trivial masks and the untouched model."""
    rows = [
        _row("all background", [np.zeros_like(m) for m in test.masks], test),
        _row("all foreground", [np.ones_like(m) for m in test.masks], test),
    ]
    if prompt == "box":
        rows.append(_row("box filled in (the prompt alone)", test.filled_boxes(), test, prompt="box"))
    else:
        rows.append(
            _row("zero-shot (no prompt)", test.predict(zero_shot, "none", shared), test, prompt="none")
        )
    name = "zero-shot (box, for reference)" if prompt == "none" else "zero-shot (box)"  # a box per object
    rows.append(_row(name, test.predict(zero_shot, "box", shared), test, prompt="box"))
    return rows


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
        adapter_lr=config.adapter_lr,
        prompt=config.prompt,
        alpha_pass="same",
        seed=config.seed,
        progress=config.progress,
        overwrite=True,  # OUT/runs/METHOD is the demo's own: a rerun replaces the run it wrote before
        **recipe(),  # decoder only too: every method on the same precision and cache
    )


def _row(
    name: str,
    predictions: List[np.ndarray],
    test: TestSet,
    seconds: float = 0.0,
    prompt: Optional[str] = None,
) -> Dict[str, object]:
    """One table row: mean and per-image IoU, Dice, training seconds, and the prompt the model was
    given (None for a mask that is no model's: its pictures draw no box)."""
    ious = test.ious(predictions)
    dice = [2 * i / (1 + i) for i in ious]  # per image, Dice = 2 IoU / (1 + IoU)
    return {
        "model": name,
        "iou": statistics.fmean(ious),
        "dice": statistics.fmean(dice),
        "per_image_iou": ious,
        "train s": seconds,
        "prompt": prompt,
        "predictions": predictions,  # for the pictures; not written to summary.json
    }


def _compare_with(rows: List[Dict[str, object]], reference: str) -> None:
    """Each trained row's paired IoU difference from ``reference``, with a 95 % interval and a verdict."""
    base = next(r for r in rows if r["model"] == reference)["per_image_iou"]
    for row in rows:
        if row["model"] == reference or "model_object" not in row:
            continue
        diffs = [a - b for a, b in zip(row["per_image_iou"], base)]
        mean = statistics.fmean(diffs)
        half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        verdict = "tie" if abs(mean) <= half else ("better" if mean > 0 else "worse")
        row["vs decoder only"] = {"mean": mean, "interval95": half, "verdict": verdict}


def _versus(row: Dict[str, object]) -> str:
    versus: Optional[dict] = row.get("vs decoder only")  # type: ignore[assignment]
    if versus is None:
        return ""
    return f"{versus['mean']:+.4f} +- {versus['interval95']:.4f} ({versus['verdict']})"


def _table(rows: List[Dict[str, object]]) -> str:
    lines = [f"{'model':<36} {'test IoU':>9} {'Dice':>7} {'vs decoder only, 95 %':>30} {'train s':>8}"]
    for row in rows:
        figures = f"{row['iou']:>9.4f} {row['dice']:>7.4f} {_versus(row):>30} {row['train s']:>8.1f}"
        lines.append(f"{row['model']:<36} {figures}")
    return "\n".join(lines)


def _overlays(out: Path, rows: List[Dict[str, object]], test: TestSet) -> List[Optional[Path]]:
    """Per trained or zero-shot row, the first test photograph with that model's mask, its ground
    truth outlined and its prompt box drawn; and ``GRID_NAME``, every row on the test photographs."""
    pictures: List[Optional[Path]] = []
    for index, row in enumerate(rows):
        if "model_object" not in row and not row["model"].startswith("zero-shot"):
            pictures.append(None)
            continue
        drawn = _drawn(test, row["predictions"][0], 0, _boxed(row))
        pictures.append(save_png(out / "overlays" / f"{index}.png", drawn))
    save_png(out / GRID_NAME, summary_grid(rows, test))
    return pictures


def _boxed(row: Dict[str, object]) -> bool:
    """Whether ``row``'s model was given the box prompt (a row that names no prompt: yes)."""
    return row.get("prompt", "box") == "box"


def _drawn(test: TestSet, prediction: np.ndarray, image: int, box: bool = True) -> np.ndarray:
    """Test photograph ``image`` with ``prediction`` filled, the ground truth outlined and (``box``)
    the prompt box drawn."""
    boxes = test.boxes[image] if box else None
    return overlay(test.images[image], prediction, truth=test.masks[image], boxes=boxes)


def summary_grid(rows: List[Dict[str, object]], test: TestSet, limit: int = GRID_IMAGES) -> np.ndarray:
    """One picture: a row per method (``rows``' ``predictions``), a column per test photograph (the
    first ``limit``), each cell the method's mask with the ground truth outlined, the prompt box
    drawn and the image's IoU beneath."""
    shown = range(min(limit, len(test.images)))
    cells = [[_drawn(test, row["predictions"][i], i, _boxed(row)) for i in shown] for row in rows]
    captions = [[f"IoU {row['per_image_iou'][i]:.3f}" for i in shown] for row in rows]
    more = f" (first {len(shown)} of {len(test.images)})" if len(shown) < len(test.images) else ""
    title = f"methods x test photographs{more}: mask filled, ground truth outlined, box drawn if prompted"
    columns = [f"test {i + 1}" for i in shown]
    return picture_grid(cells, [str(row["model"]) for row in rows], columns, captions, cell=144, title=title)


def _write_summary(out: Path, header: str, rows, pictures, seconds: float) -> Path:
    """``summary.md`` and ``summary.json``: the table, and the overlays, with the run's wall time."""
    lines = [
        "# naslora-deploy demo",
        "",
        header + ".",
        "",
        f"Finished in {seconds:.1f} s. A row is a tie with the decoder only when the 95 % interval of "
        "its per-image IoU difference holds zero. The interval is over this run's test images: "
        "'better' says these models differ on these photographs, not that the method wins on every "
        "seed or budget (benchmarks/RESULTS.md holds the three-seed, 400-step comparison).",
        "",
        f"![every method on the test photographs]({GRID_NAME})",
        "",
        "| model | test IoU | Dice | vs decoder only (95 %) | train s | overlay |",
        "|---|---|---|---|---|---|",
    ]
    for row, picture in zip(rows, pictures):
        shown = f"![]({picture.relative_to(out)})" if picture is not None else ""
        lines.append(
            f"| {row['model']} | {row['iou']:.4f} | {row['dice']:.4f} | {_versus(row)} | "
            f"{row['train s']:.1f} | {shown} |"
        )
    table = [{k: v for k, v in row.items() if k not in ("model_object", "predictions")} for row in rows]
    atomic_write_text(out / "summary.json", json.dumps({"seconds": seconds, "rows": table}, indent=2) + "\n")
    return atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
