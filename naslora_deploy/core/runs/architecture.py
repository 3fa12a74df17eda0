"""The searched architecture of a trained adapter: softmax(alpha) per block and projection."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import atomic_write
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.core.runs.checkpoint import (
    WEIGHTS_NAME,
    load_weights,
    read_jsonl,
    read_spec,
    resolve_checkpoint_dir,
)

# the block's path in the encoder (SAM ViT: blocks.i; TinyViT: layers.l.blocks.j) and the projection
ALPHA_KEY = re.compile(r"image_encoder\.(.+)\.attn\.qkv\.adapters\.([qkv])\.alpha$")
SHORT_NAMES = {
    "sep_conv_3x3": "sep3x3",
    "sep_conv_5x5": "sep5x5",
    "dil_conv_3x3": "dil3x3",
    "dil_conv_5x5": "dil5x5",
    "avg_pool_3x3": "avg3x3",
    "max_pool_3x3": "max3x3",
    "skip_connect": "skip",
    "none": "none",
}


def searched_weights(directory) -> Tuple[List[str], Dict[Tuple[int, str], np.ndarray]]:
    """(op names, {(block, projection): softmax(alpha)}) read from a checkpoint directory."""
    directory = resolve_checkpoint_dir(directory)
    spec = read_spec(directory)
    if not spec.adapter.has_cell:
        raise NasloraError(
            f"{directory} holds {spec.adapter.method} adapters: there is no searched architecture to inspect"
        )
    state = load_weights(directory / WEIGHTS_NAME, "numpy")
    found = {}
    for key, value in state.items():
        match = ALPHA_KEY.search(key)
        if match:
            alpha = value.astype(np.float64)
            exp = np.exp(alpha - alpha.max())
            found[(match.group(1), match.group(2))] = exp / exp.sum()
    weights = {(_block_index(path, spec, found), target): w for (path, target), w in found.items()}
    return list(spec.adapter.ops), dict(
        sorted(weights.items(), key=lambda kv: (kv[0][0], "qkv".index(kv[0][1])))
    )


def _path_order(path: str) -> Tuple[int, ...]:
    """``layers.2.blocks.10`` -> (2, 10): the encoder's own block order."""
    return tuple(int(part) for part in path.split(".") if part.isdigit())


def _block_index(path: str, spec, found: Dict[Tuple[str, str], np.ndarray]) -> int:
    """A block path's index in ``AdapterConfig.blocks``: its place among the encoder's attention blocks."""
    paths = sorted({p for p, _ in found}, key=_path_order)
    indices = range(len(paths)) if spec.adapter.blocks == "all" else sorted(spec.adapter.blocks)
    return dict(zip(paths, indices))[path]


def operation_shares(weights: Dict[Tuple[int, str], np.ndarray]) -> np.ndarray:
    """The paper's Fig. C2 proportion of each op: its mean weight over blocks and q, k, v."""
    return np.mean(np.stack(list(weights.values())), axis=0)


def format_table(ops: List[str], weights: Dict[Tuple[int, str], np.ndarray], top: bool = True) -> str:
    """A text table: one row per (block, projection), one column per op, plus the top op (``top``)."""
    short = [SHORT_NAMES.get(op, op[:9]) for op in ops]
    lines = [f"{'block':>5} {'proj':>4} " + " ".join(f"{s:>9}" for s in short) + ("  top" if top else "")]
    for (block, target), w in weights.items():
        best = f"  {ops[int(np.argmax(w))]}" if top else ""
        lines.append(f"{block:>5} {target:>4} " + " ".join(f"{v:>9.3f}" for v in w) + best)
    shares = operation_shares(weights)
    lines.append(f"{'share':>10} " + " ".join(f"{v:>9.3f}" for v in shares))
    return "\n".join(lines)


