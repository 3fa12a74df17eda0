"""What the method is worth: LiteMedSAM fine-tuned by decoder-only, LoRA, NAS-LoRA, NAS-PC-LoRA and full
fine-tuning on real photographs, prompt-free (the paper's setting) and box-prompted, at equal steps.

Resumable pieces, one process per piece, each writing its own result file under
``benchmarks/results/compare/`` (commit them as they land; a later session runs only
what is missing):

    python benchmarks/bench_compare.py baselines                 # zero-shot, all-fg, all-bg
    python benchmarks/bench_compare.py gonogo                    # adapters alone, decoder fixed
    python benchmarks/bench_compare.py sweep --arm lora --prompt none --lrs 3e-4,1e-3,3e-3
    python benchmarks/bench_compare.py run --arm lora --prompt none --seed 0
    python benchmarks/bench_compare.py missing --seeds 0,1,2     # the run commands still to do
    python benchmarks/bench_compare.py merge --arm nas_pc_lora --prompt none --seed 0
    python benchmarks/bench_compare.py summary                   # the table, paired differences

Data: ``compare_data.photo_set`` (64 train / 16 val / 32 test, seed 0). On a GPU pass
``--steps``, ``--batch-size`` and ``--train-images`` to run the same thing larger.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import List, Optional

RESULTS = Path(__file__).parent / "results" / "compare"
RUNS = Path(__file__).parent / "results" / ".runs"  # run folders (checkpoints): kept, not committed
ARMS = {  # arm -> TrainConfig fields; the adapters' blocks and the learning rates come from the recipe
    "decoder": dict(method="none"),
    "lora": dict(method="lora"),
    "nas_lora": dict(method="nas_lora"),
    "nas_pc_lora": dict(method="nas_pc_lora"),
    "full": dict(method="full"),
}
PROMPTS = ("none", "box")
RECIPE_BLOCKS = [8, 9]  # benchmarks/RESULTS.md, training speed
FALLBACK_LR = {"decoder": 1e-4, "lora": 1e-3, "nas_lora": 1e-3, "nas_pc_lora": 1e-3, "full": 1e-5}


def _path(kind: str, name: str) -> Path:
    return RESULTS / kind / f"{name}.json"


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}", flush=True)


def _data(args) -> Path:
    try:
        from compare_data import photo_set
    except ImportError:
        from benchmarks.compare_data import photo_set
    return photo_set(args.train_images, args.val_images, args.test_images)


def _evaluate(model, data: Path, prompt: str) -> dict:
    from naslora_deploy.core.model.classes import ClassSpec
    from naslora_deploy.training.data.folder import discover
    from naslora_deploy.training.evaluate import evaluate

    test = discover(data, check=False).split("test")
    return evaluate(model, test, ClassSpec(), batch_size=4, prompt=prompt)


def chosen_lr(arm: str, prompt: str, fallback: float) -> float:
    """The learning rate the sweep picked for (arm, prompt); an adapter arm without a sweep of its
    own takes LoRA's; ``fallback`` where no sweep ran."""
    for name in (arm, "lora") if arm.startswith("nas") else (arm,):
        path = _path("sweep", f"{prompt}-{name}")
        if path.is_file():
            return json.loads(path.read_text())["chosen_lr"]
    return fallback


def train_config(args, arm: str, prompt: str, seed: int, out: Path, arm_lr: float, **changes):
    """The TrainConfig of one piece: the arm's method on the recipe, ``arm_lr`` for what it trains."""
    from naslora_deploy.training.config import TrainConfig

    method = ARMS[arm]["method"]
    adapted = method not in ("none", "full")
    fields = dict(
        data=str(_data(args)),
        out=str(out),
        model="litemedsam",
        method=method,
        blocks=args.blocks if adapted else None,
        epochs=10_000,
        max_steps=args.steps,
        search_start=args.search_start,
        batch_size=args.batch_size,
        lr=chosen_lr("decoder", prompt, args.decoder_lr),  # adapter arms: the decoder-only arm's rate
        adapter_lr=arm_lr,
        prompt=prompt,
        alpha_pass="same",
        precision=args.precision,
        seed=seed,
        progress=False,
        overwrite=True,
    )
    if method == "none":
        fields["lr"] = arm_lr  # decoder-only: the swept rate is the decoder's
    config = TrainConfig(**{**fields, **changes})
    if resumable(out, config):  # a piece killed with its session goes on from its last epoch
        config.resume, config.overwrite = True, False
    return config


