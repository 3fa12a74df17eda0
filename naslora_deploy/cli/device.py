"""``build-engines``: TensorRT engines for an exported artifact folder, built on the device that runs them.

Torch-free like ``predict`` and ``bench``: a Jetson with JetPack's TensorRT, polygraphy and the
runtime install builds, registers and checks the engines (``runtime.engine_build``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from naslora_deploy.cli.options import (
    Bounded,
    check_outputs,
    emit_json,
    json_option,
    overwrite_option,
    progress_option,
    say,
)
from naslora_deploy.exporters.specs import PRECISIONS, EngineSpec
from naslora_deploy.runtime.engine_build import build_engines as run_build
from naslora_deploy.runtime.engine_build import default_precision
from naslora_deploy.runtime.manifest import read_manifest


def engine_spec_for(manifest, **chosen) -> EngineSpec:
    """The export's recorded engine profile (``export.engine``: batch range, point slots, workspace),
    with the options given here on top; the precision is the option's or ``default_precision``."""
    known = {f.name for f in dataclasses.fields(EngineSpec)}
    recorded = {k: v for k, v in (manifest.export.get("engine") or {}).items() if k in known - {"precision"}}
    values = {**recorded, **{k: v for k, v in chosen.items() if v is not None}}
    values.setdefault("precision", default_precision(manifest))  # not the export's: it built no engine
    if values.get("opt_batch", 1) > values.get("max_batch", 8):  # --max-batch below the recorded opt
        values["opt_batch"] = values["max_batch"]
    values["min_batch"] = min(values.get("min_batch", 1), values.get("opt_batch", 1))
    return EngineSpec(**values)


@click.command("build-engines")
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="engine precision [default: int8 for an int8 export (its calibrated scales), else fp16; "
    "LayerNorm, reductions and softmax stay fp32]",
)
@click.option(
    "--workspace", "workspace_gb", type=Bounded(float, 0), metavar="GB", help="TensorRT workspace limit"
)
@click.option("--opt-batch", type=Bounded(int, 1), help="batch to tune for [default: the export's]")
@click.option(
    "--max-batch", type=Bounded(int, 1), help="largest batch [default: the export's; 1 on 8 GB boards]"
)
@click.option("--timing-cache", metavar="FILE", help="TensorRT timing cache, reused across builds")
@click.option(
    "--verify/--no-verify", default=True, show_default=True, help="compare each engine with its ONNX"
)
@overwrite_option("rebuild engines already in ARTIFACTS (and replace an existing --json FILE)")
@json_option
@progress_option
def build_engines(artifacts, json_target, overwrite, verify, progress, **chosen) -> None:
    """TensorRT engines for every ONNX model in ARTIFACTS, built with this machine's TensorRT.

    Each engine is written with its sidecar and registered in manifest.json (sha256, TensorRT
    version, GPU, compute capability, precision, build time); the runtime then opens the folder
    with --backend tensorrt and refuses engines built anywhere else.
    """
    check_outputs(overwrite, json=json_target)
    spec = engine_spec_for(read_manifest(artifacts, check_files=False), **chosen)
    rows = run_build(
        artifacts,
        spec,
        overwrite=overwrite,
        verify=verify,
        progress=progress,
        say=lambda t: say(json_target, t),
    )
    say(json_target, f"build-engines: {len(rows)} engine(s) in {artifacts}; run them with --backend tensorrt")
    emit_json(json_target, {"artifacts": str(artifacts), "engines": rows}, overwrite)
