import json

import pytest

from naslora_deploy import AdapterConfig
from naslora_deploy.core.adapters.config import OP_NAMES


def test_defaults_follow_the_paper():
    config = AdapterConfig()
    assert config.rank == 3
    assert config.targets == ("q", "k", "v")
    assert config.ops == OP_NAMES and len(OP_NAMES) == 8
    assert config.channel_ratio == pytest.approx(2 / 3)
    assert config.alpha_init_std == 1e-3
    assert config.cell_channels == 2  # 2/3 of rank 3


@pytest.mark.parametrize(
    "fields",
    [
        dict(
            method="nas_lora",
            rank=6,
            targets=("q", "v"),
            blocks=[0, 2],
            ops=("sep_conv_3x3", "skip_connect"),
            seed=4,
        ),
        dict(method="lora", blocks="all"),
        dict(method="nas_pc_lora", channel_ratio=1 / 3, alpha_init_std=0.0),
    ],
)
def test_json_round_trip(fields, tmp_path):
    config = AdapterConfig(**fields)
    assert AdapterConfig.from_json(config.to_json()) == config
    path = config.save(tmp_path / "adapter_config.json")
    assert AdapterConfig.load(path) == config
    assert json.loads(path.read_text())["method"] == fields["method"]


def test_targets_are_put_in_qkv_order():
    assert AdapterConfig(targets=("v", "q")).targets == ("q", "v")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(method="conv_lora"), "unknown method 'conv_lora'"),
        (dict(rank=0), "rank must be an integer >= 1"),
        (dict(rank=2.5), "rank must be an integer >= 1"),
        (dict(targets=()), "targets is empty"),
        (dict(targets=("q", "o")), "unknown target 'o'"),
        (dict(ops=()), "ops is empty"),
        (dict(ops=("sep_conv_3x3", "sep_conv_7x7")), "unknown op 'sep_conv_7x7'"),
        (dict(ops=("none", "none")), "ops has duplicates"),
        (dict(blocks=[]), "blocks is an empty list"),
        (dict(blocks=[-1]), "block indices must be >= 0"),
        (dict(blocks="some"), "blocks must be 'all'"),
        (dict(channel_ratio=0.0), "channel_ratio must be in (0, 1]"),
        (dict(alpha_init_std=-1.0), "alpha_init_std must be a finite number"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(fields, message):
    with pytest.raises(ValueError) as info:
        AdapterConfig(**fields)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_json_field_is_refused():
    with pytest.raises(ValueError, match="unknown adapter config field 'lr'"):
        AdapterConfig.from_json('{"method": "lora", "lr": 0.1}')
    with pytest.raises(ValueError, match="not valid JSON"):
        AdapterConfig.from_json("{method")


def test_block_out_of_range_names_the_depth():
    with pytest.raises(ValueError, match="block 12 is out of range: the image encoder has 4 blocks"):
        AdapterConfig(blocks=[0, 12]).block_indices(4)
