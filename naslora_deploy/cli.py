"""The ``naslora-deploy`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from naslora_deploy import __version__


def _demo(args: argparse.Namespace) -> int:
    import torch

    from naslora_deploy import AdapterConfig, add_adapters, build_sam, merge, probe_images, trainable_summary
    from naslora_deploy.io import atomic_write
    from naslora_deploy.testing import perturb_adapters

    torch.manual_seed(args.seed)
    sam = build_sam("vit_tiny")
    config = AdapterConfig(method=args.method, seed=args.seed)
    add_adapters(sam, config)
    print(f"vit_tiny + {config.method} adapters (rank {config.rank}, targets {''.join(config.targets)})")
    print(trainable_summary(sam))
    perturb_adapters(sam, seed=args.seed)
    print("adapters set to random non-zero values (a stand-in for training, which a later release adds)")
    results = {}
    for mode, calibration in (("fused", None), ("dense", None), ("dense", "calibrated")):
        images = probe_images(sam.image_encoder.img_size, 4, seed=args.seed + 1) if calibration else None
        merged, report = merge(sam, mode, calibration=images)
        print()
        print(report.summary())
        results[f"{mode}{'-' + calibration if calibration else ''}"] = (merged, report)
    if args.out:
        out = Path(args.out)
        for name, (merged, report) in results.items():
            atomic_write(out / f"vit_tiny_{name}.pth", lambda tmp, m=merged: torch.save(m.state_dict(), tmp))
            report.save(out / f"vit_tiny_{name}.report.json")
        print(f"\nwrote merged checkpoints and reports to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="naslora-deploy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"naslora-deploy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="build vit_tiny, add adapters, merge both ways, print the fidelity reports")
    demo.add_argument("--out", help="also write the merged checkpoints and JSON reports here")
    demo.add_argument("--method", default="nas_pc_lora", choices=("lora", "nas_lora", "nas_pc_lora"))
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: run a subcommand; user errors become one line and exit code 2."""
    from naslora_deploy.errors import NasloraError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (NasloraError, ValueError) as exc:
        print(f"naslora-deploy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"naslora-deploy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
