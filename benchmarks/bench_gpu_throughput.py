"""Throughput of a dense-merged NAS-PC-LoRA SAM (encoder + prompt-free decoder) on a GPU.

Target (our issue): on one H100, merged ``vit_b`` encoder + prompt-free decoder at
>= 250 images/s at batch 8, with the fraction of the FLOP limit reached reported
(vit_b at 1024: 486.04 GMAC = 972 GFLOP per image; H100 SXM dense bf16 ~989 TFLOP/s).

Builds the model with random weights, adds NAS-PC-LoRA adapters with random
non-zero values, dense-merges them (plain SAM weights, ``merge(sam, "dense")``)
and times ``SegmentationModel.forward`` (eval, no_grad) in four configurations,
alternating: fp32 eager; bf16 autocast eager; bf16 + SDPA attention
(``naslora_deploy.exporters.fast_attention``); bf16 + SDPA + ``torch.compile``. FLOPs per
image are counted with ``FlopCounterMode`` on one eager fp32 forward at batch 1.

    python benchmarks/bench_gpu_throughput.py [--model vit_b] [--batch 8] [--runs 20] [--warmup 3]
        [--compile-mode max-autotune-no-cudagraphs|default|reduce-overhead|none] [--peak-tflops 989]
    python benchmarks/bench_gpu_throughput.py --device cpu --model vit_tiny --batch 2 --runs 2   # smoke only
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from naslora_deploy import AdapterConfig, add_adapters, build_sam, merge
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.exporters.fast_attention import use_sdpa

try:
    from timing import alternate, median_ms, write_record
except ImportError:
    from benchmarks.timing import alternate, median_ms, write_record

TARGET_IMAGES_PER_S = 250.0
TARGET_MODEL, TARGET_BATCH = "vit_b", 8
# The figure: the vit_b image encoder alone (bench_export_latency.py's ONNX count); the
# prompt-free decoder adds ~1.8 GMAC (FlopCounterMode counts 487.83 for encoder + decoder).
STATED_GMAC_PER_IMAGE = {("vit_b", 1024): 486.04}


def parse_args() -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--compile-mode",
        default="max-autotune-no-cudagraphs",
        help='torch.compile mode; "none" skips the compiled configuration',
    )
    parser.add_argument(
        "--compile-on-cpu", action="store_true", help="also compile on CPU (slow; checks the code path)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU, TFLOP/s"
    )
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def merged_model(variant: str, device: torch.device):
    """A SegmentationModel over the dense-merged plain SAM, in eval mode, and the merge report."""
    torch.manual_seed(0)
    sam = build_sam(variant)
    add_adapters(sam, AdapterConfig(method="nas_pc_lora"))
    perturb_adapters(sam, seed=1, b_std=0.02)
    sam = sam.to(device)
    merged_sam, report = merge(sam, "dense", probe_count=1)
    model = SegmentationModel(sam).with_sam(merged_sam).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, report


def count_gmac_per_image(model, image_size: int, device: torch.device) -> float:
    """GMAC of one eager fp32 forward at batch 1, counted by FlopCounterMode (matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.randn(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(image)
    return counter.get_total_flops() / 2 / 1e9


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_fn(model, images: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """One synchronised, no_grad forward of ``model`` on ``images``, optionally under bf16 autocast."""
    device = images.device

    def run() -> None:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            model(images)
        synchronize(device)

    return run


def configurations(model, images: torch.Tensor, args) -> tuple:
    """(contenders to time, skipped configurations with reasons, compile warm-up seconds)."""
    device = images.device
    sdpa_model = copy.deepcopy(model)
    use_sdpa(sdpa_model.sam.image_encoder)
    contenders: Dict[str, Callable[[], None]] = {
        "fp32 eager": forward_fn(model, images, bf16=False),
        "bf16 autocast eager": forward_fn(model, images, bf16=True),
        "bf16 autocast + SDPA": forward_fn(sdpa_model, images, bf16=True),
    }
    skipped: Dict[str, str] = {}
    compile_s: Dict[str, float] = {}
    name = f"bf16 autocast + SDPA + compile ({args.compile_mode})"
    if args.compile_mode == "none":
        skipped[name] = "--compile-mode none"
    elif device.type != "cuda" and not args.compile_on_cpu:
        skipped[name] = "torch.compile is timed on CUDA only (pass --compile-on-cpu to exercise it here)"
    else:
        compiled = torch.compile(
            sdpa_model, mode=None if args.compile_mode == "default" else args.compile_mode
        )
        contenders[name] = forward_fn(compiled, images, bf16=True)
        start = time.perf_counter()
        for _ in range(2):  # compilation and autotuning happen here, outside any timing
            contenders[name]()
        compile_s[name] = time.perf_counter() - start
    return contenders, skipped, compile_s


def peak_memory_mib(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """torch.cuda.max_memory_allocated over one call of ``fn``, in MiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return torch.cuda.max_memory_allocated(device) / 2**20


def throughput_row(
    name: str, samples: List[float], batch: int, gmac: Dict[str, Optional[float]], peak_tflops: float
) -> dict:
    """images/s, ms per batch, achieved TFLOP/s (counted and stated GMAC) and the fraction of peak."""
    ms = median_ms(samples)
    images_per_s = 1000.0 * batch / ms
    tflops = {key: (images_per_s * 2 * value / 1e3 if value else None) for key, value in gmac.items()}
    return {
        "config": name,
        "status": "measured",
        "batch": batch,
        "runs": len(samples),
        "median_ms_per_batch": round(ms, 3),
        "images_per_s": round(images_per_s, 2),
        "tflops_counted": _round(tflops["counted"]),
        "tflops_stated": _round(tflops["stated"]),
        "peak_fraction_counted": _round(tflops["counted"] and tflops["counted"] / peak_tflops, 4),
        "peak_fraction_stated": _round(tflops["stated"] and tflops["stated"] / peak_tflops, 4),
    }


def _round(value: Optional[float], digits: int = 2) -> Optional[float]:
    return None if value is None else round(value, digits)


def tensorrt_status() -> str:
    """The importable TensorRT version, or why not (TensorRT is timed by the export benchmarks)."""
    try:
        import tensorrt

        return f"tensorrt {tensorrt.__version__} importable (TensorRT path measured elsewhere)"
    except Exception as error:  # ImportError, or a broken install raising something else
        return f"not importable: {type(error).__name__}: {error}"


def device_row(device: torch.device, args) -> dict:
    """What the figures were taken on."""
    row = {
        "config": "device",
        "device": str(device),
        "tensorrt": tensorrt_status(),
        "fp32_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "peak_tflops_assumed": args.peak_tflops,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return row


def target_row(rows: List[dict], args, device: torch.device, image_size: int) -> dict:
    """Whether the >= 250 images/s target is met: None where this run cannot say."""
    measured = [r for r in rows if r.get("status") == "measured"]
    best = max(measured, key=lambda r: r["images_per_s"]) if measured else None
    row = {
        "config": "target",
        "target": f">= {TARGET_IMAGES_PER_S:g} images/s, {TARGET_MODEL} at 1024, batch {TARGET_BATCH}, H100",
        "best_config": best and best["config"],
        "best_images_per_s": best and best["images_per_s"],
    }
    if device.type != "cuda":
        return {
            **row,
            "met": None,
            "reason": "not measured: the target needs a CUDA GPU (H100); this was a CPU smoke run",
        }
    if (args.model, args.batch, image_size) != (TARGET_MODEL, TARGET_BATCH, 1024):
        return {
            **row,
            "met": None,
            "reason": f"not the target setting (ran {args.model}, batch {args.batch}, {image_size} px)",
        }
    gpu = torch.cuda.get_device_name(device)
    row["met"] = bool(best and best["images_per_s"] >= TARGET_IMAGES_PER_S)
    if "H100" not in gpu:
        row["reason"] = f"measured on {gpu}, not an H100"
    return row


def print_rows(rows: List[dict]) -> None:
    """A readable table of the rows."""
    for row in rows:
        if row.get("status") == "measured":
            frac = row["peak_fraction_counted"]
            print(
                f"  {row['config']:<52} {row['median_ms_per_batch']:>10.2f} ms/batch "
                f"{row['images_per_s']:>9.2f} img/s "
                f"{row['tflops_counted']:>8.2f} TFLOP/s ({100 * frac:.2f} % of peak)  "
                f"mem {row['max_memory_allocated_mib']} MiB  compile {row.get('compile_s')}"
            )
        elif row.get("status") == "skipped":
            print(f"  {row['config']:<52} skipped: {row['reason']}")
        else:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type != "cuda":
        print(
            f"NOTE: running on {device}: a smoke run only. The {TARGET_IMAGES_PER_S:g} images/s target needs "
            "a CUDA GPU (H100)."
        )
    out = args.out or Path(__file__).parent / "results" / f"gpu_throughput_{args.model}_{device.type}.json"
    model, report = merged_model(args.model, device)
    image_size = model.image_size
    counted = count_gmac_per_image(model, image_size, device)
    gmac = {"counted": counted, "stated": STATED_GMAC_PER_IMAGE.get((args.model, image_size))}
    images = torch.randn(
        args.batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)
    ).to(device)
    contenders, skipped, compile_s = configurations(model, images, args)
    memory = {name: peak_memory_mib(fn, device) for name, fn in contenders.items()}
    times = alternate(contenders, args.runs, warmup=args.warmup)

    rows = [
        device_row(device, args),
        {
            "config": "model",
            "model": args.model,
            "image_size": image_size,
            "merge": "dense",
            "merge_embedding_rel_error": report.embedding_rel_error,
            "gmac_per_image_counted": round(counted, 2),
            "gmac_per_image_stated_encoder_only": gmac["stated"],
            "flop_count": "FlopCounterMode, one eager fp32 forward at batch 1 (matmul/conv/attention only)",
        },
    ]
    for name, samples in times.items():
        row = throughput_row(name, samples, args.batch, gmac, args.peak_tflops)
        row.update(max_memory_allocated_mib=_round(memory[name], 1), compile_s=_round(compile_s.get(name), 1))
        rows.append(row)
    rows += [{"config": name, "status": "skipped", "reason": reason} for name, reason in skipped.items()]
    rows.append(target_row(rows, args, device, image_size))
    print(
        f"{args.model} encoder + prompt-free decoder, dense-merged NAS-PC-LoRA, batch {args.batch}, "
        f"{args.runs} runs (medians):"
    )
    print_rows(rows)
    write_record(out, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
