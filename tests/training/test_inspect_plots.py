"""``inspect --plot``: the heatmap encodes each projection's operation shares, the trajectory is drawn
where the run logged one (a real vit_tiny NAS-PC-LoRA checkpoint, alpha set per op)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from naslora_deploy import AdapterConfig, add_adapters, build_sam
from naslora_deploy.cli import main
from naslora_deploy.common.io import sha256_of
from naslora_deploy.core.adapters.testing import perturb_adapters, set_alpha
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.runs.checkpoint import RunSpec, save_checkpoint
from naslora_deploy.training.trainer import op_shares

pytest.importorskip("matplotlib", reason="the plots need the plot extra (matplotlib)")
from matplotlib import colormaps  # noqa: E402

from naslora_deploy.core.runs.architecture import HEATMAP_COLOURS  # noqa: E402

FAVOURED_SHARE_LOGIT = -2.0  # the other ops' alpha: the favoured op gets about half the weight


def favouring_run(root, favoured, trajectory_steps=0):
    """A vit_tiny NAS-PC-LoRA checkpoint whose alpha favours ``favoured`` in every (block, projection);
    with ``trajectory_steps``, a ``metrics.jsonl`` beside it as the trainer writes it (``op_shares``
    of the model at each logged step, alpha moving from its random start towards ``favoured``)."""
    torch.manual_seed(0)
    sam = build_sam("vit_tiny")
    base = root / "base.safetensors"
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(base))
    config = AdapterConfig(method="nas_pc_lora", seed=0, blocks=[0, 1])
    add_adapters(sam, config)
    perturb_adapters(sam, seed=1)
    records = []
    for step in range(1, trajectory_steps + 1):
        set_alpha(sam, [favoured], logit=0.0, others=FAVOURED_SHARE_LOGIT * step / trajectory_steps)
        records.append({"epoch": step, "step": 10 * step, "stage": "joint", "op_shares": op_shares(sam)})
    set_alpha(sam, [favoured], logit=0.0, others=FAVOURED_SHARE_LOGIT)
    model = SegmentationModel(sam, 1, 0)
    spec = RunSpec("vit_tiny", config, ClassSpec(1), 0, 256, str(base.resolve()), sha256_of(base))
    checkpoint = save_checkpoint(root / "ckpt", model, spec)
    if records:
        (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return checkpoint


def near(pixels: np.ndarray, colour: np.ndarray, tolerance: int = 6) -> np.ndarray:
    """Which pixels have (within ``tolerance`` per channel) ``colour``."""
    return (np.abs(pixels.astype(int) - colour.astype(int)) <= tolerance).all(-1)


@pytest.mark.parametrize("favoured", ["sep_conv_3x3", "skip_connect"])
def test_the_heatmap_colours_the_favoured_operation_column(tmp_path, favoured, capsys):
    checkpoint = favouring_run(tmp_path / "run", favoured)
    plot = tmp_path / "ops.png"
    assert main(["inspect", str(checkpoint), "--plot", str(plot), "--json", str(tmp_path / "a.json")]) == 0
    summary = json.loads((tmp_path / "a.json").read_text())
    ops, weights = summary["ops"], np.array(list(summary["weights"].values()))
    assert len(weights) == 6  # blocks 0 and 1, q/k/v
    column = ops.index(favoured)
    assert (weights.argmax(1) == column).all()  # the shares as set
    picture = np.asarray(Image.open(plot).convert("RGB"))
    assert picture.shape[0] > 200 and picture.shape[1] > 400 and plot.stat().st_size > 5000
    top, low = weights.max(), weights[:, [i for i in range(len(ops)) if i != column]].mean()
    colour = colormaps[HEATMAP_COLOURS]
    favoured_colour = (np.array(colour(1.0)[:3]) * 255).round()
    other_colour = (np.array(colour(low / top)[:3]) * 255).round()
    hot, cold = near(picture, favoured_colour), near(picture, other_colour)
    assert hot.sum() > 500 and cold.sum() > 3 * hot.sum()  # one op's cells against seven ops' cells
    hot_x, cold_x = np.nonzero(hot)[1], np.nonzero(cold)[1]
    left, right = min(hot_x.min(), cold_x.min()), max(hot_x.max(), cold_x.max())
    where = (hot_x.mean() - left) / (right - left)  # the favoured cells' column, 0 .. 1 across the map
    assert abs(where - (column + 0.5) / len(ops)) < 0.5 / len(ops)
    printed = capsys.readouterr().out
    assert f"heatmap: {plot}" in printed and "no trajectory plot" in printed
    assert not (tmp_path / "ops-trajectory.png").exists()  # no metrics.jsonl: nothing to draw


def test_the_trajectory_is_drawn_when_the_run_logged_one(tmp_path, capsys):
    checkpoint = favouring_run(tmp_path / "run", "dil_conv_3x3", trajectory_steps=4)
    plot = tmp_path / "ops.png"
    assert main(["inspect", str(checkpoint), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    trajectory = tmp_path / "ops-trajectory.png"
    assert f"trajectory: {trajectory}" in printed and "alpha's trajectory" in printed
    picture = np.asarray(Image.open(trajectory).convert("RGB"))
    assert picture.shape[1] > 400 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 20
    # the trajectory's last logged shares are those of the checkpoint
    assert main(["inspect", str(checkpoint), "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    last = summary["trajectory"][-1]["shares"]
    assert last == pytest.approx(summary["shares"], abs=1e-5)
