"""Issue 27, provenance and interop: classes 4, 5, 6 (shard indexes) and 7 (hostile structure).

Class 4: an adapter whose config records no base checkpoint is refused (naming ``--checkpoint``) by
every path that loads it onto a base (``load_adapter``, ``merge_run``, merge, export, PEFT export),
unless it recorded that it was trained on random weights on purpose (``base_random``; older runs:
their saved ``../base_model.safetensors``). Class 5: a sharded Hugging Face checkpoint's recorded
sha256 covers its index and every shard. Class 6: a shard index naming a file outside its folder is
refused. Class 7: deep nesting and wrong types in manifests, adapter configs, PEFT adapters, shard
indexes, safetensors metadata and metrics are one line each. Every row checks that nothing under its
folder changed and that no output appeared (``untouched``).
"""

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from harness import Attack, check_attack, copy_into
from safetensors.torch import load_file, save_file

SNAPSHOTS = {}  # a row's tmp folder -> its files' sha256, taken once its input is built
DEEP = b"[" * 100_000 + b"]" * 100_000  # far deeper than any parser's recursion
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX, ADAPTER_CONFIG = "model.safetensors.index.json", "adapter_config.json"


# ----- what must not change -------------------------------------------------------------------------------
def tree(root: Path) -> dict:
    """Every file under ``root`` (relative path -> sha256); empty folders do not count."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def untouched(tmp: Path, ctx: dict) -> None:
    """No input changed, no output appeared: the tree equals its snapshot."""
    assert tree(tmp) == SNAPSHOTS.pop(str(tmp))


def cli(build):
    """CLI arguments ``build(tmp, ctx)`` makes (its input: snapshot once built)."""

    def argv(tmp, ctx):
        args = [str(a) for a in build(tmp, ctx)]
        SNAPSHOTS[str(tmp)] = tree(tmp)
        return args

    return argv


def library(build, call):
    """A library row: ``call(build(tmp, ctx))`` must raise ``NasloraError`` (snapshot in between)."""

    def run(tmp, ctx):
        made = build(tmp, ctx)
        SNAPSHOTS[str(tmp)] = tree(tmp)
        call(made)

    return run


def row(item: int, name: str, phrase: str, **how) -> Attack:
    return Attack(f"prov-{name}", item, phrase, after=untouched, issue=27, **how)


# ----- adapters and their base ----------------------------------------------------------------------------
def config_of(ctx: dict) -> dict:
    return json.loads((Path(ctx["adapter"]) / "adapter_config.json").read_text())


def adapter(tmp: Path, ctx: dict, **changes) -> Path:
    """A copy of the session's adapter whose ``adapter_config.json`` has ``changes`` (None: key removed)."""
    checkpoint = copy_into(ctx["adapter"], tmp, "ckpt")
    config = {k: v for k, v in {**config_of(ctx), **changes}.items() if v is not None}
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    return checkpoint


def cfg(**changes):
    """A builder of ``adapter(tmp, ctx, **changes)``; a callable value is called with (tmp, ctx)."""
    return lambda t, c: adapter(t, c, **{k: v(t, c) if callable(v) else v for k, v in changes.items()})


no_base = cfg(base_checkpoint=None, base_sha256=None, base_random=None)


def hub(tmp: Path, ctx: dict, rename=None) -> Path:
    """The adapter's base as a sharded Hugging Face folder ``tmp/hub`` (transformers' names, two shards,
    an index); ``rename`` maps a shard to the name its index gives it (the file is written there)."""
    from naslora_deploy.core.model.weights import segment_anything_to_hf

    state = segment_anything_to_hf(load_file(config_of(ctx)["base_checkpoint"]))
    keys = sorted(state)
    folder = tmp / "hub"
    folder.mkdir(parents=True)
    weight_map = {}
    for shard, names in zip(SHARDS, (keys[::2], keys[1::2])):
        name = (rename or {}).get(shard, shard)
        save_file({k: state[k].contiguous() for k in names}, str(folder / name))  # absolute: stays so
        weight_map.update({k: name for k in names})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder


