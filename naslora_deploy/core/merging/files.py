"""The files a merge writes: the merged model's weights, its report, and a multi-class head.

dense: ``out`` is a plain SAM state dict (loads with ``sam_model_registry``);
fused: ``out`` holds the fused model's state. Beside it, ``<stem>.report.json``
(what the model is, where it came from, the fidelity report) and, for a
multi-class model, ``<stem>.head.safetensors`` (class head and queries).

All of them are written under temporary names first and renamed only when every one
is complete (the report last): a failure (a full disk) leaves an earlier merge at
``out`` as it was and no part of the new one. ``out`` is locked for the writer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from naslora_deploy.common.errors import CheckpointError
from naslora_deploy.common.io import OutputError, atomic_write_text, output_error, output_lock
from naslora_deploy.common.outputs import json_field
from naslora_deploy.core.merging.report import MergeReport
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.core.runs.checkpoint import RunSpec, check_finite, load_weights, save_state


def sidecar_paths(out: Path) -> Dict[str, Path]:
    """Where the report and (multi-class) head go, beside ``out``."""
    stem = Path(out).with_suffix("")
    return {"report": Path(f"{stem}.report.json"), "head": Path(f"{stem}.head.safetensors")}


def write_merged(merged, report: MergeReport, out, source: str = "") -> List[Path]:
    """Write a merged ``SegmentationModel`` (what ``merge_run`` returns) and its report; the paths
    written. Staged, then renamed together (the module's docstring); ``out`` locked meanwhile."""
    out = Path(out)
    spec = merged.spec
    paths = sidecar_paths(out)
    states = {out: merged.sam.state_dict()}
    if merged.class_head is not None:
        states[paths["head"]] = {f"class_head.{k}": v for k, v in merged.class_head.state_dict().items()}
    description = {
        **spec.model_record(),
        "adapter": spec.adapter.to_dict(),
        "spec": spec.to_dict(),
        "source": source,
        "checkpoint": out.name,
        "head_weights": paths["head"].name if merged.class_head is not None else None,
        "merge": report.to_dict(),
    }
    text = json.dumps(description, indent=2) + "\n"
    with output_lock(out, "merge --out"):
        staged = _stage(states, paths["report"], text)
        for final, path in staged.items():  # the report last: it is what names the checkpoint
            os.replace(path, final)
    return list(staged)


def _staged_name(final: Path) -> Path:
    return final.with_name(f".{final.stem}.staged-{os.getpid()}{final.suffix}")


def _stage(states: Dict[Path, dict], report: Path, text: str) -> Dict[Path, Path]:
    """Each state dict and the report under a temporary name (final -> temporary); on any failure
    those written are removed, and a full disk names what the whole merge needs."""
    staged: Dict[Path, Path] = {}
    full, written = False, 0
    try:
        for final, state in states.items():
            staged[final] = save_state(_staged_name(final), state)
        staged[report] = atomic_write_text(_staged_name(report), text)
    except BaseException as exc:
        written = sum(path.stat().st_size for path in staged.values() if path.is_file())
        for path in staged.values():
            path.unlink(missing_ok=True)
        if not isinstance(exc, OutputError) or exc.kind != "full":
            raise
        full, written = True, written + exc.written
    if full:  # out of the handler: the writer that failed has let go of its files
        needed = sum(t.numel() * t.element_size() for state in states.values() for t in state.values())
        raise output_error("full", next(iter(states)), written, needed + len(text))
    return staged


def merged_description(path) -> Optional[dict]:
    """The report ``write_merged`` put beside the checkpoint ``path``; None if ``path`` is not one."""
    report = sidecar_paths(Path(path))["report"]
    if json_field(report, "checkpoint") != Path(path).name:
        return None
    return json.loads(report.read_text())


def load_merged(path) -> Tuple[SegmentationModel, dict]:
    """A dense merged checkpoint (``merge --mode dense``) as the ``SegmentationModel`` it was written
    from, with its description (variant, classes, the merge report): reused as it is, not merged again."""
    description = merged_description(path)
    if description is None:
        raise CheckpointError(f"{path} has no merge report beside it; it is not a merged checkpoint")
    merge = description.get("merge") if isinstance(description, dict) else None
    if not isinstance(merge, dict) or not isinstance(description.get("classes"), dict):
        report = sidecar_paths(Path(path))["report"]
        raise CheckpointError(f"{report} is damaged (no 'merge' or 'classes' object); merge the run again")
    if merge.get("mode") != "dense":
        raise CheckpointError(
            f"{path} is a fused merge (not a plain SAM); export the run directory with --merge fused instead"
        )
    classes = ClassSpec.from_dict(description["classes"])
    model = SegmentationModel(
        build_sam(description["variant"], path, pretrained=False),
        classes.num_classes,
        description.get("num_queries") or 0,
    )
    if model.class_head is not None:
        head_file = Path(path).parent / description["head_weights"]
        head = load_weights(head_file)
        check_finite(head, f"class head {head_file}")
        model.class_head.load_state_dict({k.removeprefix("class_head."): v for k, v in head.items()})
    check_finite(model.sam.state_dict(), f"merged checkpoint {path}")
    if "spec" in description:  # merges written before the spec was recorded lack it
        model.spec = RunSpec.from_dict(description["spec"], f"report of {path}")
    return model.eval(), description