def resumable(out: Path, config) -> bool:
    """Whether ``out`` holds an unfinished run of exactly ``config`` (its last epoch saved)."""
    recorded = out / "train_config.json"
    if not (out / "last" / "training_state.pt").is_file() or not recorded.is_file():
        return False
    if (out / "run_summary.json").is_file():
        return False  # it finished: run it again from the start

    def settings(recorded_config: dict) -> dict:  # paths compared resolved (a worktree links results/)
        kept = {k: v for k, v in recorded_config.items() if k not in ("resume", "overwrite", "out")}
        return {**kept, "data": str(Path(kept["data"]).resolve())}

    return settings(json.loads(recorded.read_text())) == settings(config.to_dict())


def _alpha(records: List[dict], model) -> Optional[dict]:
    """Alpha's movement: the mean shares per logged epoch, and the largest change of any one share."""
    from naslora_deploy.core.adapters.injection import adapted_layers

    trajectory = [r["op_shares"] for r in records if "op_shares" in r]
    if not trajectory:
        return None
    largest = 0.0
    for _, layer in adapted_layers(model.sam):
        for adapter in layer.adapters.values():
            if adapter.op_names:
                shares = adapter.op_weights().detach()
                largest = max(largest, float((shares - 1.0 / len(shares)).abs().max()))
    return {"largest_share_change": largest, "mean_shares_per_epoch": trajectory}


def _last_step(out: Path) -> Optional[int]:
    """The step of the last epoch a killed piece logged (where its resume starts)."""
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return json.loads(lines[-1])["step"] if lines else None


def run_piece(args, arm: str, prompt: str, seed: int, arm_lr: float, out: Path, **changes) -> dict:
    """Train one piece and evaluate its best/ on the test photographs."""
    from naslora_deploy.core.runs.checkpoint import load_adapter
    from naslora_deploy.training.trainer import train

    config = train_config(args, arm, prompt, seed, out, arm_lr, **changes)
    resumed_at = _last_step(out) if config.resume else None
    if not config.resume and out.exists():  # this benchmark's own scratch (RUNS), an older attempt
        shutil.rmtree(out)
    began = time.perf_counter()
    run = train(config)
    wall = time.perf_counter() - began
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step_time_ms"] for r in records if r.get("step_time_ms")]
    model = load_adapter(run / "best")
    last = load_adapter(run / "last")
    return {
        "arm": arm,
        "prompt": prompt,
        "seed": seed,
        "lr": arm_lr,
        "steps": records[-1]["step"],
        "config": config.to_dict(),
        "wall_s": wall,  # of the last attempt only when resumed_at_step is set
        "resumed_at_step": resumed_at,
        "median_step_ms": statistics.median(steps),
        "val_curve": [(r["step"], r["val"]["iou"]) for r in records if r.get("val")],
        "train_loss": [(r["step"], r["train_loss"]) for r in records],
        "test_best": _evaluate(model, Path(config.data), prompt),
        "test_last": _evaluate(last, Path(config.data), prompt),
        "alpha": _alpha(records, last),
        "prefix_cache": records[-1].get("prefix_cache"),
    }


def variant_suffix(args) -> str:
    """Pieces off the recipe (bf16, other blocks) are named apart: paired checks, not arms."""
    suffix = "-bf16" if args.precision == "bf16" else ""
    if args.blocks != RECIPE_BLOCKS and ARMS[args.arm]["method"] not in ("none", "full"):
        suffix += "-blocks" + ("all" if args.blocks is None else "-".join(map(str, args.blocks)))
    return suffix