def flip_byte(path: Path) -> None:
    """Change a file's last byte (in a safetensors file, tensor data: it still reads)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def sharded(index_only=False):
    """The adapter recorded on a sharded base as training records it (``index_only``: as older versions
    did, the index's sha256 alone), then one shard changed."""

    def build(tmp, ctx):
        from naslora_deploy.common.io import sha256_of
        from naslora_deploy.core.model.weights import weights_sha256

        folder = hub(tmp, ctx)
        sha = sha256_of(folder / INDEX) if index_only else weights_sha256(folder)
        checkpoint = adapter(tmp, ctx, base_checkpoint=str(folder / INDEX), base_sha256=sha)
        flip_byte(folder / SHARDS[1])
        return checkpoint

    return build


def outside(name_of):
    """A hub folder ``tmp/sub/hub`` whose index names its second shard ``name_of(tmp)`` (absolute or
    ``../``); a real shard is written there, so without the rule it would be read."""
    return lambda tmp, ctx: hub(tmp / "sub", ctx, {SHARDS[1]: name_of(tmp)})


absolute = outside(lambda tmp: str(tmp / "elsewhere.safetensors"))
dotdot = outside(lambda tmp: "../x.safetensors")


def merge_argv(checkpoint, tmp: Path, *extra):
    return [str(a) for a in ("merge", checkpoint, "--mode", "dense", "--out", tmp / "out" / "m.pth", *extra)]


def merge_of(build):
    return lambda t, c: merge_argv(build(t, c), t)


def export_of(build, *extra):
    return lambda t, c: ["export", build(t, c), *extra, "--out", t / "out"]


def deep(build, name):
    """``build(tmp, ctx)`` makes a folder; its file ``name`` is then replaced by deeply nested JSON."""

    def make(tmp, ctx):
        folder = build(tmp, ctx)
        (folder / name).write_bytes(DEEP)
        return folder

    return make


def load(checkpoint):
    from naslora_deploy.core.runs.checkpoint import load_adapter

    return load_adapter(checkpoint)


def merge_run_of(checkpoint):
    from naslora_deploy.core.merging.run import merge_run

    return merge_run(checkpoint)


def build_tiny(checkpoint):
    from naslora_deploy import build_sam

    return build_sam("vit_tiny", checkpoint)


def map_of_lists(tmp: Path, ctx: dict) -> Path:
    """A hub folder whose index maps each tensor to a list instead of a file name."""
    folder = hub(tmp, ctx)
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: [v] for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))
    return folder


def rank_huge(tmp: Path, ctx: dict) -> Path:
    return adapter(tmp, ctx, adapter={**config_of(ctx)["adapter"], "rank": 10**19})


def deep_metrics(tmp: Path, ctx: dict):
    """``inspect`` of a checkpoint whose run's ``metrics.jsonl`` holds a deeply nested line."""
    copy_into(ctx["adapter"], tmp, "ckpt")
    (tmp / "metrics.jsonl").write_bytes(DEEP + b"\n")
    return ["inspect", tmp / "ckpt"]


# ----- artifacts ------------------------------------------------------------------------------------------
def artifacts(tmp: Path, ctx: dict, *keys, value=None, raw: bytes = None) -> Path:
    """A copy of the session's artifacts: manifest.json replaced by ``raw``, or ``keys`` set to ``value``."""
    art = copy_into(ctx["artifacts"], tmp, "art")
    path = art / "manifest.json"
    if raw is not None:
        path.write_bytes(raw)
    if keys:
        manifest = node = json.loads(path.read_text())
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        path.write_text(json.dumps(manifest))
    return art


def predict(*keys, value=None, raw=None, extra=()):
    """``predict`` of a photo with edited artifacts."""

    def argv(tmp, ctx):
        from PIL import Image

        image = tmp / "images" / "photo.png"
        image.parent.mkdir()
        Image.fromarray(ctx["photo"]).save(image)
        art = artifacts(tmp, ctx, *keys, value=value, raw=raw)
        return ["predict", art, image, "--out", tmp / "pred", *extra]

    return argv


# ----- PEFT adapters (vit_tiny: width 128, blocks 0..3, rank 4 on q, k, v) ---------------------------------
def qkv(block: int, part: str) -> str:
    return f"base_model.model.vision_encoder.layers.{block}.attn.qkv.lora_{part}.weight"


def peft(tmp: Path, config=None, tensors=None, metadata=None, width: int = 128) -> Path:
    """A PEFT LoRA folder for a vit_tiny ``SamModel``; ``config`` / ``tensors`` override entries."""
    from naslora_deploy.exporters.peft import peft_config

    folder = tmp / "peft"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for block in range(4):
        state[qkv(block, "A")] = torch.randn(4, width, generator=generator)
        state[qkv(block, "B")] = torch.randn(3 * width, 4, generator=generator)
    save_file({**state, **(tensors or {})}, str(folder / "adapter_model.safetensors"), metadata)
    settings = {**peft_config(range(4), 4, False, decoder=False), **(config or {})}
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


