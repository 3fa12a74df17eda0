"""The settings of one ``naslora-deploy train`` command, and what its defaults need.

Under the options the user typed: the settings saved in a run's ``train_config.json``
(``--config FILE``: a new run; ``--resume``: the run in ``--out``, whose settings a typed
option may change only with ``--allow-changed``), then ``TrainConfig``'s defaults, where
``--prompt`` follows the model (``default_prompt``). No torch at import time.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Dict, Optional

from naslora_deploy.common.io import read_json
from naslora_deploy.common.options import flag_of
from naslora_deploy.common.outputs import RUN_CONFIG, resumable
from naslora_deploy.training.config import TrainConfig

# train's --prompt where it is not given: LiteMedSAM (MedSAM) was trained on boxes; prompt-free, its masks
# come out empty (IoU 0). TrainConfig's own default stays "none": the benchmarks' protocols are prompt-free.
MODEL_PROMPTS = {"litemedsam": "box"}
EMPTY_MASKS_HINT = (
    "validation: the prompt-free masks are empty (IoU 0); this model segments what a prompt points at: "
    "train with --prompt box"
)
# the settings of one invocation: never read from a saved train_config.json (--config, --resume)
PER_INVOCATION = ("out", "resume", "overwrite", "device", "progress")
# how a run computes, not what: --resume accepts them changed
NOT_COMPARED = PER_INVOCATION + ("workers", "prefix_cache", "prefix_cache_mb", "compile", "tensorboard")


def default_prompt(model: str) -> str:
    """``train --prompt`` where it is not given: box for LiteMedSAM, else prompt-free."""
    return MODEL_PROMPTS.get(model, "none")


def predicts_nothing(metrics: dict) -> bool:
    """Whether binary validation ``metrics`` come from empty masks: IoU 0 on every image (no overlap,
    and foreground in each) and a pooled balanced error of exactly 50 % (no false positive either)."""
    return metrics.get("iou") == 0.0 and metrics.get("ber_pooled") == 50.0


def prompt_hint(prompt: str, metrics: Optional[dict]) -> Optional[str]:
    """``EMPTY_MASKS_HINT`` where a prompt-free run's validation ``metrics`` come from empty masks."""
    return EMPTY_MASKS_HINT if prompt == "none" and metrics and predicts_nothing(metrics) else None


def saved_settings(path, option: str) -> Dict[str, object]:
    """The settings in a saved ``train_config.json`` (``TrainConfig.to_dict``), less ``PER_INVOCATION``'s;
    ``option`` (``--config``, ``--resume``) names where the file came from in a refusal."""
    data = read_json(path, f"{option} training settings")
    if not isinstance(data, dict):
        raise ValueError(
            f"{option}: {path} holds no training settings (a JSON object); give a train_config.json"
        )
    try:
        config = TrainConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{option}: {path} is not a train_config.json a run wrote ({exc})") from None
    return {k: v for k, v in asdict(config).items() if k not in PER_INVOCATION}


def train_settings(
    typed: Dict[str, object], config_file: Optional[str] = None, allow_changed: bool = False
) -> TrainConfig:
    """The ``TrainConfig`` of one ``train`` command.

    ``typed``: the options the user gave. Under them: the settings saved in ``config_file``
    (``--config``, a new run) or, with ``--resume``, the run's own ``train_config.json``, whose
    settings a typed option may not change (``NOT_COMPARED`` aside) unless ``allow_changed``;
    then the defaults (``--prompt``: ``default_prompt`` of the model).
    """
    settings: Dict[str, object] = {}
    if config_file is not None:
        if typed.get("resume"):
            raise ValueError(
                "--config starts a new run from saved settings, --resume continues the run in --out with its "
                "own: give one of them"
            )
        settings = saved_settings(config_file, "--config")
        if settings.get("model") != typed.get("model", settings.get("model")):
            for name in ("checkpoint", "pretrained"):  # the saved model's base weights, not the new one's
                settings.pop(name, None)
    elif typed.get("resume") and _saved_run(typed["out"]):
        settings = saved_settings(_saved_run(typed["out"]), "--resume")
        if not allow_changed:
            _refuse_changes(settings, typed, _saved_run(typed["out"]))
    settings.update(typed)
    if "data" not in settings:
        if typed.get("resume"):
            raise ValueError(
                f"--resume: {typed['out']} holds no run to continue with its saved settings (a checkpoint "
                f"and {RUN_CONFIG}); give a run's folder, or --data and the run's options"
            )
        raise ValueError("train needs --data FOLDER (or --config FILE)")
    settings.setdefault("prompt", default_prompt(settings.get("model", TrainConfig.model)))
    return TrainConfig(**settings)


def _saved_run(out) -> Optional[Path]:
    """``OUT/train_config.json`` where ``out`` holds a run to continue (a checkpoint with its training
    state); a folder that only has files named like a run's is left to ``prepare_run_dir`` to refuse."""
    path = Path(out) / RUN_CONFIG
    return path if resumable(out) and path.is_file() else None


def _refuse_changes(saved: Dict[str, object], typed: Dict[str, object], path: Path) -> None:
    """One line naming the typed options that differ from a resumed run's saved settings."""
    keep = {k: v for k, v in typed.items() if k in NOT_COMPARED}
    before, after = TrainConfig(**{**saved, **keep}), TrainConfig(**{**saved, **typed})
    changed = [f for f in fields(TrainConfig) if f.name not in NOT_COMPARED and "cli" in f.metadata]
    changed = [f for f in changed if getattr(before, f.name) != getattr(after, f.name)]
    if changed:
        described = ", ".join(
            f"{flag_of(f)} {getattr(before, f.name)} -> {getattr(after, f.name)}" for f in changed
        )
        raise ValueError(
            f"--resume would change the run's saved settings ({path}): {described}; leave these options "
            "out to continue as saved, or add --allow-changed"
        )