def cmd_run(args) -> None:
    """One (arm, prompt, seed) piece; off-recipe pieces carry a ``variant_suffix``."""
    name = f"{args.prompt}-{args.arm}-s{args.seed}" + variant_suffix(args)
    if _path("runs", name).is_file() and not args.force:
        print(f"{name}: done already (--force to run it again)")
        return
    lr = args.lr or chosen_lr(args.arm, args.prompt, FALLBACK_LR[args.arm])
    record = run_piece(args, args.arm, args.prompt, args.seed, lr, RUNS / name)
    _write(_path("runs", name), {**record, "variant": variant_suffix(args).lstrip("-")})


def cmd_sweep(args) -> None:
    """A short run per learning rate (seed 0, validation IoU picks); the choice goes to sweep/.

    An off-recipe sweep (bf16, other blocks) is kept apart (``variant_suffix``) and read, not used:
    the pieces take the recipe's sweep (``chosen_lr``), so a later sweep cannot change a half-run arm.
    """
    name = f"{args.prompt}-{args.arm}" + variant_suffix(args)
    path = _path("sweep", name)
    done = json.loads(path.read_text())["trials"] if path.is_file() else []
    for lr in [float(v) for v in args.lrs.split(",")]:
        if any(t["lr"] == lr and t["steps"] == args.steps for t in done):
            continue
        trial = run_piece(args, args.arm, args.prompt, 0, lr, RUNS / "sweep" / f"{name}-{lr:g}")
        done.append(
            {k: trial[k] for k in ("lr", "steps", "val_curve", "wall_s", "median_step_ms")}
            | {"best_val": max(v for _, v in trial["val_curve"])}
        )
        chosen = max(done, key=lambda t: t["best_val"])["lr"]
        _write(path, {"arm": args.arm, "prompt": args.prompt, "trials": done, "chosen_lr": chosen})


def cmd_baselines(args) -> None:
    """Zero-shot LiteMedSAM (box and prompt-free), and the all-foreground / all-background masks."""
    import numpy as np

    from naslora_deploy.core.model.classes import ClassSpec
    from naslora_deploy.core.model.heads import SegmentationModel
    from naslora_deploy.core.model.variants import build_sam
    from naslora_deploy.training.data.dataset import load_labels
    from naslora_deploy.training.data.folder import discover
    from naslora_deploy.training.metrics import BinaryMetrics

    data = _data(args)
    zero_shot = SegmentationModel(build_sam("litemedsam")).eval()
    record = {f"zero-shot ({p})": _evaluate(zero_shot, data, p) for p in PROMPTS}
    for name, value in (("all foreground", 1.0), ("all background", 0.0)):
        metrics = BinaryMetrics()
        for _, mask in discover(data, check=False).split("test"):
            labels = load_labels(mask, ClassSpec()) == 1
            metrics.update(np.full(labels.shape, value), labels)
        record[name] = metrics.results()
    _write(_path("baselines", "baselines"), record)


def cmd_gonogo(args) -> None:
    """Can the adapters alone lower the training loss? Decoder held fixed (lr 0), 16 photographs, 60 steps.

    Against two controls on the same batches: nothing trained (the loss then moves only with
    the epoch's flips) and the decoder alone. Also NAS-PC-LoRA with alpha searched from the
    first epoch under coupled (the paper's Adam L2) and decoupled (AdamW) decay: alpha's movement.
    """
    sizes = {"train_images": 16, "val_images": 4, "test_images": 4, "steps": args.gonogo_steps}
    small = argparse.Namespace(**{**vars(args), **sizes})
    trials = {
        "nothing trained": ("lora", dict(lr=0.0, adapter_lr=0.0)),
        "decoder alone": ("decoder", dict()),
        "adapters alone (lora)": ("lora", dict(lr=0.0)),
        "adapters alone (nas_pc_lora, coupled)": (
            "nas_pc_lora",
            dict(lr=0.0, search_start=0, arch_decay="coupled"),
        ),
        "adapters alone (nas_pc_lora, decoupled)": ("nas_pc_lora", dict(lr=0.0, search_start=0)),
    }
    path = _path("gonogo", f"gonogo-{args.prompt}")
    record = json.loads(path.read_text()) if path.is_file() else {}
    for name, (arm, changes) in trials.items():
        if name in record:
            continue
        out = RUNS / "gonogo" / f"{args.prompt}-{len(record)}"
        piece = run_piece(small, arm, args.prompt, 0, args.lr or FALLBACK_LR[arm], out, **changes)
        losses = [loss for _, loss in piece["train_loss"]]
        record[name] = {
            "epoch_train_loss": losses,
            "first": losses[0],
            "last": losses[-1],
            "last_over_first": losses[-1] / losses[0],
            "alpha": piece["alpha"],
            "steps": piece["steps"],
            "lr": piece["lr"],
            "test_best": piece["test_best"],
        }
        _write(path, record)


