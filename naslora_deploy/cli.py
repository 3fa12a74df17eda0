"""The ``naslora-deploy`` command line: train, eval, inspect, merge, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from naslora_deploy import __version__

METHODS = ("lora", "nas_lora", "nas_pc_lora")


def _train(args: argparse.Namespace) -> int:
    from naslora_deploy.ops import OP_NAMES
    from naslora_deploy.train import TrainConfig, train

    ops = args.ops.split(",") if args.ops else None
    if ops:
        unknown = [op for op in ops if op not in OP_NAMES]
        if unknown:
            raise ValueError(f"--ops: unknown op {unknown[0]!r}; choose from {', '.join(OP_NAMES)}")
    config = TrainConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        method=args.method,
        checkpoint=args.checkpoint,
        epochs=args.epochs,
        search_start=args.search_start,
        batch_size=args.batch_size,
        lr=args.lr,
        arch_lr=args.arch_lr,
        rank=args.rank,
        targets=list(args.targets),
        ops=ops,
        joint=args.joint,
        alpha_pass=args.alpha_pass,
        compile=args.compile,
        arch_data=args.arch_data,
        image_size=args.image_size,
        classes=args.classes,
        queries=args.queries,
        val_fraction=args.val_fraction,
        skip_bad=args.skip_bad,
        device=args.device,
        seed=args.seed,
        resume=args.resume,
        max_steps=args.max_steps,
        workers=args.workers,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )
    out = train(config)
    print(f"run directory: {out}")
    return 0


def _load(args: argparse.Namespace):
    from naslora_deploy.checkpoint import load_adapter

    return load_adapter(args.adapter, args.base, args.allow_base_mismatch, device=args.device)


def _eval(args: argparse.Namespace) -> int:
    from naslora_deploy.data.folder import discover
    from naslora_deploy.evaluate import evaluate

    model = _load(args)
    splits = discover(args.data, model.spec.classes.num_classes if not model.spec.classes.binary else None,
                      val_fraction=0.0, skip_bad=args.skip_bad)
    split = args.split or next(s for s in ("test", "val", "train") if splits.split(s))
    pairs = splits.split(split)
    if not pairs:
        raise ValueError(f"{args.data} has no {split} split")
    metrics = evaluate(model, pairs, model.spec.classes, args.batch_size, args.device)
    result = {"adapter": str(args.adapter), "data": str(args.data), "split": split, "metrics": metrics}
    text = json.dumps(result, indent=2)
    if args.json:
        from naslora_deploy.io import atomic_write_text

        atomic_write_text(Path(args.json), text + "\n")
        print(f"wrote {args.json}")
    else:
        print(text)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from naslora_deploy.architecture import inspection_summary

    summary = inspection_summary(args.adapter, args.plot)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
        return 0
    print(summary["table"])
    if "plot" in summary:
        print(f"plot: {summary['plot']}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from naslora_deploy.merged_files import calibration_images, write_merged

    model = _load(args)
    calibration = None
    if args.calibration:
        calibration = calibration_images(args.calibration, args.calibration_images, model.spec.image_size)
    _, report, written = write_merged(model, args.mode, args.out, calibration, source=str(args.adapter))
    print(report.summary())
    for path in written:
        print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from naslora_deploy.checkpoint import load_adapter
    from naslora_deploy.data.folder import discover
    from naslora_deploy.data.synthetic import write_synthetic_dataset
    from naslora_deploy.evaluate import evaluate
    from naslora_deploy.merged_files import calibration_images, write_merged
    from naslora_deploy.train import TrainConfig, train

    started = time.perf_counter()
    out = Path(args.out)
    data = write_synthetic_dataset(out / "data", count=args.images, seed=args.seed)
    print(f"synthetic data set: {data} ({args.images} training images)")
    run = train(
        TrainConfig(
            data=str(data), out=str(out / "run"), model="vit_tiny", method="nas_pc_lora", epochs=args.epochs,
            search_start=args.search_start, lr=args.lr, seed=args.seed, progress=not args.no_progress,
        )
    )
    model = load_adapter(run)
    test = discover(data, check=False).split("test")
    metrics = evaluate(model, test, model.spec.classes)
    print(f"test set ({len(test)} images): IoU {metrics['iou']:.4f}, Dice {metrics['dice']:.4f}, BER {metrics['ber']:.2f} %")
    calibration = calibration_images(data, 8, model.spec.image_size)
    written = []
    for mode in ("fused", "dense"):
        merged_sam, report, paths = write_merged(
            model, mode, out / "merged" / f"sam_vit_tiny_{mode}.pth", calibration, source=str(run)
        )
        written += paths
        merged_metrics = evaluate(model.with_sam(merged_sam), test, model.spec.classes)
        print()
        print(report.summary())
        print(f"  test IoU after the {mode} merge: {merged_metrics['iou']:.4f} (unmerged {metrics['iou']:.4f})")
    print(f"\nrun directory (best/, last/, metrics.jsonl): {run}")
    for path in written:
        print(f"wrote {path}")
    print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0


def _export(args: argparse.Namespace) -> int:
    from naslora_deploy.exporters.export import ExportSpec, export_artifacts
    from naslora_deploy.exporters.tensorrt_engine import EngineSpec

    engine = EngineSpec(precision=args.precision if args.format == "trt" else "fp16", max_batch=args.max_batch,
                        opt_batch=min(args.opt_batch, args.max_batch), workspace_gb=args.workspace,
                        timing_cache=args.timing_cache)
    triton = args.format == "triton"
    spec = ExportSpec(format="onnx" if triton else args.format, merge=args.merge, precision=args.precision, opset=args.opset,
                      prompts=args.prompts, point_slots=args.point_slots, calibration=args.calibration,
                      calibration_images=args.calibration_images, engine=engine)
    target = Path(args.out) / "artifacts" if triton else Path(args.out)
    out, manifest = export_artifacts(args.source, target, spec, args.model, args.base, args.allow_base_mismatch)
    report = (manifest["merge"] or {}).get("report")
    if report:
        from naslora_deploy.report import MergeReport

        print(MergeReport.from_dict(report).summary())
    for name, entry in manifest["files"].items():
        print(f"wrote {out / name} ({entry['bytes'] / 1e6:.1f} MB)")
    for name, command in manifest["trtexec"].items():
        print(f"trtexec equivalent for {name}: {command}")
    print(f"manifest: {out / 'manifest.json'}")
    if triton:
        from naslora_deploy.exporters.triton import artifacts_to_triton

        repository = artifacts_to_triton(out, Path(args.out) / "model_repository", max_batch=args.max_batch)
        print(f"Triton model repository: {repository} (serve with: tritonserver --model-repository={repository})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from naslora_deploy.exporters.verify import plain_sam_proof, verify_parity

    report = verify_parity(args.artifacts, args.images, args.count, args.seed, args.tolerance)
    print(report.table())
    result = {"parity": [vars(r) | {"passed": r.passed} for r in report.rows], "passed": report.passed}
    if args.against_plain_sam:
        proof = plain_sam_proof(args.artifacts, args.repeats)
        result["against_plain_sam"] = proof
        print(
            f"\nagainst plain SAM ({proof['merge_mode']} merge): identical operators {proof['identical_operators']}, "
            f"initializers {proof['identical_initializers']}, MACs {proof['identical_macs']} "
            f"({proof['candidate']['gmacs']:.3f} vs {proof['reference']['gmacs']:.3f} GMAC)"
        )
        if not proof["plain_sam"]:
            print(f"  extra nodes {proof['extra_nodes']}, extra parameters {proof['extra_parameters']}, "
                  f"extra MACs {proof['extra_gmacs']:.4f} G ({proof['extra_macs_percent']:.2f} %)")
        latency = proof.get("image_encoder_latency")
        if latency:
            print(f"  onnxruntime CPU encoder latency: {latency['artifact_ms']:.1f} ms vs plain {latency['plain_ms']:.1f} ms, "
                  f"ratio {latency['ratio']:.3f} (medians of {latency['repeats']} alternating runs)")
    if args.json:
        from naslora_deploy.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    if not report.passed:
        print("verify: outputs differ from PyTorch past the tolerance", file=sys.stderr)
        return 1
    return 0


def _parse_points(text: Optional[str]):
    if not text:
        return None
    points = []
    for item in text.split(";"):
        values = [float(v) for v in item.split(",")]
        if len(values) not in (2, 3):
            raise ValueError(f"--points item {item!r}: give x,y or x,y,label (label 1 object, 0 background)")
        points.append(tuple(values))
    return points


def _parse_box(text: Optional[str]):
    if not text:
        return None
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise ValueError(f"--box {text!r}: give x0,y0,x1,y1")
    return values


def _predict(args: argparse.Namespace) -> int:
    from naslora_deploy.runtime import Segmenter
    from naslora_deploy.runtime.predict import expand_inputs, predict_files

    segmenter = Segmenter.open(args.artifacts, args.backend, args.device)
    files = expand_inputs(args.inputs)
    print(f"backend: {segmenter.backend_name}; {len(files)} image(s)")
    done, errors = predict_files(segmenter, files, Path(args.out), _parse_points(args.points), _parse_box(args.box),
                                 progress=not args.no_progress)
    for error in errors:
        print(f"naslora-deploy predict: skipped {error}", file=sys.stderr)
    print(f"wrote masks, overlays and results.jsonl for {done} image(s) to {args.out}")
    return 1 if errors else 0


def _bench(args: argparse.Namespace) -> int:
    from naslora_deploy.runtime import Segmenter
    from naslora_deploy.runtime.bench import bench, format_rows

    if len(args.artifacts) > 2:
        raise ValueError("bench compares at most two artifact directories (A B)")
    segmenters = [Segmenter.open(a, args.backend, args.device) for a in args.artifacts]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = bench(segmenters, sizes, args.runs, args.warmup)
    print(format_rows(rows))
    if args.json:
        from naslora_deploy.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(rows, indent=2) + "\n")
    return 0


def _add_adapter_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="a run directory (uses best/, or last/) or one checkpoint directory")
    parser.add_argument("--base", help="the base SAM checkpoint (default: the one recorded at training)")
    parser.add_argument("--allow-base-mismatch", action="store_true", help="accept a base whose sha256 differs")
    parser.add_argument("--device", default="cpu")


def _add_train_parser(commands) -> None:
    p = commands.add_parser("train", help="fine-tune SAM with LoRA / NAS-LoRA / NAS-PC-LoRA on a folder data set")
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (optionally train/ val/ test/)")
    p.add_argument("--model", default="vit_b", help="vit_b, vit_l, vit_h or vit_tiny")
    p.add_argument("--method", default="nas_pc_lora", choices=METHODS)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--checkpoint", help="base SAM checkpoint (.pth or .safetensors); random weights without it")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--search-start", type=int, default=10, help="T_B: epochs of weights-only training before alpha")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--arch-lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=3)
    p.add_argument("--targets", default="qkv", help="projections to adapt, e.g. qkv or qv")
    p.add_argument("--ops", help="comma-separated candidate ops (default: all eight)")
    p.add_argument("--joint", action="store_true", help="update weights and alpha together (Table 9, row 1)")
    p.add_argument(
        "--alpha-pass",
        choices=["second", "same"],
        default="second",
        help="stage 2's alpha gradient: 'second' = a second forward/backward at the updated weights (Alg. 1 as "
        "written, ~2x a step); 'same' = taken from stage 1's backward, at the weights before their update "
        "(first-order, no extra pass)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile each image-encoder block (worth it on CUDA)")
    p.add_argument("--arch-data", default="train", choices=("train", "val"))
    p.add_argument("--image-size", type=int, help="must equal the variant's native size")
    p.add_argument("--classes", type=int, help="number of classes for index masks (default: binary or classes.json)")
    p.add_argument("--queries", type=int, default=0, help="mask queries of the multi-class head (default: K)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or unpaired files with a warning")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last/")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_train)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="naslora-deploy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"naslora-deploy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(commands)

    p = commands.add_parser("eval", help="metrics of a trained adapter on a data set")
    _add_adapter_args(p)
    p.add_argument("--data", required=True)
    p.add_argument("--split", choices=("train", "val", "test"), help="default: test, else val, else train")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--json", help="write the metrics here instead of stdout")
    p.set_defaults(run=_eval)

    p = commands.add_parser("inspect", help="the searched architecture: softmax(alpha) per block and projection")
    p.add_argument("adapter")
    p.add_argument("--plot", help="also draw the operation shares to this PNG")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(run=_inspect)

    p = commands.add_parser("merge", help="fold the adapters into SAM: dense (plain SAM) or fused (exact)")
    _add_adapter_args(p)
    p.add_argument("--mode", required=True, choices=("dense", "fused"))
    p.add_argument("--out", required=True, help="output checkpoint (.pth or .safetensors)")
    p.add_argument("--calibration", help="image folder for the least-squares fold of spatial ops")
    p.add_argument("--calibration-images", type=int, default=16)
    p.set_defaults(run=_merge)

    p = commands.add_parser("export", help="ONNX / TensorRT artifacts from an adapter directory or a SAM checkpoint")
    p.add_argument("source", help="adapter run/checkpoint directory, or a plain SAM checkpoint file (with --model)")
    p.add_argument("--format", default="onnx", choices=("onnx", "trt", "triton"))
    p.add_argument("--out", required=True, help="artifact directory")
    p.add_argument("--model", help="variant of a SAM checkpoint file (vit_b, vit_l, vit_h, vit_tiny)")
    p.add_argument("--merge", default="dense", choices=("dense", "fused"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--prompts", action="store_true", help="also export the promptable decoder")
    p.add_argument("--point-slots", type=int, default=4, help="point prompt slots (plus two for a box)")
    p.add_argument("--calibration", help="image folder for the dense merge's least-squares fold")
    p.add_argument("--calibration-images", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8, help="TensorRT profile: largest batch")
    p.add_argument("--opt-batch", type=int, default=1, help="TensorRT profile: batch to tune for")
    p.add_argument("--workspace", type=float, help="TensorRT workspace limit in GB (Jetson: keep it small)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file, reused across builds")
    p.add_argument("--base", help="base SAM checkpoint of an adapter (default: the recorded one)")
    p.add_argument("--allow-base-mismatch", action="store_true")
    p.set_defaults(run=_export)

    p = commands.add_parser("verify", help="prove the artifacts compute what the PyTorch model computes")
    p.add_argument("artifacts", help="artifact directory written by export")
    p.add_argument("--images", help="image folder (default: seeded generated images)")
    p.add_argument("--count", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, help="max abs error allowed on the embeddings (fp32 default 1e-4)")
    p.add_argument("--against-plain-sam", action="store_true", help="structure and latency against plain build_sam")
    p.add_argument("--repeats", type=int, default=30, help="alternating latency runs (medians are quoted)")
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(run=_verify)

    p = commands.add_parser("predict", help="segment images with an artifact directory (no torch needed)")
    p.add_argument("artifacts")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--device", help="cpu or cuda (default: the best available)")
    p.add_argument("--points", help="point prompts in image pixels: 'x,y[,label];x,y[,label]' (needs --prompts export)")
    p.add_argument("--box", help="box prompt in image pixels: x0,y0,x1,y1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_predict)

    p = commands.add_parser("bench", help="latency, throughput and memory; two artifacts alternate run by run")
    p.add_argument("artifacts", nargs="+", help="one artifact directory, or two to compare (A B)")
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--device")
    p.add_argument("--json", help="also write the figures here")
    p.set_defaults(run=_bench)

    p = commands.add_parser("demo", help="synthetic data -> train vit_tiny (NAS-PC-LoRA) -> eval -> merge both ways")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--search-start", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: run a subcommand; user errors become one line and exit code 2."""
    from naslora_deploy.errors import NasloraError

    args = build_parser().parse_args(argv)
    previous_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        return args.run(args)
    except (NasloraError, ValueError) as exc:
        print(f"naslora-deploy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"naslora-deploy {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    sys.exit(main())
