"""Edge speed: plain and dense-merged LiteMedSAM against vit_tiny and SAM vit_b at 1024, onnxruntime CPU.

Each contender is exported (encoder + prompt-free decoder, fp32 ONNX) and run through the
runtime's own onnxruntime backend on the CPU at batch 1, all contenders alternating
run by run; medians, images per second, and the ratio to plain LiteMedSAM.
LiteMedSAM runs on its real bundled weights (dense: random non-zero NAS-PC-LoRA adapters
merged in, which is what matters for speed); vit_tiny and vit_b have random weights.

    python benchmarks/bench_edge.py [--runs 5] [--skip-vit-b]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from naslora_deploy.core.model.variants import VARIANTS
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.runtime import Segmenter

try:
    from bench_runtime import make_sources
    from timing import alternate, median_ms, median_ratio, write_record
except ImportError:
    from benchmarks.bench_runtime import make_sources
    from benchmarks.timing import alternate, median_ms, median_ratio, write_record


def export_contenders(root: Path, with_vit_b: bool) -> dict:
    """Contender name -> artifact directory."""
    for name in ("litemedsam", "tiny", "vit_b"):
        (root / name).mkdir()
    asset = VARIANTS["litemedsam"].pretrained_checkpoint()
    adapter, _ = make_sources("litemedsam", root / "litemedsam")
    artifacts = {
        "litemedsam plain": export_artifacts(asset, root / "lm_plain", ExportSpec(), variant="litemedsam")[0],
        "litemedsam dense-merged": export_artifacts(adapter, root / "lm_dense", ExportSpec(merge="dense"))[0],
    }
    tiny, _ = make_sources("vit_tiny", root / "tiny")
    artifacts["vit_tiny plain"] = export_artifacts(tiny, root / "tiny_art", ExportSpec(merge="dense"))[0]
    if with_vit_b:
        _, base = make_sources("vit_b", root / "vit_b")
        artifacts["vit_b plain (1024)"] = export_artifacts(
            base, root / "vit_b_art", ExportSpec(), variant="vit_b"
        )[0]
    return artifacts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--skip-vit-b", action="store_true", help="vit_b at 1024 takes ~20 s per run on 2 cores"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "edge_latency_cpu.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = export_contenders(Path(tmp), not args.skip_vit_b)
        rng = np.random.default_rng(0)
        steps, sizes = {}, {}
        for name, directory in artifacts.items():
            seg = Segmenter.open(directory, backend="onnxruntime", device="cpu")
            batch = rng.standard_normal((1, 3, seg.image_size, seg.image_size)).astype(np.float32)
            steps[name] = lambda s=seg, b=batch: s.backend.decode(s.backend.encode(b))
            sizes[name] = seg.image_size
        times = alternate(steps, args.runs, warmup=args.warmup)
    reference = times["litemedsam plain"]
    rows = []
    print(f"onnxruntime CPU, batch 1, encoder + prompt-free decoder, medians of {args.runs} alternating runs")
    for name, samples in times.items():
        ms = median_ms(samples)
        row = {
            "contender": name,
            "image_size": sizes[name],
            "median_ms": ms,
            "images_per_s": 1000.0 / ms,
            "over_litemedsam_plain": median_ratio(samples, reference),
        }
        rows.append(row)
        print(
            f"  {name:<26} {sizes[name]:>5} px {ms:>10.1f} ms {row['images_per_s']:>8.2f} img/s "
            f"{row['over_litemedsam_plain']:>7.3f}x litemedsam plain"
        )
    write_record(args.out, rows, {"runs": args.runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