def read_peft(folder: Path):
    from naslora_deploy.core.runs.peft_adapter import read_peft_adapter

    return read_peft_adapter(folder)


def apply_peft(folder: Path):
    """Read a PEFT adapter and apply it to vit_tiny, as ``train --init-from-peft`` does."""
    from naslora_deploy import AdapterConfig, add_adapters, build_sam

    init = read_peft(folder)
    sam = build_sam("vit_tiny")
    add_adapters(sam, init.adapter_config(AdapterConfig(method="lora")))
    init.apply(sam)


def peft_row(name: str, phrase: str, call=read_peft, **overrides) -> Attack:
    return row(7, f"peft-{name}", phrase, call=library(lambda t, c: peft(t, **overrides), call))


def raw_metadata(tmp: Path, ctx: dict) -> Path:
    """A PEFT folder whose safetensors header's metadata holds a number where strings belong."""
    path = peft(tmp) / "adapter_model.safetensors"
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.dumps({**json.loads(data[8 : 8 + size]), "__metadata__": {"naslora_deploy": 5}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + size :])
    return path.parent


NOT_QKV, NO_BASE = "not a lora of a qkv layer", "records no base checkpoint"
ATTACKS = [
    # class 4: an adapter that records no base is refused, naming --checkpoint, wherever it is loaded
    row(4, "no-base-merge", "with --checkpoint", argv=cli(merge_of(no_base))),
    row(4, "no-base-export", NO_BASE, argv=cli(export_of(no_base))),
    row(4, "no-base-export-peft", NO_BASE, argv=cli(export_of(no_base, "--format", "peft"))),
    row(4, "no-base-merge-run", "with --checkpoint", call=library(no_base, merge_run_of)),
    row(
        4,
        "random-without-file",
        "records random base weights but not the file",
        call=library(cfg(base_checkpoint=None, base_random=True), load),
    ),
    row(
        4,
        "random-base-gone",
        "keep its run folder whole",
        argv=cli(merge_of(cfg(base_checkpoint="../base_model.safetensors", base_random=True))),
    ),
    # class 5: a sharded base's record covers the index and every shard
    row(5, "shard-changed-load", "--allow-base-mismatch", call=library(sharded(), load)),
    row(5, "shard-changed-merge", "its index and every shard", argv=cli(merge_of(sharded()))),
    row(5, "shard-index-only-record", "does not cover its shards", argv=cli(export_of(sharded(True)))),
    # class 6: a shard index names only files inside its folder
    row(
        6,
        "shard-absolute-export",
        "outside its folder",
        argv=cli(export_of(lambda t, c: absolute(t, c) / INDEX, "--model", "vit_tiny")),
    ),
    row(6, "shard-dotdot-build", "outside its folder", call=library(dotdot, build_tiny)),
    row(
        6,
        "shard-dotdot-recorded",
        "outside its folder",
        call=library(cfg(base_checkpoint=lambda t, c: str(dotdot(t, c) / INDEX)), load),
    ),
    # class 7: hostile structure, one line each (what, which file, what to do)
    row(7, "manifest-deep", "nested too deeply", argv=cli(predict(raw=DEEP))),
    row(
        7,
        "manifest-source-base-list",
        "expected null or a path",
        argv=cli(lambda t, c: ["verify", artifacts(t, c, "source", "base", value=[1])]),
    ),
    row(
        7,
        "manifest-export-engine-text",
        "export.'engine'",
        argv=cli(predict("export", "engine", value="x", extra=("--backend", "torch"))),
    ),
    row(7, "manifest-precision-unknown", "expected fp32 or", argv=cli(predict("onnx_precision", value="x"))),
    row(7, "adapter-config-deep", "nested too deeply", argv=cli(export_of(deep(adapter, ADAPTER_CONFIG)))),
    row(7, "adapter-config-size-text", "'image_size' is", argv=cli(merge_of(cfg(image_size="256")))),
    row(7, "adapter-config-variant-list", "'variant' is [\"x\"]", call=library(cfg(variant=["x"]), load)),
    row(7, "adapter-config-rank-huge", "cannot be built", call=library(rank_huge, load)),
    row(
        7,
        "peft-config-deep",
        "nested too deeply",
        call=library(deep(lambda t, c: peft(t), ADAPTER_CONFIG), read_peft),
    ),
    peft_row("lora-alpha-list", "lora_alpha is [1]", config={"lora_alpha": [1]}),
    peft_row("r-text", 'r is "4"', config={"r": "4"}),
    peft_row("r-not-the-tensors", "have rank 4", config={"r": 8}),
    peft_row("modules-to-save-text", "modules_to_save is", config={"modules_to_save": "mask_decoder"}),
    peft_row("target-modules-number", "target_modules is 5", config={"target_modules": 5}),
    peft_row("lora-b-1d", NOT_QKV, tensors={qkv(0, "B"): torch.ones(384)}),
    peft_row("lora-a-0d", NOT_QKV, tensors={qkv(0, "A"): torch.tensor(1.0)}),
    peft_row("not-the-layer", "no adapter of that shape", call=apply_peft, width=64),
    peft_row("nan", "nan or infinite", tensors={qkv(1, "A"): torch.full((4, 128), float("nan"))}),
    peft_row("metadata-targets", "records targets", metadata={"naslora_deploy": '{"targets": 5}'}),
    row(7, "peft-metadata-not-text", "cannot read", call=library(raw_metadata, read_peft)),
    row(7, "shard-index-deep", "nested too deeply", call=library(deep(hub, INDEX), build_tiny)),
    row(7, "shard-index-map-of-lists", "not a file name", call=library(map_of_lists, build_tiny)),
    row(7, "metrics-deep-inspect", "is not a json object", argv=cli(deep_metrics)),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, tmp_path, hostile_ctx, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)


