"""Hostile artifacts and checkpoints (issue 13, items 5, 6, 8, 9 and 10's NaN weights).

Item 5: every file a backend opens is listed in the manifest and hashed, and every listed
name is a plain regular file inside the artifact directory. Item 6: the torch backend and
``verify`` rebuild the model only from the source whose sha256 the export recorded. Item 8:
the manifest is checked against one schema (and its image size against the graph) before
use. Item 9: damaged weights, training states and metrics end in one ``CheckpointError``
line. Item 10: NaN weights are refused before anything is exported or merged.
"""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from harness import Attack, check_attack, copy_into
from safetensors.torch import load_file, save_file

from naslora_deploy.common.io import sha256_of

PASSWD = Path("/etc/passwd")


# ----- building the bad inputs ------------------------------------------------------------------------
def artifacts(tmp: Path, ctx: dict, edit=None) -> Path:
    """A private copy of the session's artifacts; ``edit(manifest, directory)`` changes its manifest."""
    art = copy_into(ctx["artifacts"], tmp, "art")
    if edit is not None:
        path = art / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest = edit(manifest, art) or manifest
        path.write_text(json.dumps(manifest))
    return art


def photo(tmp: Path, ctx: dict) -> Path:
    from PIL import Image

    path = tmp / "images" / "photo.png"  # a folder of its own: predict refuses an --out inside its inputs
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(ctx["photo"]).save(path)
    return path


def predict(edit=None, *extra):
    """``predict`` with a copy of the artifacts whose manifest ``edit`` changed."""
    return lambda tmp, ctx: [
        "predict",
        str(artifacts(tmp, ctx, edit)),
        str(photo(tmp, ctx)),
        "--out",
        str(tmp / "pred"),
        *extra,
    ]


def command(name, edit=None, *extra):
    """``bench`` / ``verify`` (any command taking the artifact directory first) on edited artifacts."""
    return lambda tmp, ctx: [name, str(artifacts(tmp, ctx, edit)), *extra]


def no_predictions(tmp: Path, ctx: dict) -> None:
    assert not (tmp / "pred" / "results.jsonl").exists()


def sha(path) -> str:
    """The true sha256 of an ordinary file (an attacker can compute it), else a made-up one."""
    return sha256_of(path) if str(path) == str(PASSWD) else "0" * 64


def listed(name, target=None):
    """An edit adding ``name`` to the files (with the true sha256 of ``target``, default the name)."""

    def edit(manifest, art):
        manifest["files"][name] = {"sha256": sha(target or name), "bytes": 1}

    return edit


def tamper_unlisted(manifest, art):
    """The encoder changed and its entry removed: nothing would have checked it."""
    encoder = art / "image_encoder.onnx"
    encoder.write_bytes(encoder.read_bytes()[:-100] + b"\0" * 100)
    del manifest["files"]["image_encoder.onnx"]


def symlink_out(manifest, art):
    """mask_decoder.onnx replaced by a link to an identical file outside the directory (same sha256)."""
    outside = art.parent / "outside.onnx"
    shutil.move(art / "mask_decoder.onnx", outside)
    (art / "mask_decoder.onnx").symlink_to(outside)


def listed_directory(manifest, art):
    (art / "sub").mkdir()
    manifest["files"]["sub"] = {"sha256": "0" * 64}


def external_data_at(target):
    def edit(manifest, art):
        manifest["files"]["image_encoder.onnx"]["external_data"] = {"file": target, "sha256": sha(target)}

    return edit


def graph_reads_outside(manifest, art):
    """A re-hashed decoder whose external data lies outside the directory (ORT must refuse it)."""
    import onnx

    path = art / "mask_decoder.onnx"
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location="evil.data", size_threshold=0)
    shutil.move(art / "evil.data", art.parent / "evil.data")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../evil.data"
    path.write_bytes(model.SerializeToString())
    manifest["files"]["mask_decoder.onnx"]["sha256"] = sha256_of(path)


def set_key(*keys, value=None, delete=False):
    """An edit setting (or deleting) ``manifest[k1][k2]...``."""

    def edit(manifest, art):
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        if delete:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return edit


def manifest_is_directory(tmp, ctx):
    art = artifacts(tmp, ctx)
    (art / "manifest.json").unlink()
    (art / "manifest.json").mkdir()
    return ["predict", str(art), str(photo(tmp, ctx)), "--out", str(tmp / "pred")]


