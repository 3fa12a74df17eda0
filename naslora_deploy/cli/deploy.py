"""``merge``, ``export`` and ``verify``: a run to a merged model, artifacts, and their proofs."""

from __future__ import annotations

from pathlib import Path

import click

from naslora_deploy.cli.options import (
    Bounded,
    adapter_argument,
    base_options,
    check_outputs,
    device_option,
    emit_json,
    export_spec_from,
    fields_of,
    json_option,
    options_from,
    overwrite_option,
    progress_option,
    say,
)
from naslora_deploy.common.contract import VARIANT_NAMES
from naslora_deploy.common.io import output_lock
from naslora_deploy.common.outputs import check_output_files, json_field
from naslora_deploy.common.progress import phase
from naslora_deploy.core.adapters.config import MERGE_MODES
from naslora_deploy.core.merging.report import MergeReport
from naslora_deploy.core.merging.spec import CALIBRATION_HELP, MergeSpec
from naslora_deploy.exporters.criteria import LATENCY_REPEATS, criteria_summary
from naslora_deploy.exporters.specs import EngineSpec, ExportSpec


@click.command()
@adapter_argument
@base_options
@click.option("--mode", required=True, type=click.Choice(MERGE_MODES), help="dense: plain SAM; fused: exact")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="output checkpoint (.pth or .safetensors)"
)
@overwrite_option("replace an earlier merge at --out (never any other file) and an existing --json FILE")
@options_from(
    MergeSpec,
    only=("calibration", "calibration_images", "recover", "recover_decoder"),
    helps={"calibration": CALIBRATION_HELP},
)
@device_option
@json_option
@progress_option
def merge(
    adapter, base, allow_base_mismatch, mode, out, overwrite, device, json_target, progress, **options
) -> None:
    """Fold the adapters into SAM: dense (plain SAM) or fused (exact), with the measured fidelity.

    --out is locked while the merge runs (a second merge into it is refused); its files are
    renamed into place only when all are written (a full disk leaves none of them). A log gets
    one line per phase, per fitted block and per measured image (a terminal: progress bars).
    """
    from naslora_deploy.core.merging.files import sidecar_paths, write_merged
    from naslora_deploy.core.merging.run import merge_run
    from naslora_deploy.training.acceleration import pick_device

    spec = MergeSpec(mode=mode, **fields_of(MergeSpec, options))  # its rules, before the model is loaded
    check_outputs(overwrite, json=json_target)
    with output_lock(out, "merge --out"):
        sidecars = sidecar_paths(out)  # an earlier merge's report names its checkpoint
        earlier = json_field(sidecars["report"], "checkpoint") == out.name
        check_output_files(
            [out, *sidecars.values()], kind="merged checkpoint", earlier=earlier, replace=overwrite
        )
        merged, report = merge_run(
            adapter,
            spec,
            base=base,
            allow_base_mismatch=allow_base_mismatch,
            device=pick_device(device),
            progress=progress,
        )
        with phase(f"merge: write {out}", progress):
            written = write_merged(merged, report, out, source=str(adapter))
    say(json_target, report.summary())
    for path in written:
        say(json_target, f"wrote {path}")
    result = {"report": report.to_dict(), "written": [str(path) for path in written]}
    emit_json(json_target, result, overwrite)


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="artifact directory (new or empty; locked while the export runs)",
)
@overwrite_option(
    "replace an earlier artifact directory at --out (never another folder) and an existing --json FILE"
)
@click.option("--model", help=f"variant of a plain SAM checkpoint file ({', '.join(VARIANT_NAMES)})")
@options_from(ExportSpec)
@options_from(MergeSpec)
@options_from(EngineSpec)
@base_options
@json_option
@progress_option
def export(
    source, out, overwrite, model, base, allow_base_mismatch, json_target, progress, **options
) -> None:
    """ONNX / TensorRT / Triton artifacts from an adapter directory, a checkpoint written by `merge`
    (its report beside it: the merge is not done again) or a plain SAM checkpoint file (--model).

    A log gets one line per phase and per exported model (a terminal: progress bars).
    """
    from naslora_deploy.exporters.export import export as run_export

    spec = export_spec_from(options)
    check_outputs(overwrite, json=json_target)
    artifacts, manifest, repository = run_export(
        source,
        out,
        spec,
        overwrite,
        variant=model,
        base=base,
        allow_base_mismatch=allow_base_mismatch,
        progress=progress,
    )
    report = (manifest["merge"] or {}).get("report")
    if report:
        say(json_target, MergeReport.from_dict(report).summary())
    for name, entry in manifest["files"].items():
        say(json_target, f"wrote {artifacts / name} ({entry['bytes'] / 1e6:.1f} MB)")
    for name, command in manifest["trtexec"].items():
        say(json_target, f"trtexec equivalent for {name}: {command}")
    if spec.format != "peft":  # a PEFT adapter folder has its own adapter_config.json, no manifest
        say(json_target, f"manifest: {artifacts / 'manifest.json'}")
    if repository is not None:
        say(
            json_target,
            f"Triton model repository: {repository} (serve with: tritonserver "
            f"--model-repository={repository})",
        )
    result = {
        "artifacts": str(artifacts),
        "manifest": manifest if isinstance(manifest, dict) else manifest.to_dict(),
        "model_repository": str(repository) if repository is not None else None,
    }
    emit_json(json_target, result, overwrite)


