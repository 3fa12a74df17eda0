"""``naslora-deploy bench`` figures: a dense-merged NAS-PC-LoRA artifact against plain SAM.

Builds the variant with random weights, gives it NAS-PC-LoRA adapters with random
non-zero values, saves an adapter checkpoint and a plain SAM checkpoint, exports
both (dense merge) and runs the runtime's bench with the two alternating.

    python benchmarks/bench_runtime.py [--model vit_tiny] [--runs 20] [--batch-sizes 1,4] [--backend auto]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from naslora_deploy import AdapterConfig, add_adapters, build_sam
from naslora_deploy.common.io import sha256_of
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.runs.checkpoint import RunSpec, save_checkpoint
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.exporters.torch_backend import open_segmenter
from naslora_deploy.runtime.bench import bench, format_rows

try:
    from timing import add_latency_options, parse_batch_sizes, write_record
except ImportError:
    from benchmarks.timing import add_latency_options, parse_batch_sizes, write_record


def make_sources(variant: str, root: Path):
    torch.manual_seed(0)
    sam = build_sam(variant)
    base = root / "base.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(base))
    config = AdapterConfig(method="nas_pc_lora")
    add_adapters(sam, config)
    perturb_adapters(sam, seed=1, b_std=0.02)
    model = SegmentationModel(sam)
    spec = RunSpec(
        variant,
        config,
        image_size=sam.image_encoder.img_size,
        base_checkpoint=str(base),
        base_sha256=sha256_of(base),
        normalization=sam.normalization,
    )
    return save_checkpoint(root / "adapter", model, spec), base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_latency_options(parser)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"runtime_{args.model}_{args.backend}.json"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        adapter, base = make_sources(args.model, root)
        merged, manifest = export_artifacts(adapter, root / "merged", ExportSpec(merge="dense"))
        plain, _ = export_artifacts(base, root / "plain", ExportSpec(), variant=args.model)
        segmenters = [open_segmenter(merged, args.backend), open_segmenter(plain, args.backend)]
        rows = bench(segmenters, parse_batch_sizes(args), args.runs, args.warmup)
    print(f"{args.model}: a = dense-merged NAS-PC-LoRA artifact, b = plain SAM artifact")
    print(format_rows(rows))
    write_record(out, rows, {"merge_report": manifest["merge"]["report"]})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