HEATMAP_COLOURS = "viridis"  # share 0 dark violet, the largest share yellow


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (one line naming the ``plot`` extra if absent)."""
    matplotlib = lazy_import("matplotlib", "plot", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120))
    return Path(path)


def plot_shares(ops: List[str], weights: Dict[Tuple[int, str], np.ndarray], path: Path) -> Path:
    """Heatmap of softmax(alpha) per (block, projection) row and operation column, each cell annotated
    with its share, and a last row of the mean share (the paper's Fig. C2 proportions; needs
    matplotlib). Colour runs from 0 to the largest share drawn (``HEATMAP_COLOURS``)."""
    plt = _pyplot()
    rows = [f"{block} {target}" for block, target in weights] + ["mean"]
    grid = np.vstack([np.stack(list(weights.values())), operation_shares(weights)])
    short = [SHORT_NAMES.get(op, op[:9]) for op in ops]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(ops), 1.2 + 0.26 * len(rows)))
    top = float(grid.max()) or 1.0
    ax.imshow(grid, cmap=HEATMAP_COLOURS, vmin=0.0, vmax=top, aspect="auto", interpolation="nearest")
    for (row, column), share in np.ndenumerate(grid):
        colour = "black" if share > 0.6 * top else "white"  # readable on viridis' light and dark ends
        ax.text(column, row, f"{share:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.axhline(len(rows) - 1.5, color="white", linewidth=2)  # the mean row apart from the blocks
    ax.set_xticks(range(len(ops)), short, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_ylabel("block, projection")
    ax.set_title(f"softmax(alpha) per projection (colour: 0 .. {top:.2f})", fontsize=9)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


SEARCH_STAGES = ("weights+alpha", "joint")  # the training stages in which alpha is updated


def search_ran(records: List[dict]) -> bool:
    """Whether any logged epoch of a run (``metrics.jsonl`` records) updated alpha."""
    return any(record.get("stage") in SEARCH_STAGES for record in records)


def search_history(directory) -> Tuple[Optional[bool], List[dict]]:
    """Whether the run that wrote a checkpoint searched alpha at all, and alpha's trajectory.

    Read from the run's ``metrics.jsonl`` (beside ``best/``/``last/``): each logged epoch's
    step and mean op shares. ``(None, [])`` for a checkpoint without its run's metrics.
    """

    checkpoint = resolve_checkpoint_dir(directory)
    metrics = checkpoint.parent / "metrics.jsonl"
    if not metrics.is_file():
        return None, []
    records = read_jsonl(metrics)
    searched = search_ran(records)
    trajectory = [{"step": r["step"], "shares": r["op_shares"]} for r in records if r.get("op_shares")]
    return searched, trajectory


def format_trajectory(ops: List[str], trajectory: List[dict]) -> str:
    """Alpha's trajectory: the mean share of each op at each logged step."""
    short = [SHORT_NAMES.get(op, op[:9]) for op in ops]
    lines = [f"{'step':>10} " + " ".join(f"{s:>9}" for s in short)]
    for point in trajectory:
        lines.append(
            f"{point['step']:>10} " + " ".join(f"{point['shares'].get(op, 0.0):>9.4f}" for op in ops)
        )
    return "\n".join(lines)


def plot_trajectory(ops: List[str], trajectory: List[dict], path: Path) -> Path:
    """Line chart of each op's mean share over the logged steps (needs matplotlib)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    steps = [p["step"] for p in trajectory]
    for op in ops:
        ax.plot(steps, [p["shares"].get(op, 0.0) for p in trajectory], label=op, marker=".")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("mean softmax(alpha)")
    ax.set_title("Alpha's trajectory (mean over blocks and q/k/v)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def inspection_summary(directory, plot: Optional[Path] = None) -> dict:
    """Everything ``naslora-deploy inspect`` prints, as a dict.

    A run whose search never started (``--search-start`` at or past its last epoch, or
    ``--max-steps`` first) is said to be so, and no op is named "top": its shares are
    alpha's random initialisation, not a searched architecture.
    """
    ops, weights = searched_weights(directory)
    searched, trajectory = search_history(directory)
    table = format_table(ops, weights, top=searched is not False)
    if searched is False:
        table = "no search ran in this run: alpha stayed at its initialisation (no op was chosen)\n" + table
    if trajectory:
        table += "\n\nalpha's trajectory (mean shares per logged step):\n" + format_trajectory(
            ops, trajectory
        )
    summary = {
        "ops": ops,
        "search_ran": searched,
        "shares": dict(zip(ops, operation_shares(weights).tolist())),
        "weights": {f"{b}.{t}": w.tolist() for (b, t), w in weights.items()},
        "trajectory": trajectory,
        "table": table,
    }
    if plot is not None:
        summary["plot"] = str(plot_shares(ops, weights, Path(plot)))
        if trajectory:
            path = Path(plot)
            summary["trajectory_plot"] = str(
                plot_trajectory(ops, trajectory, path.with_name(f"{path.stem}-trajectory{path.suffix}"))
            )
    return summary