def cmd_missing(args) -> None:
    """Print the ``run`` commands whose result files are not there yet."""
    for prompt in args.prompts.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arm in args.arms.split(","):
                if not _path("runs", f"{prompt}-{arm}-s{seed}").is_file():
                    print(
                        f"python benchmarks/bench_compare.py run --arm {arm} --prompt {prompt} --seed {seed}"
                    )


def cmd_merge(args) -> None:
    """The dense and fused merges of one finished piece (off-recipe ones by the same ``--blocks`` /
    ``--precision`` as its run), evaluated on the test photographs."""
    from naslora_deploy.core.merging.calibration import calibration_images
    from naslora_deploy.core.merging.merge import merge
    from naslora_deploy.core.runs.checkpoint import load_adapter

    name = f"{args.prompt}-{args.arm}-s{args.seed}" + variant_suffix(args)
    model = load_adapter(RUNS / name / "best")
    data = _data(args)
    calibration = calibration_images(data, 8, 256, "minmax")
    record = {}
    for mode in ("fused", "dense"):
        merged, report = merge(model, mode, calibration=calibration)
        record[mode] = {
            "test": _evaluate(merged, data, args.prompt),
            "embedding_rel_error": report.embedding_rel_error,
        }
    _write(_path("merges", name), record)


def summarise(prompts, arms) -> dict:
    """Per (prompt, arm): test IoU/Dice/BER mean and std over seeds, and paired differences vs decoder;
    off-recipe pieces (bf16, other blocks) as arms of their own, named ARM-VARIANT."""
    runs = {}
    for path in sorted((RESULTS / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        # bf16 / other-block pieces are summarised apart, as "ARM-VARIANT" (e.g. lora-blocksall)
        runs[(r["prompt"], r["arm"] + (f"-{r['variant']}" if r.get("variant") else ""), r["seed"])] = r
    variants = sorted({a for (_, a, _) in runs if a not in arms and a.split("-")[0] in arms})
    table = []
    for prompt in prompts:
        for arm in list(arms) + variants:
            seeds = sorted(s for (p, a, s) in runs if p == prompt and a == arm)
            if not seeds:
                continue
            rows = [runs[(prompt, arm, s)] for s in seeds]
            entry = {
                "prompt": prompt,
                "arm": arm,
                "seeds": seeds,
                "steps": rows[0]["steps"],
                "lr": rows[0]["lr"],
            }
            for key in ("iou", "dice", "ber"):
                values = [r["test_best"][key] for r in rows]
                entry[f"{key}_mean"] = statistics.fmean(values)
                entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            reference = decoder_reference(arm, prompt, runs)
            paired = [
                r["test_best"]["iou"] - runs[(prompt, reference, r["seed"])]["test_best"]["iou"]
                for r in rows
                if (prompt, reference, r["seed"]) in runs
            ]
            entry["decoder_reference"] = reference
            entry["iou_minus_decoder_per_seed"] = paired
            entry["median_step_ms"] = statistics.median(r["median_step_ms"] for r in rows)
            alphas = [r["alpha"]["largest_share_change"] for r in rows if r.get("alpha")]
            entry["alpha_largest_share_change"] = max(alphas) if alphas else None
            twin = fp32_twin(arm)
            if twin is not None:  # the precision decision: bf16 minus fp32, same arm, blocks and seed
                entry["fp32_twin"] = twin
                entry["iou_minus_fp32_per_seed"] = {
                    r["seed"]: r["test_best"]["iou"] - runs[(prompt, twin, r["seed"])]["test_best"]["iou"]
                    for r in rows
                    if (prompt, twin, r["seed"]) in runs
                }
            table.append(entry)
    return {"table": table}


def decoder_reference(arm: str, prompt: str, runs: dict) -> str:
    """The decoder-only arm a piece pairs with: the bf16 one for a bf16 piece where that prompt has
    bf16 decoder pieces (the box comparison runs on the bf16 recipe), else the fp32 one."""
    if "bf16" in arm.split("-") and any(p == prompt and a == "decoder-bf16" for (p, a, _) in runs):
        return "decoder-bf16"
    return "decoder"


def fp32_twin(arm: str) -> Optional[str]:
    """The fp32 arm a bf16 variant pairs with ("lora-bf16-blocksall" -> "lora-blocksall"), else None.
    Only test IoU pairs: step times of pieces that ran in different sessions may come from different
    CPUs (bench_train_speed.py measures the speed ratio in one process)."""
    parts = arm.split("-")
    return "-".join(part for part in parts if part != "bf16") if "bf16" in parts else None


def cmd_summary(args) -> None:
    summary = summarise(args.prompts.split(","), args.arms.split(","))
    baselines = _path("baselines", "baselines")
    if baselines.is_file():
        summary["baselines"] = {
            k: {m: v[m] for m in ("iou", "dice", "ber")} for k, v in json.loads(baselines.read_text()).items()
        }
    print(
        f"{'prompt':<6} {'arm':<22} {'seeds':<7} {'IoU mean +- std':>18} {'vs decoder, per seed':>28} "
        f"{'BER %':>7} {'alpha moved':>11}"
    )
    for e in summary["table"]:
        paired = " ".join(f"{d:+.4f}" for d in e["iou_minus_decoder_per_seed"])
        paired += " b" if e["decoder_reference"] == "decoder-bf16" else ""  # against the bf16 decoder
        alpha = "" if e["alpha_largest_share_change"] is None else f"{e['alpha_largest_share_change']:.4f}"
        print(
            f"{e['prompt']:<6} {e['arm']:<22} {len(e['seeds']):<7} "
            f"{e['iou_mean']:>9.4f} +- {e['iou_std']:.4f} {paired:>28} {e['ber_mean']:>7.2f} {alpha:>11}"
        )
    for e in summary["table"]:
        if e.get("iou_minus_fp32_per_seed"):
            pairs = " ".join(f"s{seed} {d:+.4f}" for seed, d in e["iou_minus_fp32_per_seed"].items())
            print(f"{e['prompt']:<6} {e['arm']} - {e['fp32_twin']}, test IoU per seed: {pairs}")
    if any(e["decoder_reference"] == "decoder-bf16" for e in summary["table"]):
        print("b: against decoder-bf16 of the same prompt and seed (the bf16 recipe's own decoder-only arm)")
    for name, figures in summary.get("baselines", {}).items():
        print(f"baseline {name:<24} IoU {figures['iou']:.4f}  BER {figures['ber']:.2f}")
    _write(RESULTS / "summary.json", summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", choices=("baselines", "gonogo", "sweep", "run", "missing", "merge", "summary")
    )
    parser.add_argument("--arm", choices=tuple(ARMS), default="lora")
    parser.add_argument("--prompt", choices=PROMPTS, default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--prompts", default=",".join(PROMPTS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--gonogo-steps", type=int, default=60, help="gonogo: steps per trial (16 photographs)"
    )
    parser.add_argument("--blocks", default="8,9", help="adapted blocks (the recipe: 8,9), or all")
    parser.add_argument("--search-start", type=int, default=2, help="epochs before alpha's steps")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument(
        "--lr", type=float, default=None, help="the arm's learning rate (default: the sweep's)"
    )
    parser.add_argument(
        "--decoder-lr", type=float, default=1e-4, help="the decoder's in adapter arms, before its sweep ran"
    )
    parser.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    parser.add_argument("--force", action="store_true", help="run a piece again even if its file exists")
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=32)
    args = parser.parse_args()
    args.blocks = None if args.blocks == "all" else [int(b) for b in args.blocks.split(",")]
    commands = {
        "baselines": cmd_baselines,
        "gonogo": cmd_gonogo,
        "sweep": cmd_sweep,
        "run": cmd_run,
        "missing": cmd_missing,
        "merge": cmd_merge,
        "summary": cmd_summary,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
