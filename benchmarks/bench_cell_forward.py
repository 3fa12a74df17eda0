"""Unmerged adapter forward on the CPU: kernel-space mixing vs the naive sum of ops,
and NAS-PC-LoRA vs plain LoRA. Timings alternate the contenders; medians and ratios.

    python benchmarks/bench_cell_forward.py [--repeats 15] [--out benchmarks/results/cell_forward.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from naslora_deploy import AdapterConfig, add_adapters, build_sam, set_cell_forward
from naslora_deploy.core.adapters.layers import AdaptedQKV
from naslora_deploy.core.adapters.testing import perturb_adapters

try:
    from timing import alternate, median_ms, write_record
except ImportError:  # run as a module from the repository root
    from benchmarks.timing import alternate, median_ms, write_record

# vit_b's qkv inputs: a global block sees 64x64 tokens, a windowed block 25 zero-padded 14x14 windows.
SHAPES = {
    "vit_b global block (1,64,64,768)": (1, 64, 64, 768),
    "vit_b windowed block (25,14,14,768)": (25, 14, 14, 768),
}


def qkv_layer(method: str, seed: int = 0) -> AdaptedQKV:
    torch.manual_seed(seed)
    layer = AdaptedQKV(torch.nn.Linear(768, 2304), AdapterConfig(method=method, seed=seed))
    with torch.no_grad():
        for adapter in layer.adapters.values():
            adapter.lora_B.normal_(0, 0.02)
    return layer


def step(layer: AdaptedQKV, x: torch.Tensor, train: bool, branch_only: bool):
    fn = layer.delta if branch_only else layer

    def run():
        if train:
            layer.zero_grad(set_to_none=True)
            fn(x).pow(2).mean().backward()
        else:
            with torch.no_grad():
                fn(x)

    return run


def layer_rows(repeats: int) -> list:
    rows = []
    for shape_name, shape in SHAPES.items():
        x = torch.randn(shape)
        for train in (False, True):
            for branch_only in (True, False):
                what = ("branch only" if branch_only else "qkv layer") + (
                    ", fwd+bwd" if train else ", forward"
                )
                pc_naive = qkv_layer("nas_pc_lora")
                pc_naive.cell_forward = "naive"
                pc_kernel = qkv_layer("nas_pc_lora")
                lora = qkv_layer("lora")
                times = alternate(
                    {
                        "naive": step(pc_naive, x, train, branch_only),
                        "kernel": step(pc_kernel, x, train, branch_only),
                        "lora": step(lora, x, train, branch_only),
                    },
                    repeats,
                )
                medians = {k: median_ms(v) for k, v in times.items()}
                rows.append(
                    {
                        "input": shape_name,
                        "what": what,
                        "naive_ms": medians["naive"],
                        "kernel_ms": medians["kernel"],
                        "lora_ms": medians["lora"],
                        "kernel_over_naive": medians["kernel"] / medians["naive"],
                        "pc_kernel_over_lora": medians["kernel"] / medians["lora"],
                    }
                )
    return rows


def encoder_rows(repeats: int) -> list:
    images = torch.randn(2, 3, 256, 256)
    models = {}
    for method in ("nas_pc_lora", "lora"):
        sam = build_sam("vit_tiny")
        add_adapters(sam, AdapterConfig(method=method))
        perturb_adapters(sam)
        models[method] = sam
    naive = build_sam("vit_tiny")
    add_adapters(naive, AdapterConfig(method="nas_pc_lora"))
    perturb_adapters(naive)
    set_cell_forward(naive, "naive")

    def forward(sam):
        def run():
            with torch.no_grad():
                sam.image_encoder(images)

        return run

    times = alternate(
        {"naive": forward(naive), "kernel": forward(models["nas_pc_lora"]), "lora": forward(models["lora"])},
        repeats,
    )
    medians = {k: median_ms(v) for k, v in times.items()}
    return [
        {
            "input": "vit_tiny image encoder, batch 2 at 256",
            "what": "whole encoder, forward",
            "naive_ms": medians["naive"],
            "kernel_ms": medians["kernel"],
            "lora_ms": medians["lora"],
            "kernel_over_naive": medians["kernel"] / medians["naive"],
            "pc_kernel_over_lora": medians["kernel"] / medians["lora"],
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cell_forward.json")
    args = parser.parse_args()
    rows = layer_rows(args.repeats) + encoder_rows(args.repeats)
    header = (
        f"{'input':<38} {'what':<24} {'naive ms':>9} {'kernel ms':>9} {'lora ms':>8} "
        f"{'kern/naive':>10} {'pc/lora':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['input']:<38} {r['what']:<24} {r['naive_ms']:>9.2f} {r['kernel_ms']:>9.2f} "
            f"{r['lora_ms']:>8.2f} "
            f"{r['kernel_over_naive']:>10.2f} {r['pc_kernel_over_lora']:>8.2f}"
        )
    write_record(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
