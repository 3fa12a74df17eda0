"""Weights from wherever users have them: wrappers, prefixes, hub folders and transformers' SamModel.

The proof that the transformers -> segment-anything key mapping is right: a random
``SamModel`` configured as our ``vit_tiny`` and our ``Sam`` built from its file give
the same image embeddings and the same prompted masks.
"""

import json

import pytest
import torch
import transformers  # a test extra: the round trips run against the real package
from conftest import sam_masks
from safetensors.torch import save_file

from naslora_deploy import VARIANTS, CheckpointError, build_sam
from naslora_deploy.core.model.weights import (
    detect_layout,
    hf_sam_config,
    hf_to_segment_anything,
    segment_anything_to_hf,
    strip_prefixes,
    unwrap,
)


def random_hf_sam(seed=0):
    """A transformers ``SamModel`` shaped as ``vit_tiny``, every tensor random (none left at 0 or 1)."""
    torch.manual_seed(seed)
    config = transformers.SamConfig(**hf_sam_config(VARIANTS["vit_tiny"]))
    config._attn_implementation = "eager"
    model = transformers.SamModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_sam()


@pytest.fixture(scope="module")
def hub_folder(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "sam-vit-tiny"
    hf_model.save_pretrained(folder)  # model.safetensors + config.json, as facebook/sam-vit-base
    return folder


def hf_state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_sam_model_file_gives_the_same_embeddings_and_masks(hf_model, hub_folder):
    sam = build_sam("vit_tiny", hub_folder)
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(1, 3, 256, 256, generator=generator)
    points = torch.tensor([[[60.0, 90.0], [200.0, 150.0]]])
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[40.0, 50.0, 210.0, 230.0]])
    mask = torch.randn(1, 1, 64, 64, generator=generator)
    with torch.no_grad():
        hf_embedding = hf_model.get_image_embeddings(image)
        out = hf_model(
            pixel_values=image,
            input_points=points[:, None],
            input_labels=labels[:, None],
            input_boxes=box[:, None],
            input_masks=mask,
        )
        points_only = hf_model(
            image_embeddings=hf_embedding, input_points=points[:, None], input_labels=labels[:, None]
        )
    embedding, masks, iou = sam_masks(sam, image, (points, labels), box, mask)
    torch.testing.assert_close(embedding, hf_embedding, atol=1e-4, rtol=1e-4)  # two float32 implementations
    torch.testing.assert_close(masks, out.pred_masks[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, out.iou_scores[:, 0], atol=1e-5, rtol=0)
    _, masks, _ = sam_masks(sam, image, (points, labels))
    torch.testing.assert_close(masks, points_only.pred_masks[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sam.safetensors", "sam.bin", "sam.pth"])
def test_sam_model_state_dict_files(hf_model, hub_folder, tmp_path, name):
    path = tmp_path / name
    state = hf_state(hf_model)
    save_file(state, str(path)) if name.endswith(".safetensors") else torch.save(state, path)
    expected = build_sam("vit_tiny", hub_folder).state_dict()
    for key, value in build_sam("vit_tiny", path).state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_names_round_trip_and_cover_every_sam_key(hf_model):
    state = hf_state(hf_model)
    assert detect_layout(state) == "transformers"
    converted = hf_to_segment_anything(state)
    assert set(converted) == set(build_sam("vit_tiny").state_dict())
    back = segment_anything_to_hf(converted)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_sharded_hub_folder(hf_model, hub_folder, tmp_path):
    state = hf_state(hf_model)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(tmp_path / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    expected = build_sam("vit_tiny", hub_folder).state_dict()
    loaded = build_sam("vit_tiny", tmp_path).state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors" in one_line_error(tmp_path)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"model": s},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 3, "step": 10},
        lambda s: {"model": {f"module._orig_mod.{k}": v for k, v in s.items()}},
        lambda s: {f"module.{k}": v for k, v in s.items()},
    ],
)
@pytest.mark.parametrize("layout", ["segment_anything", "transformers"])
def test_wrappers_and_prefixes(hf_model, hub_folder, tmp_path, wrap, layout):
    expected = build_sam("vit_tiny", hub_folder).state_dict()
    state = hf_state(hf_model) if layout == "transformers" else {k: v.clone() for k, v in expected.items()}
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(state), path)
    loaded = build_sam("vit_tiny", path).state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_pure_helpers():
    tensor = torch.zeros(1)
    assert unwrap({"state_dict": {"model": {"a": tensor}}, "epoch": 1}) == {"a": tensor}
    assert unwrap([1, 2]) == [1, 2]
    assert strip_prefixes({"module.model.a": tensor, "module.model.b": tensor}) == {"a": tensor, "b": tensor}
    assert list(strip_prefixes({"module.a": tensor, "b": tensor})) == ["module.a", "b"]  # not every key
    assert detect_layout({"image_encoder.pos_embed": tensor}) == "segment_anything"


def one_line_error(path, variant="vit_tiny"):
    with pytest.raises(CheckpointError) as info:
        build_sam(variant, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_damaged_files_name_the_first_key_that_does_not_fit(hf_model, tmp_path):
    state = hf_state(hf_model)
    path = tmp_path / "hf.safetensors"
    save_file({k: v for k, v in state.items() if k != "vision_encoder.layers.2.attn.rel_pos_h"}, str(path))
    assert "missing key 'image_encoder.blocks.2.attn.rel_pos_h'" in one_line_error(path)

    save_file({**state, "vision_encoder.extra.weight": torch.zeros(2)}, str(path))
    assert "unexpected key 'vision_encoder.extra.weight'" in one_line_error(path)

    wrong = dict(state, **{"mask_decoder.iou_prediction_head.proj_out.weight": torch.zeros(3, 64)})
    save_file(wrong, str(path))
    message = one_line_error(path)
    assert "mask_decoder.iou_prediction_head.layers.2.weight" in message and "[3, 64]" in message

    untied = dict(state, **{"prompt_encoder.shared_embedding.positional_embedding": torch.zeros(2, 32)})
    save_file(untied, str(path))
    assert "two different positional embeddings" in one_line_error(path)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds none of model.safetensors" in one_line_error(empty)
    (empty / "model.safetensors").write_bytes(b"truncated")
    assert "cannot read checkpoint" in one_line_error(empty)
