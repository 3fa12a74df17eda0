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
from naslora_deploy.core.merging.spec import MergeSpec

FORMATS = ("onnx", "trt", "triton", "peft")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TWO_GB = 2 * 1024**3
MERGE_FLAT = ("calibration", "calibration_images", "recover", "recover_decoder")


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
    external_threshold: int = TWO_GB
    merge: MergeSpec = field(default_factory=MergeSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose {', '.join(FORMATS)}")
        if isinstance(self.merge, str):  # the mode alone: ExportSpec(merge="fused")
            self.merge = MergeSpec(mode=self.merge)
        elif isinstance(self.merge, dict):  # read back from a manifest
            self.merge = MergeSpec.from_dict(self.merge)
        if self.precision not in PRECISIONS or (self.format != "trt" and self.precision == "bf16"):
            raise ValueError(
                f"precision {self.precision!r}: ONNX files are fp32, fp16 or int8; "
                "engines fp32, fp16, bf16 or int8"
            )
        if self.precision == "int8" and not self.merge.calibration:
            raise ValueError(
                "--precision int8 calibrates activations on your images: give them with --calibration FOLDER"
            )
        check_bounds(self)
        if self.format == "peft" and (self.merge.mode != "dense" or self.precision != "fp32" or self.prompts):
            raise ValueError(
                "--format peft writes LoRA factors (LoRA runs exactly, NAS runs through the dense merge): "
                "drop --merge fused, --precision and --prompts"
            )
        if isinstance(self.engine, dict):  # read back from a manifest
            self.engine = EngineSpec(**self.engine)
        self.engine = replace(self.engine, precision=self.engine_precision(), max_points=self.point_slots + 2)

    def engine_precision(self) -> str:
        """The engines' precision, decided here only: ``--precision`` with ``--format trt``; int8 whatever
        the format (QDQ graphs make any engine built from them, trtexec's too, an INT8 build); otherwise
        the engine spec's own (engines built later from fp32/fp16 ONNX files: the manifest's trtexec)."""
        if self.format == "trt" or self.precision == "int8":
            return self.precision
        return self.engine.precision

    @property
    def onnx_precision(self) -> str:
        """The ONNX files' precision: fp16 where converted (not under engines, which take fp32 graphs),
        int8 (QDQ) whatever the format, else fp32."""
        return self.precision if self.format != "trt" or self.precision == "int8" else "fp32"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ExportSpec":
        """The spec an artifact directory was exported with (manifests before ``MergeSpec`` held the
        merge's options flat: ``merge`` the mode beside ``calibration``, ``recover``, ...)."""
        exported = dict(manifest["export"])  # a Manifest or its JSON
        if isinstance(exported.get("merge"), str):
            flat = {name: exported.pop(name) for name in MERGE_FLAT if name in exported}
            exported["merge"] = MergeSpec(mode=exported["merge"], **flat)
        return cls(**exported)