@click.command()
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.option(
    "--images", type=click.Path(path_type=Path), help="image folder (default: seeded generated images)"
)
@click.option("--count", type=Bounded(int, 1), default=2, show_default=True, help="images to compare on")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--tolerance",
    type=Bounded(float, 0, open_low=True),
    help="max abs error allowed on the embeddings, in place of the precision's criteria (printed above "
    f"the table: {criteria_summary()})",
)
@click.option(
    "--against-plain-sam",
    is_flag=True,
    help="structure (operators, initializers, MACs) against plain build_sam(variant)",
)
@click.option(
    "--latency/--no-latency",
    default=False,
    show_default=True,
    help="also time the image encoder against plain SAM's on onnxruntime's CPU (implies --against-plain-sam)",
)
@click.option(
    "--repeats",
    type=Bounded(int, 1),
    default=LATENCY_REPEATS,
    show_default=True,
    help="--latency: alternating runs (medians are quoted)",
)
@json_option
@overwrite_option("replace an existing --json FILE")
@progress_option
def verify(
    artifacts,
    images,
    count,
    seed,
    tolerance,
    against_plain_sam,
    latency,
    repeats,
    json_target,
    overwrite,
    progress,
) -> None:
    """Prove the artifacts compute what the PyTorch model computes (and, dense, that they are plain SAM).

    Every model is compared: the image encoder, the prompt-free decoder and, where exported with
    --prompts, the prompt decoder with boxes and with points; the table ends with one verdict per
    model. A log gets one line per phase, model and image (a terminal: progress bars).
    """
    from naslora_deploy.exporters.verify import plain_sam_proof, proof_summary, verify_parity

    check_outputs(overwrite, json=json_target)
    report = verify_parity(artifacts, images, count, seed, tolerance, progress)
    say(json_target, report.table())
    result = report.to_dict()
    if against_plain_sam or latency:
        with phase(
            "verify: against plain SAM" + (f" (latency, {repeats} runs)" if latency else ""), progress
        ):
            proof = plain_sam_proof(artifacts, repeats if latency else 0)
        result["against_plain_sam"] = proof
        say(json_target, "\n" + proof_summary(proof))
    emit_json(json_target, result, overwrite)
    if not report.passed:
        missed = sum(not row.passed for row in report.rows)
        click.echo(f"verify: {missed} output(s) miss the pass criteria printed above the table", err=True)
        raise click.exceptions.Exit(1)
