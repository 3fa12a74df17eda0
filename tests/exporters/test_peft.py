"""PEFT interop with the real ``peft`` and ``transformers``: our LoRA runs as ``PeftModel(SamModel)``.

Base weights: one random transformers ``SamModel`` shaped as ``vit_tiny``, saved as a hub
folder; our runs are trained-like (non-zero A and B, perturbed decoder) on the same weights,
loaded through ``build_sam`` (``core.weights``).
"""

import json

import peft
import pytest
import torch
import transformers  # a test extra: the round trips run against the real package

from naslora_deploy import VARIANTS, AdapterConfig, CheckpointError, NasloraError, add_adapters, build_sam
from naslora_deploy.common.io import sha256_of
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.merging.merge import merge
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.weights import hf_sam_config
from naslora_deploy.core.runs.checkpoint import RunSpec, load_adapter, load_weights, save_checkpoint
from naslora_deploy.core.runs.peft_adapter import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, read_peft_adapter
from naslora_deploy.exporters.peft import REPORT_NAME, peft_manifest, qkv_key, run_to_peft


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A hub folder holding a random SamModel (every tensor random), and its model.safetensors."""
    torch.manual_seed(0)
    config = transformers.SamConfig(**hf_sam_config(VARIANTS["vit_tiny"]))
    config._attn_implementation = "eager"
    model = transformers.SamModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    folder = tmp_path_factory.mktemp("hub") / "sam-vit-tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))


def hf_sam(folder):
    return transformers.SamModel.from_pretrained(folder, attn_implementation="eager").eval()


def save_run(root, base_file, sam, config):
    model = SegmentationModel(sam, 1, 0)
    spec = RunSpec("vit_tiny", config, ClassSpec(1), 0, 256, str(base_file), sha256_of(base_file))
    return save_checkpoint(root, model, spec)


def make_run(root, base, seed=0, num_classes=1, **fields):
    """A checkpoint of a trained-like run: non-zero A and B, a perturbed mask decoder."""
    base_file = base / "model.safetensors"
    sam = build_sam("vit_tiny", base_file)
    config = AdapterConfig(seed=seed, **fields)
    add_adapters(sam, config)
    perturb_adapters(sam, seed=seed + 1)
    with torch.no_grad():
        for param in sam.mask_decoder.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    if num_classes == 1:
        return save_run(root, base_file, sam, config)
    spec = RunSpec("vit_tiny", config, ClassSpec(num_classes), 0, 256, str(base_file), sha256_of(base_file))
    return save_checkpoint(root, SegmentationModel(sam, num_classes, 0), spec)


def peft_outputs(base, adapter_dir, image, box):
    model = peft.PeftModel.from_pretrained(hf_sam(base), adapter_dir).eval()
    sam_model = model.base_model.model
    with torch.no_grad():
        embedding = sam_model.get_image_embeddings(image)
        masks = sam_model(image_embeddings=embedding, input_boxes=box[:, None]).pred_masks[:, 0]
    return embedding, masks


def our_outputs(sam, image, box):
    with torch.no_grad():
        embedding = sam.image_encoder(image)
        sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
        masks, _ = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    return embedding, masks


BOX = torch.tensor([[30.0, 40.0, 200.0, 220.0]])


def test_lora_run_is_the_same_model_under_peft(base, image, tmp_path):
    run = make_run(tmp_path / "run", base, method="lora")
    out = run_to_peft(run, tmp_path / "peft")
    config = json.loads((out / PEFT_CONFIG_NAME).read_text())
    assert config["r"] == config["lora_alpha"] == 9 and config["modules_to_save"] == ["mask_decoder"]
    assert not (out / REPORT_NAME).exists()
    ours = our_outputs(load_adapter(run).sam, image, BOX)
    plain = our_outputs(build_sam("vit_tiny", base), image, BOX)
    theirs = peft_outputs(base, out, image, BOX)
    assert (ours[0] - plain[0]).abs().max() > 1e-2  # the adapters really change the embeddings
    torch.testing.assert_close(theirs[0], ours[0], atol=1e-4, rtol=1e-4)  # two float32 implementations
    torch.testing.assert_close(theirs[1], ours[1], atol=1e-4, rtol=0)  # mask logits: larger values


def rebuild_run(root, base, init):
    """What ``train --init-from-peft`` starts from: a LoRA run holding the adapter, saved as a checkpoint."""
    base_file = base / "model.safetensors"
    sam = build_sam("vit_tiny", base_file)
    config = init.adapter_config(AdapterConfig(method="lora"))
    add_adapters(sam, config)
    init.apply(sam)
    return save_run(root, base_file, sam, config)


def test_peft_to_lora_to_peft_is_exact(base, image, tmp_path):
    run = make_run(tmp_path / "run", base, method="lora", rank=2, targets=("q", "v"), blocks=[0, 2])
    first = run_to_peft(run, tmp_path / "first")
    init = read_peft_adapter(first)
    assert (init.form, init.rank, init.targets, sorted(init.factors)) == ("block", 2, ("q", "v"), [0, 2])
    second = run_to_peft(rebuild_run(tmp_path / "again", base, init), tmp_path / "second")
    before, after = load_weights(first / PEFT_WEIGHTS_NAME), load_weights(second / PEFT_WEIGHTS_NAME)
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(
        peft_outputs(base, second, image, BOX)[0],
        our_outputs(load_adapter(run).sam, image, BOX)[0],
        atol=1e-4,
        rtol=1e-4,
    )


def test_foreign_peft_lora_starts_an_exact_run(base, image, tmp_path):
    torch.manual_seed(4)
    lora = peft.LoraConfig(r=4, lora_alpha=6, target_modules=["qkv"])  # scaling 1.5, dense B
    model = peft.get_peft_model(hf_sam(base), lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "foreign")
    init = read_peft_adapter(tmp_path / "foreign")
    assert (init.form, init.rank, init.targets) == ("shared", 4, ("q", "k", "v"))
    run = rebuild_run(tmp_path / "run", base, init)
    with torch.no_grad():
        expected = model.base_model.model.get_image_embeddings(image)
    torch.testing.assert_close(
        load_adapter(run).sam.image_encoder(image).detach(), expected, atol=1e-4, rtol=1e-4
    )
    again = load_weights(run_to_peft(run, tmp_path / "back") / PEFT_WEIGHTS_NAME)
    original = load_weights(tmp_path / "foreign" / PEFT_WEIGHTS_NAME)
    for block in range(4):
        delta = 1.5 * original[qkv_key(block, "B")] @ original[qkv_key(block, "A")]
        torch.testing.assert_close(
            again[qkv_key(block, "B")] @ again[qkv_key(block, "A")], delta, atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("calibrated", [False, True])
def test_nas_pc_lora_exports_through_its_dense_merge_with_a_report(base, image, tmp_path, calibrated):
    run = make_run(tmp_path / "run", base, method="nas_pc_lora")
    calibration = (
        torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(1)) if calibrated else None
    )
    out = run_to_peft(run, tmp_path / "peft", calibration=calibration)
    report = json.loads((out / REPORT_NAME).read_text())
    assert (
        report["rank_per_projection"] == 3 and report["peft_rank"] == 9 and len(report["projections"]) == 12
    )
    assert report["max_relative_error"] < 1e-5 and report["merge"]["mode"] == "dense"
    # a calibrated (sequential) fold has an intercept: it rides in PEFT's lora_B.bias
    assert report["intercepts_in_lora_bias"] == ([0, 1, 2, 3] if calibrated else [])
    assert json.loads((out / PEFT_CONFIG_NAME).read_text()).get("lora_bias", False) == calibrated
    assert peft_manifest(out)["merge"]["report"]["mode"] == "dense"
    merged, _ = merge(load_adapter(run), "dense", calibration=calibration)
    torch.testing.assert_close(
        peft_outputs(base, out, image, BOX)[0], our_outputs(merged.sam, image, BOX)[0], atol=1e-4, rtol=1e-4
    )


def one_line(error_type, call):
    with pytest.raises(error_type) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_what_cannot_convert_is_one_line(base, tmp_path):
    run = make_run(tmp_path / "run", base, method="lora", rank=1)
    out = run_to_peft(run, tmp_path / "peft")
    assert "pass --overwrite" in one_line(NasloraError, lambda: run_to_peft(run, out))
    assert set(peft_manifest(out)["files"]) == {PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME}
    assert peft_manifest(out)["merge"] is None
    assert "is a file" in one_line(
        NasloraError, lambda: run_to_peft(base / "model.safetensors", tmp_path / "f")
    )
    run_to_peft(run, out, replace=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert "never replaced" in one_line(NasloraError, lambda: run_to_peft(run, tmp_path / "mine"))
    multi = make_run(tmp_path / "multi", base, method="lora", num_classes=3)
    assert "class head" in one_line(NasloraError, lambda: run_to_peft(multi, tmp_path / "m"))

    init = read_peft_adapter(out)
    assert "use lora" in one_line(NasloraError, lambda: init.adapter_config(AdapterConfig(method="nas_lora")))
    config = json.loads((out / PEFT_CONFIG_NAME).read_text())
    (out / PEFT_CONFIG_NAME).write_text(json.dumps(dict(config, use_dora=True)))
    assert "use_dora" in one_line(CheckpointError, lambda: read_peft_adapter(out))

    decoder_lora = peft.get_peft_model(hf_sam(base), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    decoder_lora.save_pretrained(tmp_path / "decoder_lora")
    assert "q_proj" in one_line(CheckpointError, lambda: read_peft_adapter(tmp_path / "decoder_lora"))


def test_cli_exports_peft_and_trains_from_it(base, binary_data, tmp_path, capsys):
    """``export --format peft`` then ``train --init-from-peft`` on the hub folder: the run starts
    from the adapter (one step at a negligible lr leaves its factors where PEFT put them)."""
    from naslora_deploy.cli import main

    run = make_run(tmp_path / "run", base, method="lora", rank=2)
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    assert "manifest:" not in capsys.readouterr().out
    argv = ["train", "--data", str(binary_data), "--model", "vit_tiny", "--checkpoint", str(base)]
    argv += ["--init-from-peft", str(tmp_path / "peft"), "--method", "lora", "--out", str(tmp_path / "new")]
    assert main(argv + ["--max-steps", "1", "--lr", "1e-12", "--no-progress"]) == 0
    started = load_adapter(tmp_path / "new" / "last").sam.state_dict()
    exported = load_adapter(run).sam.state_dict()
    factors = [k for k in exported if ".adapters." in k]
    assert factors and all(torch.allclose(started[k], exported[k], atol=1e-6) for k in factors)
    bad = argv[:-4] + ["--out", str(tmp_path / "nas"), "--method", "nas_lora", "--max-steps", "1"]
    assert main(bad) == 2 and "--init-from-peft starts a plain LoRA run" in capsys.readouterr().err
