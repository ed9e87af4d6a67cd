"""DeepStackConfig: the released model's defaults, save/load round trip, and refusals of impossible values."""

import pytest
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, Phi3Config

from conftest import tiny_deepstack_config
from deepstack_hf import DeepStackConfig
from deepstack_hf.configuration_deepstack import deepstack_layers_from_original


def test_defaults_are_deepstack_l_vicuna_7b():
    config = DeepStackConfig()
    assert isinstance(config.vision_config, CLIPVisionConfig) and isinstance(config.text_config, LlamaConfig)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1024, 24)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (4096, 32)
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert (config.projector_depth, config.projector_hidden_act) == (2, "gelu")  # mlp2x_gelu
    assert config.num_crops == 4 and not config.hd_layout and config.stack_sampling == "2d"
    # SPEC: stack k goes in before layer deepstack_start_id + k * deepstack_interval, defaults 1 and 1
    assert config.deepstack_layers == [1, 2, 3, 4]
    assert config.image_seq_length == 576 == config.patches_per_side**2


@pytest.mark.parametrize(("num_crops", "hd", "stacks"), [(4, False, 4), (4, True, 4), (6, False, 6), (9, True, 9), (8, True, 4)])
def test_number_of_stacks_follows_spec(num_crops, hd, stacks):
    # SPEC: K = num_crops (plain) or int(sqrt(num_crops))**2 (HD)
    config = DeepStackConfig(num_crops=num_crops, hd_layout=hd)
    assert config.num_stacks == stacks
    assert config.deepstack_layers == list(range(1, 1 + stacks))


def test_layers_from_original_start_and_interval():
    assert deepstack_layers_from_original(start=1, interval=1, count=4) == [1, 2, 3, 4]
    assert deepstack_layers_from_original(start=0, interval=2, count=4) == [0, 2, 4, 6]


def test_round_trip_keeps_every_field(tmp_path):
    config = tiny_deepstack_config(
        text_model_type="phi3", hd_layout=True, deepstack_layers=[0, 2, 3, 5], projector_depth=3,
        projector_hidden_act="relu", multimodal_projector_bias=False, text_config={"sliding_window": 8},
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is DeepStackConfig and isinstance(loaded.text_config, Phi3Config)
    fields = {key: value for key, value in loaded.to_dict().items() if key != "_name_or_path"}
    assert fields == {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}
    assert loaded.text_config.sliding_window == 8


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"deepstack_layers": [1, 2, 3, 6]}, "deepstack_layers"),  # past the 6-layer decoder
        ({"deepstack_layers": [1, 2, 3]}, "deepstack_layers"),  # 3 layers for 4 stacks
        ({"deepstack_layers": [1, 3, 2, 4]}, "deepstack_layers"),  # not increasing
        ({"deepstack_layers": [-1, 0, 1, 2]}, "deepstack_layers"),
        ({"stack_sampling": "3d"}, "stack_sampling"),
        ({"hd_layout": True, "stack_sampling": "1d"}, "stack_sampling"),
        ({"projector_hidden_act": "no_such_act"}, "projector_hidden_act"),
        ({"projector_depth": 0}, "projector_depth"),
        ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy"),
        ({"num_crops": 1, "deepstack_layers": [1]}, "num_crops"),
    ],
)
def test_impossible_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_deepstack_config(**overrides)


def test_image_seq_length_must_match_the_vision_tower():
    with pytest.raises(ValueError, match="image_seq_length"):
        DeepStackConfig(image_seq_length=577)  # CLIP-L/14 at 336 px has 24x24 = 576 patches