def truncated_decoder(manifest, art):
    truncate("mask_decoder.onnx", 5000)(art)


def _raw(tmp, ctx, data: bytes) -> Path:
    """Artifacts whose manifest.json holds ``data``."""
    art = artifacts(tmp, ctx)
    (art / "manifest.json").write_bytes(data)
    return art


def head_swapped(manifest, art):
    manifest["head"] = "multiclass"
    manifest["classes"] = {"num_classes": 3, "names": ["bg", "a", "b"]}


# ----- item 6: a source that changed after the export --------------------------------------------------
def source_copy(tmp: Path, ctx: dict, retrain: bool = True):
    """Artifacts whose source is a private copy of the adapter, then "retrained" (one weight changed)."""
    source = copy_into(ctx["adapter"], tmp, "source")
    if retrain:
        weights = source / "adapter_model.safetensors"
        state = load_file(str(weights))
        key = sorted(state)[0]
        state[key] = state[key] + 0.5
        save_file(state, str(weights))
    return artifacts(tmp, ctx, set_key("source", "path", value=str(source)))


def torch_predict(tmp, ctx):
    art = source_copy(tmp, ctx)
    return ["predict", str(art), str(photo(tmp, ctx)), "--out", str(tmp / "pred"), "--backend", "torch"]


# ----- item 9: a run directory with last/ (one training step), built once --------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_step_run(hostile_ctx, tmp_path_factory):
    """Put a builder of a 1-step vit_tiny run into the context; rows that damage a run call it (once)."""
    cache = {}

    def build() -> Path:
        if "run" not in cache:
            from naslora_deploy.cli import main

            run = tmp_path_factory.mktemp("hostile_run") / "run"
            code = main(
                ["train", "--data", str(hostile_ctx["binary_data"]), "--model", "vit_tiny", "--out", str(run)]
                + ["--epochs", "1", "--max-steps", "1", "--no-progress"]
            )
            assert code == 0 and (run / "last" / "training_state.pt").is_file()
            cache["run"] = run
        return cache["run"]

    hostile_ctx["one_step_run"] = build
    yield
    hostile_ctx.pop("one_step_run", None)


def resume(damage):
    """``train --resume`` on a copy of the 1-step run after ``damage(run)``."""

    def argv(tmp: Path, ctx: dict):
        run = copy_into(ctx["one_step_run"](), tmp, "run")
        damage(run)
        return ["train", "--data", str(ctx["binary_data"]), "--model", "vit_tiny", "--out", str(run)] + [
            "--resume",
            "--allow-changed",  # one more step than the saved run: a change the user states
            "--epochs",
            "2",
            "--max-steps",
            "2",
            "--no-progress",
        ]

    return argv


def truncate(relative: str, keep: int = 200):
    def damage(root: Path) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes()[:keep])

    return damage


def replace_state(value):
    return lambda run: torch.save(value, run / "last" / "training_state.pt")


def plain_pickle(run: Path) -> None:
    (run / "last" / "training_state.pt").write_bytes(pickle.dumps({"epoch": 1, "step": [1, 2]}))


def misfit_weights(run: Path) -> None:
    path = run / "last" / "adapter_model.safetensors"
    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = torch.zeros(3, 3)
    save_file(state, str(path))


def broken_optimiser(run: Path) -> None:
    path = run / "last" / "training_state.pt"
    state = torch.load(path, weights_only=True)
    state["weight_opt"] = {"state": {}, "param_groups": [{"params": [0, 1]}]}
    torch.save(state, path)


