"""PEFT interop: a run as a PEFT LoRA adapter for transformers' ``SamModel``, and back.

transformers' ``SamVisionAttention`` keeps one fused ``qkv`` Linear per block, as
segment-anything does, with the same [q | k | v] rows, so a PEFT LoRA on
``vision_encoder.layers.{i}.attn.qkv`` holds our adapters exactly. Our block i
adds ``B_t A_t x`` to the rows of each adapted projection t (A_t: (r, C), B_t: (d, r)).
PEFT adds ``s * B A x`` (s = lora_alpha / R). We write, for T adapted projections:

    R = T * r,  A = [A_t1; A_t2; ...] (R, C),  B (3d, R): B_t at (rows of t, columns j*r..(j+1)*r), else 0,
    lora_alpha = R, so s = 1.0 exactly and  s * B A = sum_t rows_t <- B_t A_t.

Block-diagonal B, nothing rescaled: the tensors are ours, bit for bit. NAS-LoRA and
NAS-PC-LoRA runs go through the dense merge (``core.merging.merge``): each projection's
delta ``W_d M W_e`` has rank <= r; a truncated SVD of rank r' (default r) per
projection gives the same block form, its relative reconstruction error is written
to ``merge_report.json`` with the merge's own fidelity report; a fold's intercept
(calibrated merges) goes to ``lora_B.bias`` (PEFT ``lora_bias``). The trained mask
decoder is saved whole (PEFT ``modules_to_save``), under transformers' names.

The way back (``read_peft_adapter``) accepts any PEFT LoRA that only touches the
vision encoder's qkv (and optionally saves the mask decoder): block-diagonal B gives
rank R/T per projection; any other B gives rank R per projection with A shared
(A_t = A, B_t = s * B[rows of t]): exact too. Everything else is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import atomic_write_text, read_json, write_directory
from naslora_deploy.common.outputs import prepare_output_dir
from naslora_deploy.core.adapters.config import TARGETS
from naslora_deploy.core.adapters.injection import adapted_layers, attention_blocks
from naslora_deploy.core.merging.run import merge_run
from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.core.model.variants import VARIANTS, VariantSpec
from naslora_deploy.core.model.weights import segment_anything_to_hf
from naslora_deploy.core.runs.checkpoint import load_adapter
from naslora_deploy.core.runs.peft_adapter import (
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    PREFIX,
    Factors,
    _metadata,
)

REPORT_NAME = "merge_report.json"
FORMAT = "naslora-deploy-peft/1"  # safetensors metadata key "naslora_deploy": what wrote the file


def qkv_key(block: int, part: str, kind: str = "weight") -> str:
    """The PEFT key of block ``block``'s qkv ``lora_A`` / ``lora_B`` tensor."""
    return f"{PREFIX}vision_encoder.layers.{block}.attn.qkv.lora_{part}.{kind}"


