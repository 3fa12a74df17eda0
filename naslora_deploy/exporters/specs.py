"""`ExportSpec` and `EngineSpec`: what to export and how to build engines, declared once.

Each is saved beside what it describes (the artifact manifest, the engine
sidecar). Fields that are command-line options carry their help text
(``common.options``), so ``naslora-deploy export`` generates its options from
them. No torch here, so the CLI imports everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from naslora_deploy.common.options import check_bounds, option
from naslora_deploy.core.config import MERGE_MODES

FORMATS = ("onnx", "trt", "triton", "peft")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TWO_GB = 2 * 1024**3


def recovery_steps(text: str) -> int:
    """``--recover STEPS`` from the command line: a whole number >= 0, or one clear ``ValueError``."""
    try:
        steps = int(text)
    except ValueError:
        steps = -1
    if steps < 0:
        raise ValueError(f"--recover must be a whole number of steps >= 0, got {text!r}")
    return steps


def check_recovery(steps, merge: str, calibration, decoder: bool = False) -> None:
    """Raise ``ValueError`` (one line) unless ``--recover STEPS`` makes sense with the other options."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"--recover must be a whole number of steps >= 0, got {steps!r}")
    if steps and merge != "dense":
        raise ValueError("--recover tunes the dense fold; use it with the dense merge (fused is exact)")
    if steps and not calibration:
        raise ValueError("--recover distils on unlabelled images: give them with --calibration FOLDER")
    if decoder and not steps:
        raise ValueError("--recover-decoder needs --recover STEPS")


@dataclass
class EngineSpec:
    """How to build a TensorRT engine: precision, batch profile, workspace and timing cache."""

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = field(default=1, metadata=option("TensorRT profile: batch to tune for", low=1))
    max_batch: int = field(default=8, metadata=option("TensorRT profile (and Triton): largest batch", low=1))
    workspace_gb: Optional[float] = field(
        default=None,
        metadata=option(
            "TensorRT workspace limit in GB (Jetson: keep it small)", flag="--workspace", low=0, open_low=True
        ),
    )
    timing_cache: Optional[str] = field(
        default=None, metadata=option("TensorRT timing cache file, reused across builds")
    )
    max_points: int = 6  # prompt decoder: most points per prompt (a box counts two); set from point_slots

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown engine precision {self.precision!r}; choose fp32, fp16, bf16 or int8")
        check_bounds(self)
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("batch profile must satisfy 1 <= min <= opt <= max")


@dataclass
class ExportSpec:
    """What to export and how; saved in the manifest."""

    format: str = field(
        default="onnx",
        metadata=option(
            "onnx, TensorRT engines, a Triton repository, or a PEFT LoRA adapter for transformers' SamModel",
            choices=FORMATS,
        ),
    )
    merge: str = field(
        default="dense", metadata=option("dense: plain SAM; fused: exact, tiny branch", choices=MERGE_MODES)
    )
    precision: str = field(
        default="fp32",
        metadata=option(
            "ONNX: fp32, fp16 or int8 (the image encoder statically quantized, calibrated on --calibration "
            "images); engines: fp32, fp16, bf16 or int8",
            choices=PRECISIONS,
        ),
    )
    opset: int = field(
        default=17,
        metadata=option("ONNX opset (what torch's exporter and our graphs support)", low=14, high=20),
    )
    prompts: bool = field(default=False, metadata=option("also export the promptable decoder"))
    point_slots: int = field(
        default=4,
        metadata=option(
            "most point prompts per box in TensorRT engines (plus two for the box); onnxruntime takes any",
            low=1,
        ),
    )
    calibration: Optional[str] = field(
        default=None,
        metadata=option(
            "image folder for the dense merge's least-squares fold (and its measurement) and for "
            "--precision int8's activation ranges"
        ),
    )
    calibration_images: int = field(default=16, metadata=option("how many calibration images to use", low=1))
    recover: int = field(
        default=0,
        metadata=option(
            "dense merge: tune the folded low-rank factors for STEPS steps by distillation from the unmerged "
            "model on the calibration images, then merge exactly (plain SAM; needs --calibration)",
            metavar="STEPS",
            parse=recovery_steps,
            shown="0",
        ),
    )
    recover_decoder: bool = field(
        default=False,
        metadata=option("with --recover: also tune the mask decoder (and distil its mask logits)"),
    )
    external_threshold: int = TWO_GB
    engine: EngineSpec = field(default_factory=EngineSpec)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose {', '.join(FORMATS)}")
        if self.merge not in MERGE_MODES:
            raise ValueError(f"unknown merge mode {self.merge!r}; choose dense or fused")
        if self.precision not in PRECISIONS or (self.format != "trt" and self.precision == "bf16"):
            raise ValueError(
                f"precision {self.precision!r}: ONNX files are fp32, fp16 or int8; "
                "engines fp32, fp16, bf16 or int8"
            )
        if self.precision == "int8" and not self.calibration:
            raise ValueError(
                "--precision int8 calibrates activations on your images: give them with --calibration FOLDER"
            )
        check_bounds(self)
        check_recovery(self.recover, self.merge, self.calibration, self.recover_decoder)
        if self.format == "peft" and (self.merge != "dense" or self.precision != "fp32" or self.prompts):
            raise ValueError(
                "--format peft writes LoRA factors (LoRA runs exactly, NAS runs through the dense merge): "
                "drop --merge fused, --precision and --prompts"
            )
        if isinstance(self.engine, dict):  # read back from a manifest
            self.engine = EngineSpec(**self.engine)
        if self.precision == "int8":  # QDQ graphs: any engine built from them (trtexec too) is an INT8 build
            self.engine = replace(self.engine, precision="int8")
        self.engine.max_points = self.point_slots + 2

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ExportSpec":
        """The spec an artifact directory was exported with."""
        return cls(**manifest["export"])
