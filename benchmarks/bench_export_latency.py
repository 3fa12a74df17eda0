"""Exported image encoders on onnxruntime CPU: dense-merged, fused and plain SAM.

Exports three encoders of one variant (random weights; NAS-PC-LoRA adapters with
random non-zero values, merged dense and fused) and times them alternating in one
process; prints medians and the ratios against plain SAM.

    python benchmarks/bench_export_latency.py [--model vit_b] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from naslora_deploy import AdapterConfig, add_adapters, build_sam
from naslora_deploy.core.adapters.injection import adapted_layers
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.merging.merge import constant_response_folds, dense_copy
from naslora_deploy.exporters.onnx_export import module_to_onnx
from naslora_deploy.exporters.structure import compare_signatures, graph_signature
from naslora_deploy.exporters.wrappers import ImageEncoderGraph
from naslora_deploy.runtime.backends import ort_session

try:
    from timing import alternate, median_ms, write_record
except ImportError:
    from benchmarks.timing import alternate, median_ms, write_record


def encoders(variant: str):
    torch.manual_seed(0)
    plain = build_sam(variant)
    adapted = build_sam(variant)
    add_adapters(adapted, AdapterConfig(method="nas_pc_lora"))
    perturb_adapters(adapted, seed=1)
    layers = dict(adapted_layers(adapted))
    with torch.no_grad():
        dense = dense_copy(adapted, layers, constant_response_folds(layers))
        for index, layer in layers.items():
            adapted.image_encoder.blocks[index].attn.qkv = layer.fused()
    return {"plain": plain.image_encoder, "dense": dense.image_encoder, "fused": adapted.image_encoder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"export_latency_{args.model}.json"
    with tempfile.TemporaryDirectory() as tmp:
        modules = encoders(args.model)
        size = modules["plain"].img_size
        image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        paths = {
            name: module_to_onnx(
                ImageEncoderGraph(m),
                (torch.from_numpy(image),),
                Path(tmp) / f"{name}.onnx",
                ["image"],
                ["image_embeddings"],
            )
            for name, m in modules.items()
        }
        signatures = {name: graph_signature(p) for name, p in paths.items()}
        sessions = {name: ort_session(p, "CPUExecutionProvider") for name, p in paths.items()}
        times = alternate(
            {name: (lambda s=s: s.run(None, {"image": image})) for name, s in sessions.items()},
            args.repeats,
            warmup=1,
        )
    plain = median_ms(times["plain"])
    rows = []
    for name in ("plain", "dense", "fused"):
        structure = compare_signatures(signatures[name], signatures["plain"])
        rows.append(
            {
                "encoder": name,
                "median_ms": median_ms(times[name]),
                "over_plain": median_ms(times[name]) / plain,
                "gmacs": signatures[name].macs / 1e9,
                "extra_nodes": structure["extra_nodes"],
                "extra_parameters": structure["extra_parameters"],
                "extra_macs_percent": structure["extra_macs_percent"],
            }
        )
    print(f"{args.model} image encoder, onnxruntime CPU, batch 1, median of {args.repeats} alternating runs")
    for r in rows:
        print(
            f"  {r['encoder']:<6} {r['median_ms']:>9.1f} ms  {r['over_plain']:.3f}x plain  {r['gmacs']:.2f} "
            "GMAC  "
            f"+{r['extra_parameters']} params  +{r['extra_macs_percent']:.3f} % MACs  extra nodes "
            f"{r['extra_nodes']}"
        )
    write_record(out, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