def damaged_metrics(run: Path) -> None:
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n[1, 2\n')


def inspect_truncated(tmp, ctx):
    checkpoint = copy_into(ctx["adapter"], tmp, "ckpt")
    truncate("adapter_model.safetensors", 300)(checkpoint)
    return ["inspect", str(checkpoint)]


def export_truncated(tmp, ctx):
    checkpoint = copy_into(ctx["adapter"], tmp, "ckpt")
    truncate("adapter_model.safetensors", 300)(checkpoint)
    return ["export", str(checkpoint), "--out", str(tmp / "out")]


# ----- item 10: NaN weights ----------------------------------------------------------------------------
def nan_sam_checkpoint(tmp, ctx):
    from naslora_deploy import build_sam

    state = {k: v.contiguous() for k, v in build_sam("vit_tiny", pretrained=False).state_dict().items()}
    key = next(k for k in sorted(state) if "image_encoder" in k and state[k].is_floating_point())
    state[key][..., 0] = float("nan")
    path = tmp / "sam_nan.safetensors"
    save_file(state, str(path))
    return ["export", str(path), "--model", "vit_tiny", "--out", str(tmp / "out")]


def nan_adapter_argv(command_name):
    def argv(tmp, ctx):
        checkpoint = copy_into(ctx["adapter"], tmp, "ckpt")
        weights = checkpoint / "adapter_model.safetensors"
        state = load_file(str(weights))
        key = next(k for k in sorted(state) if state[k].is_floating_point() and state[k].numel() > 1)
        state[key].view(-1)[0] = float("inf")
        save_file(state, str(weights))
        if command_name == "merge":
            return ["merge", str(checkpoint), "--mode", "dense", "--out", str(tmp / "out" / "m.safetensors")]
        return ["export", str(checkpoint), "--out", str(tmp / "out")]

    return argv


def nan_base(tmp, ctx):
    spec = json.loads((Path(ctx["adapter"]) / "adapter_config.json").read_text())
    state = load_file(spec["base_checkpoint"])
    key = sorted(k for k in state if state[k].is_floating_point())[0]
    state[key] = torch.full_like(state[key], float("nan"))
    base = tmp / "base_nan.safetensors"
    save_file(state, str(base))
    return [
        "export",
        str(ctx["adapter"]),
        "--out",
        str(tmp / "out"),
        "--checkpoint",
        str(base),
        "--allow-base-mismatch",
    ]


def nothing_exported(tmp: Path, ctx: dict) -> None:
    assert not (tmp / "out").exists(), sorted(p.name for p in (tmp / "out").iterdir())


def call_artifact_file(name):
    def call(tmp, ctx):
        from naslora_deploy.runtime.manifest import artifact_file, read_manifest

        art = artifacts(tmp, ctx)
        (art / name).write_bytes(b"an engine nobody hashed")
        artifact_file(art, read_manifest(art), name)

    return call


def call_load_adapter(tmp, ctx):
    from naslora_deploy.core.runs.checkpoint import load_adapter

    checkpoint = copy_into(ctx["adapter"], tmp, "ckpt")
    truncate("adapter_model.safetensors", 40)(checkpoint)
    load_adapter(checkpoint)


ATTACKS = [
    # item 5: every file opened is listed, hashed and a regular file inside the directory
    Attack(
        "artifact-tampered-encoder-unlisted", 5, "does not list image_encoder.onnx", predict(tamper_unlisted)
    ),
    Attack(
        "artifact-files-empty", 5, "does not list image_encoder.onnx", predict(set_key("files", value={}))
    ),
    Attack("artifact-bench-files-empty", 5, "does not list", command("bench", set_key("files", value={}))),
    Attack("artifact-dotdot-passwd", 5, "not a plain file name", predict(listed("../../etc/passwd", PASSWD))),
    Attack("artifact-absolute-passwd", 5, "not a plain file name", predict(listed(str(PASSWD)))),
    Attack("artifact-proc-self-mem", 5, "not a plain file name", predict(listed("/proc/self/mem"))),
    Attack(
        "artifact-external-data-passwd", 5, "not a plain file name", predict(external_data_at(str(PASSWD)))
    ),
    Attack("artifact-symlink-out", 5, "symbolic link", predict(symlink_out), after=no_predictions),
    Attack("artifact-listed-directory", 5, "not a regular file", predict(listed_directory)),
    Attack(
        "artifact-graph-external-data-outside", 5, "onnxruntime cannot load", predict(graph_reads_outside)
    ),
    Attack("artifact-truncated-decoder", 5, "does not match its sha256", predict(truncated_decoder)),
    Attack("artifact-unlisted-engine", 5, "not listed in manifest.json", call=call_artifact_file("x.engine")),
    Attack(
        "artifact-verify-dotdot", 5, "not a plain file name", command("verify", listed("../manifest.json"))
    ),
    # item 6: the torch backend and verify rebuild only the source the export recorded
    Attack("source-retrained-torch-predict", 6, "changed since", torch_predict),
    Attack("source-retrained-verify", 6, "changed since", lambda t, c: ["verify", str(source_copy(t, c))]),
    Attack(
        "source-sha-missing-verify",
        6,
        "record no sha256",
        command("verify", set_key("source", "sha256", delete=True)),
    ),
    Attack(
        "source-gone-verify",
        6,
        "is gone",
        command("verify", set_key("source", "path", value="/nonexistent/run")),
    ),
    # item 8: one schema for the manifest, checked before anything reads it
    Attack(
        "manifest-json-list",
        8,
        "holds a json list",
        lambda t, c: ["predict", str(_raw(t, c, b"[1, 2]")), str(photo(t, c)), "--out", str(t / "p")],
    ),
    Attack("manifest-not-utf8", 8, "is damaged", lambda t, c: ["bench", str(_raw(t, c, b"\xff\xfe{"))]),
    Attack(
        "manifest-truncated", 8, "is damaged", lambda t, c: ["verify", str(_raw(t, c, b'{"format": "nasl'))]
    ),
    Attack("manifest-files-missing", 8, "'files' is missing", predict(set_key("files", delete=True))),
    Attack(
        "manifest-files-a-list",
        8,
        "expected an object",
        predict(set_key("files", value=["image_encoder.onnx"])),
    ),
    Attack(
        "manifest-no-sha256",
        8,
        "'sha256' is missing",
        predict(set_key("files", "mask_decoder.onnx", "sha256", delete=True)),
    ),
    Attack(
        "manifest-sha256-not-hex",
        8,
        "64 hex digits",
        command("verify", set_key("files", "mask_decoder.onnx", "sha256", value=7)),
    ),
    Attack(
        "manifest-export-unknown-option",
        8,
        "'export' section",
        command("verify", set_key("export", "bogus", value=1)),
    ),
    Attack("manifest-no-head", 8, "'head' is missing", predict(set_key("head", delete=True))),
    Attack("manifest-is-a-directory", 8, "not a regular file", manifest_is_directory),
    Attack(
        "manifest-image-size-changed", 8, "says image_size 512", predict(set_key("image_size", value=512))
    ),
    Attack(
        "manifest-image-size-a-string",
        8,
        "positive integer",
        command("bench", set_key("image_size", value="256")),
    ),
    Attack("manifest-head-swapped", 8, "the manifest was changed", predict(head_swapped)),
    Attack(
        "manifest-point-slots-changed",
        8,
        "prompt point slots",
        predict(set_key("prompt_point_slots", value=9)),
    ),
    Attack(
        "manifest-prompt-decoder-unlisted",
        8,
        "does not list prompt_decoder.onnx",
        predict(set_key("files", "prompt_decoder.onnx", delete=True)),
    ),
    # item 9: damaged checkpoints and training states
    Attack("resume-truncated-weights", 9, "truncated", resume(truncate("last/adapter_model.safetensors"))),
    Attack("resume-misfit-weights", 9, "does not fit", resume(misfit_weights)),
    Attack("resume-truncated-state", 9, "cannot read", resume(truncate("last/training_state.pt", 500))),
    Attack("resume-plain-pickle-state", 9, "cannot read", resume(plain_pickle)),
    Attack("resume-state-a-list", 9, "holds a list", resume(replace_state([1, 2, 3]))),
    Attack("resume-state-missing-keys", 9, "has no 'weight_opt'", resume(replace_state({"epoch": 1}))),
    Attack("resume-state-wrong-optimiser", 9, "does not fit this run", resume(broken_optimiser)),
    Attack("resume-damaged-metrics", 9, "line 2 is not a json object", resume(damaged_metrics)),
    Attack("inspect-truncated-safetensors", 9, "truncated", inspect_truncated),
    Attack("export-truncated-safetensors", 9, "truncated", export_truncated, after=nothing_exported),
    Attack("load-adapter-truncated", 9, "truncated", call=call_load_adapter),
    # item 10: NaN weights never reach an artifact or a merged checkpoint
    Attack("nan-sam-checkpoint-export", 10, "nan or infinite", nan_sam_checkpoint, after=nothing_exported),
    Attack("nan-adapter-export", 10, "nan or infinite", nan_adapter_argv("export"), after=nothing_exported),
    Attack("nan-adapter-merge", 10, "nan or infinite", nan_adapter_argv("merge"), after=nothing_exported),
    Attack("nan-base-export", 10, "nan or infinite", nan_base, after=nothing_exported),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, hostile_ctx, tmp_path, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)