def block_form(
    factors: Dict[str, Tuple[torch.Tensor, torch.Tensor]], dim: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One block's PEFT (A (T*r, C), B (3*dim, T*r)) from its per-projection (A_t, B_t), in q, k, v order."""
    targets = [t for t in TARGETS if t in factors]
    rank = factors[targets[0]][0].shape[0]
    lora_a = torch.cat([factors[t][0] for t in targets])
    lora_b = lora_a.new_zeros(3 * dim, len(targets) * rank)
    for j, target in enumerate(targets):
        row = TARGETS.index(target) * dim
        lora_b[row : row + dim, j * rank : (j + 1) * rank] = factors[target][1]
    return lora_a.contiguous(), lora_b.contiguous()


def lora_factors(sam) -> Factors:
    """Plain LoRA's own (A_t, B_t) of every adapted block and projection (SAM ViT qkv layout)."""

    return {
        i: {t: (a.lora_A.detach().cpu(), a.lora_B.detach().cpu()) for t, a in layer.adapters.items()}
        for i, layer in adapted_layers(sam)
    }


def svd_factors(delta: torch.Tensor, rank: int) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-``rank`` truncated SVD of a (d, C) float64 delta: A (rank, C), B (d, rank) float32, and the
    relative Frobenius error ||delta - B A|| / ||delta|| (0 for a zero delta). sqrt(S) goes to both."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    lora_b, lora_a = u[:, :rank] * root, root[:, None] * vh[:rank]
    norm = float(delta.norm())
    error = float((delta - lora_b @ lora_a).norm()) / norm if norm > 0 else 0.0
    return lora_a.float(), lora_b.float(), error


def merged_factors(model, merged, rank: int) -> Tuple[Factors, Dict[int, torch.Tensor], List[dict]]:
    """Per adapted block and projection, the SVD factors of the dense merge's qkv delta; the bias deltas
    (intercepts) of blocks that have one; and one report row per projection."""

    blocks = [b for _, b in attention_blocks(merged.sam.image_encoder)]
    factors: Factors = {}
    biases, rows = {}, []
    for index, layer in adapted_layers(model.sam):
        base, folded = layer.base_layer, blocks[index].attn.qkv
        delta = folded.weight.detach().double().cpu() - base.weight.detach().double().cpu()
        dim = delta.shape[0] // 3
        factors[index] = {}
        for target in layer.adapters:
            row = TARGETS.index(target) * dim
            lora_a, lora_b, error = svd_factors(delta[row : row + dim], rank)
            factors[index][target] = (lora_a, lora_b)
            rows.append({"block": index, "projection": target, "relative_error": error})
        if base.bias is not None and not torch.equal(folded.bias, base.bias):
            biases[index] = (folded.bias.detach().double() - base.bias.detach().double()).float().cpu()
    return factors, biases, rows


def peft_config(blocks: Sequence[int], rank: int, lora_bias: bool, decoder: bool = True) -> dict:
    """The ``adapter_config.json`` of a PEFT LoRA on the given blocks' qkv, scaling 1 (lora_alpha = r)."""
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": [f"vision_encoder.layers.{i}.attn.qkv" for i in blocks],
        "modules_to_save": ["mask_decoder"] if decoder else None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    if lora_bias:  # only then: older PEFT versions refuse the unknown field
        config["lora_bias"] = True
    return config


def peft_export_names(folder: Union[str, Path]) -> Optional[set]:
    """The names ``run_to_peft`` wrote into ``folder``, or None if its weights carry no naslora-deploy tag."""
    path = Path(folder) / PEFT_WEIGHTS_NAME
    if _metadata(path).get("format") != FORMAT:
        return None
    return {PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, REPORT_NAME}


def _check_exportable(model) -> None:

    spec = model.spec
    if not isinstance(VARIANTS.get(spec.variant), VariantSpec):
        raise NasloraError(
            f"--format peft: {spec.variant} has no transformers SamModel (it has a TinyViT encoder); "
            "export a SAM ViT run (vit_b, vit_l, vit_h, vit_tiny) or use --format onnx"
        )
    if model.class_head is not None:
        raise NasloraError("--format peft: a multi-class run's class head has no place in SamModel; use onnx")
    if not spec.adapter.has_adapters:
        what = "full fine-tuning" if spec.adapter.trains_encoder else "a decoder-only"
        raise NasloraError(f"--format peft: {what} run has no adapters; use merge (plain SAM) instead")


def run_to_peft(
    run_dir: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    replace: bool = False,
    base_checkpoint=None,
    allow_base_mismatch: bool = False,
    merge: Optional[MergeSpec] = None,
    calibration=None,
    svd_rank: Optional[int] = None,
) -> Path:
    """Write a run (or checkpoint) directory as a PEFT LoRA adapter for transformers' ``SamModel``.

    ``out_dir`` gets ``adapter_config.json`` and ``adapter_model.safetensors`` (plus
    ``merge_report.json`` for NAS runs), written in a temporary folder and swapped in
    whole; an existing folder must be an earlier PEFT export and needs ``replace``.
    LoRA: exact. NAS: ``merge_run`` with ``merge`` (a dense ``MergeSpec``: its calibration
    folder and recovery; ``calibration``: images already read, in place of its folder),
    then a rank-``svd_rank`` (default: the run's rank) SVD per projection. Returns ``out_dir``.
    """
    if Path(run_dir).is_file():
        raise NasloraError(f"--format peft exports a run or checkpoint directory; {run_dir} is a file")
    folder = prepare_output_dir(out_dir, kind="PEFT adapter", earlier=peft_export_names, replace=replace)
    model = load_adapter(run_dir, base_checkpoint, allow_base_mismatch)
    _check_exportable(model)
    config, report = model.spec.adapter, None
    if config.method == "lora":
        factors, biases, decoder_sam = lora_factors(model.sam), {}, model.sam
    else:
        factors, biases, report, decoder_sam = _nas_factors(
            model, merge or MergeSpec(), calibration, svd_rank or config.rank
        )
    dim = model.sam.image_encoder.patch_embed.proj.out_channels  # d: qkv has 3 * d rows
    tensors = peft_tensors(factors, biases, decoder_sam.mask_decoder, dim)
    rank = tensors[qkv_key(min(factors), "A")].shape[0]  # R = T * r'
    record = {
        "format": FORMAT,
        "variant": model.spec.variant,
        "method": config.method,
        "targets": list(config.targets),
        "rank": rank // len(config.targets),
        "source": str(run_dir),
        "base_sha256": model.spec.base_sha256,
        "base_random": model.spec.base_random,
    }
    _write(folder, tensors, peft_config(sorted(factors), rank, bool(biases)), record, report)
    return Path(out_dir)


def peft_tensors(factors: Factors, biases: Dict[int, torch.Tensor], mask_decoder, dim: int) -> dict:
    """The ``adapter_model.safetensors`` tensors: each block's block-form A and B (and intercept bias),
    and the segment-anything ``mask_decoder``'s state under transformers' names."""

    tensors = {}
    for index, per_target in factors.items():
        tensors[qkv_key(index, "A")], tensors[qkv_key(index, "B")] = block_form(per_target, dim)
        if index in biases:
            tensors[qkv_key(index, "B", "bias")] = biases[index]
    decoder = {f"mask_decoder.{k}": v.detach().cpu() for k, v in mask_decoder.state_dict().items()}
    tensors.update({PREFIX + k: v for k, v in segment_anything_to_hf(decoder).items()})
    return tensors


def peft_manifest(out_dir: Union[str, Path]) -> dict:
    """A PEFT export described as ``export`` describes artifacts: ``files`` (name -> bytes), ``merge``
    (``{"report": ...}``: the dense merge's, NAS runs only) and an empty ``trtexec``."""
    out_dir = Path(out_dir)
    report = out_dir / REPORT_NAME
    merge_report = read_json(report, "PEFT merge report") if report.is_file() else None
    if merge_report is not None:
        merge_report = merge_report.get("merge") if isinstance(merge_report, dict) else None
        if not isinstance(merge_report, dict):
            raise NasloraError(f"{report} holds no 'merge' object; export the PEFT adapter again")
    files = {p.name: {"bytes": p.stat().st_size} for p in sorted(out_dir.iterdir()) if p.is_file()}
    return {
        "format": "peft",
        "files": files,
        "merge": {"report": merge_report} if merge_report else None,
        "trtexec": {},
    }


def _nas_factors(model, spec: MergeSpec, calibration, rank: int):
    """Dense-merge a NAS run, then factor it: (factors, biases, report dict, merged SAM)."""
    if spec.mode != "dense":
        raise NasloraError("--format peft factors the dense merge; drop --merge fused")
    merged, merge_report = merge_run(model, spec, calibration=calibration)
    factors, biases, rows = merged_factors(model, merged, rank)
    report = {
        "method": model.spec.adapter.method,
        "rank_per_projection": rank,
        "peft_rank": rank * len(model.spec.adapter.targets),
        "svd": "rank-r' truncated SVD of each projection's dense-merge delta (r' = rank_per_projection)",
        "max_relative_error": max((r["relative_error"] for r in rows), default=0.0),
        "projections": rows,
        "intercepts_in_lora_bias": sorted(biases),
        "merge": merge_report.to_dict(),
    }
    return factors, biases, report, merged.sam


def _write(folder: Path, tensors: dict, config: dict, record: dict, report: Optional[dict]) -> None:
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        metadata = {"format": "pt", "naslora_deploy": json.dumps(record)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / PEFT_WEIGHTS_NAME), metadata)
        atomic_write_text(tmp / PEFT_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        if report is not None:
            atomic_write_text(tmp / REPORT_NAME, json.dumps(report, indent=2) + "\n")

    write_directory(folder, write)
