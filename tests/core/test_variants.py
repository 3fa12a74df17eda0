"""SAM variants and safe, checked checkpoint loading."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from naslora_deploy import VARIANTS, CheckpointError, build_sam, variant_of


def test_vit_tiny_is_real_segment_anything():
    from segment_anything.modeling import ImageEncoderViT, Sam

    sam = build_sam("vit_tiny")
    assert isinstance(sam, Sam) and isinstance(sam.image_encoder, ImageEncoderViT)
    blocks = sam.image_encoder.blocks
    assert [b.window_size for b in blocks] == [6, 0, 6, 0]  # windowed and global blocks
    with torch.no_grad():
        out = sam.image_encoder(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 64, 16, 16)
    assert variant_of(sam) == "vit_tiny"
    assert not sam.training


def test_unknown_variant():
    with pytest.raises(
        ValueError, match="unknown SAM variant 'vit_s'; choose one of vit_b, vit_l, vit_h, vit_tiny"
    ):
        build_sam("vit_s")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(3)
    sam = build_sam("vit_tiny")
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in sam.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = build_sam("vit_tiny", checkpoint=path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_wrapped_state_dict_is_accepted(tmp_path):
    sam = build_sam("vit_tiny")
    path = tmp_path / "wrapped.pth"
    torch.save({"model": sam.state_dict()}, path)
    build_sam("vit_tiny", checkpoint=path)


def _one_line_error(variant, path):
    with pytest.raises(CheckpointError) as info:
        build_sam(variant, checkpoint=path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_mismatching_checkpoint_names_variant_and_first_key(tmp_path):
    state = build_sam("vit_tiny").state_dict()
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    message = _one_line_error("vit_b", path)
    assert "does not fit SAM vit_b" in message and "image_encoder.pos_embed" in message

    del state["mask_decoder.iou_token.weight"]
    torch.save(state, path)
    assert "missing key 'mask_decoder.iou_token.weight'" in _one_line_error("vit_tiny", path)

    state = build_sam("vit_tiny").state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    assert "unexpected key 'extra.weight'" in _one_line_error("vit_tiny", path)


class Payload:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_unsafe_corrupt_and_missing_checkpoints(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"x": Payload()}, handle)
    assert "cannot read checkpoint" in _one_line_error("vit_tiny", evil)
    assert "unpickled arbitrary code" not in capsys.readouterr().out

    truncated = tmp_path / "truncated.pth"
    torch.save(build_sam("vit_tiny").state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    assert "cannot read checkpoint" in _one_line_error("vit_tiny", truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    assert "cannot read checkpoint" in _one_line_error("vit_tiny", garbage)

    assert "not found" in _one_line_error("vit_tiny", tmp_path / "absent.pth")

    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    assert "not a state dict of tensors" in _one_line_error("vit_tiny", not_tensors)


def test_registry_matches_segment_anything():
    from segment_anything import sam_model_registry

    assert {"vit_b", "vit_l", "vit_h"} <= set(sam_model_registry)
    assert VARIANTS["vit_b"].depth == 12 and VARIANTS["vit_h"].embed_dim == 1280
