"""Add NAS-PC-LoRA adapters to SAM, then merge them both ways and read the reports.

python examples/quickstart.py [vit_tiny|vit_b|vit_l|vit_h] [checkpoint.pth]
"""

import sys

import torch

from naslora_deploy import (
    AdapterConfig,
    add_adapters,
    architecture_parameters,
    build_sam,
    merge,
    probe_images,
    trainable_summary,
    weight_parameters,
)


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else "vit_tiny"
    checkpoint = sys.argv[2] if len(sys.argv) > 2 else None
    sam = build_sam(variant, checkpoint)
    add_adapters(sam, AdapterConfig(method="nas_pc_lora", rank=3))
    print(trainable_summary(sam))

    # The two optimisers of the paper's Alg. 1 (training itself comes with `naslora-deploy train`).
    weights = torch.optim.Adam(weight_parameters(sam), lr=1e-4, weight_decay=1e-4)
    alphas = torch.optim.Adam(architecture_parameters(sam), lr=1e-3, weight_decay=1e-3)
    print(
        f"{len(weights.param_groups[0]['params'])} weight tensors, {len(alphas.param_groups[0]['params'])} "
        "alpha vectors"
    )

    fused, report = merge(sam, "fused")
    print(report.summary())
    calibration = probe_images(sam.image_encoder.img_size, 2, seed=1)  # use real preprocessed images here
    plain, report = merge(sam, "dense", calibration=calibration)
    print(report.summary())
    torch.save(plain.state_dict(), f"sam_{variant}_merged.pth")
    report.save(f"sam_{variant}_merged.report.json")


if __name__ == "__main__":
    main()
