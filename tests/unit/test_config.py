"""Bad FLARE configuration fails early, naming the key and what was expected."""

from __future__ import annotations

import pytest

from flare_ray.fusion import FlareConfig, resolve_layers
from tests.helpers import flare


def test_layer_specs():
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers("lower_half", 4) == [0, 1]
    assert resolve_layers("upper_half", 5) == [2, 3, 4]
    assert resolve_layers([0, "2-3"], 6) == [0, 2, 3]
    assert resolve_layers("0-1,5", 6) == [0, 1, 5]
    assert resolve_layers([-1], 6) == [5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fusion": "concat"}, r"(?s)fusion\n.*unknown fusion function 'concat'"),
        ({"fusion_layers": "middle"}, r"(?s)fusion_layers\n.*cannot read 'middle'"),
        ({"fusion_layers": [True]}, r"fusion_layers"),
        ({"source_representation": "v_i"}, r"(?s)source_representation\n.*'next_block_output', 'module_input' or"),
        ({"cross_attention_heads": 0}, r"(?s)cross_attention_heads\n.*greater than or equal to 1"),
        ({"rank": 4}, r"(?s)rank\n.*Unexpected keyword argument"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlareConfig(**kwargs)


def test_bad_config_against_a_model(tiny_path):
    with pytest.raises(ValueError, match=r"fusion_layers: 7 is outside the 4 blocks"):
        flare(tiny_path, "decoder", fusion_layers=[7])
    with pytest.raises(ValueError, match=r"fusion_modules: \['o_proj'\] match no module that LoRA adapts"):
        flare(tiny_path, "decoder", fusion_modules=["o_proj"])


def test_config_file_round_trip_and_errors(tmp_path):
    config = FlareConfig(fusion="cross_attention", cross_attention_heads=2, fusion_layers=[0, 1])
    config.save(tmp_path)
    assert FlareConfig.load(tmp_path) == config
    (tmp_path / "flare_config.json").write_text('{"fusion": "add", "rank": 4}')
    with pytest.raises(
        ValueError, match=r"flare_config.json: .*\n  rank: unknown key 'rank'; expected one of \['fusion',"
    ):
        FlareConfig.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no FLARE config"):
        FlareConfig.load(tmp_path / "nowhere")