# ----- tests that train, or check a rule's other side -----------------------------------------------------
def train(ctx: dict, out: Path, *extra) -> dict:
    """A one-step vit_tiny LoRA run into ``out`` (exit 0); its ``adapter_config.json``."""
    from harness import train_argv

    from naslora_deploy.cli import main

    options = ("--epochs", "1", "--max-steps", "1", "--method", "lora", *extra)
    assert main([str(a) for a in train_argv(ctx, out, *options)]) == 0
    return json.loads(next(out.glob("*/adapter_config.json")).read_text())


def test_a_run_on_random_weights_says_so_and_merges_old_and_new(hostile_ctx, tmp_path):
    from naslora_deploy.cli import main

    run = tmp_path / "run"
    spec = train(hostile_ctx, run)
    assert spec["base_random"] is True and spec["base_checkpoint"] == "../base_model.safetensors"
    assert main(merge_argv(run, tmp_path)) == 0
    for config in run.glob("*/adapter_config.json"):  # as runs before base_random wrote it: still random
        config.write_text(json.dumps({k: v for k, v in spec.items() if k != "base_random"}))
    assert load(run).spec.base_random is True


def test_training_on_a_sharded_checkpoint_records_every_shard(hostile_ctx, tmp_path, capsys):
    from naslora_deploy.cli import main
    from naslora_deploy.common.io import sha256_of
    from naslora_deploy.core.model.weights import weights_sha256

    folder = hub(tmp_path, hostile_ctx)
    spec = train(hostile_ctx, tmp_path / "run", "--checkpoint", folder)
    assert spec["base_checkpoint"] == str(folder / INDEX) and not spec["base_random"]
    assert spec["base_sha256"] == weights_sha256(folder) != sha256_of(folder / INDEX)
    flip_byte(folder / SHARDS[0])
    SNAPSHOTS[str(tmp_path)] = tree(tmp_path)
    capsys.readouterr()
    assert main(merge_argv(tmp_path / "run", tmp_path)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--allow-base-mismatch" in error and "every shard" in error
    untouched(tmp_path, hostile_ctx)
    assert main(merge_argv(tmp_path / "run", tmp_path, "--allow-base-mismatch")) == 0


def test_an_export_source_digest_covers_every_shard(hostile_ctx, tmp_path):
    from naslora_deploy.core.runs.checkpoint import source_sha256

    folder = hub(tmp_path, hostile_ctx)
    before = source_sha256(folder / INDEX)
    flip_byte(folder / SHARDS[1])
    assert source_sha256(folder / INDEX) != before


def test_an_adapter_without_a_record_loads_onto_the_checkpoint_named(hostile_ctx, tmp_path):
    from naslora_deploy.core.runs.checkpoint import load_adapter

    base = config_of(hostile_ctx)["base_checkpoint"]
    assert load_adapter(no_base(tmp_path, hostile_ctx), base_checkpoint=base).spec.base_sha256 is None


def test_the_manifest_knows_the_exporters_precisions():
    from naslora_deploy.exporters.specs import PRECISIONS
    from naslora_deploy.runtime import manifest

    assert manifest.PRECISIONS == PRECISIONS


CLASS_TESTS = {
    "test_a_run_on_random_weights_says_so_and_merges_old_and_new": 4,
    "test_training_on_a_sharded_checkpoint_records_every_shard": 5,
    "test_an_export_source_digest_covers_every_shard": 5,
}
