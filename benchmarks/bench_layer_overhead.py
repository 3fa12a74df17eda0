"""One adapted qkv layer, forward + backward: NAS-PC-LoRA against LoRA at a chosen width.

python benchmarks/bench_layer_overhead.py [--dim 128] [--grid 16] [--batch 4] [--repeats 100]
"""

from __future__ import annotations

import argparse

import torch

from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.layers import AdaptedQKV

try:
    from timing import alternate, median_ms
except ImportError:
    from benchmarks.timing import alternate, median_ms


def layer(method: str, dim: int) -> AdaptedQKV:
    torch.manual_seed(0)
    qkv = AdaptedQKV(torch.nn.Linear(dim, 3 * dim), AdapterConfig(method=method))
    for adapter in qkv.adapters.values():
        torch.nn.init.normal_(adapter.lora_B, std=0.02)
    qkv.base_layer.requires_grad_(False)
    return qkv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    x = torch.randn(args.batch, args.grid, args.grid, args.dim, requires_grad=True)
    layers = {m: layer(m, args.dim) for m in ("lora", "nas_pc_lora")}
    times = alternate(
        {m: (lambda layer=layer: layer(x).sum().backward()) for m, layer in layers.items()},
        args.repeats,
        warmup=5,
    )
    medians = {m: median_ms(t) for m, t in times.items()}
    print(
        f"qkv layer dim {args.dim}, input ({args.batch},{args.grid},{args.grid},{args.dim}), fwd+bwd, "
        f"median of {args.repeats}: lora {medians['lora']:.2f} ms, nas_pc_lora {medians['nas_pc_lora']:.2f} "
        "ms, "
        f"ratio {medians['nas_pc_lora'] / medians['lora']:.2f}"
    )


if __name__ == "__main__":
    main()
