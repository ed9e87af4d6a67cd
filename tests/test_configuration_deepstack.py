"""DeepStackConfig: the released model's defaults, save/load round trip, and refusals of impossible values."""

import pytest
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, Phi3Config

from conftest import tiny_deepstack_config
from deepstack_hf import DeepStackConfig
from deepstack_hf.conversion.config_mapping import deepstack_layers_from_original


def test_defaults_are_deepstack_l_vicuna_7b():
    config = DeepStackConfig()
    assert isinstance(config.vision_config, CLIPVisionConfig) and isinstance(config.text_config, LlamaConfig)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1024, 24)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (4096, 32)
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert (config.projector_depth, config.projector_hidden_act) == (2, "gelu")  # mlp2x_gelu
    assert config.num_crops == 4 and not config.hd_layout and config.stack_sampling == "2d"
    # docs/design.md: stack k before layer deepstack_start_id + k * deepstack_interval, defaults 1 and 1
    assert config.deepstack_layers == [1, 2, 3, 4]
    assert config.image_seq_length == 576 == config.patches_per_side**2


@pytest.mark.parametrize(("num_crops", "hd", "stacks"), [(4, False, 4), (4, True, 4), (6, False, 6), (9, True, 9), (8, True, 4)])
def test_number_of_stacks_follows_spec(num_crops, hd, stacks):
    # docs/design.md, "Features": K = num_crops (plain) or int(sqrt(num_crops))**2 (HD)
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


# A field changed after construction is refused where it is used: by every model forward and by save_pretrained
# (which runs `validate()`), with the same message as at construction; the saved folder gets no config.json.
CHANGES_AFTER_CONSTRUCTION = [
    ({"deepstack_layers": [1, 1, 2, 3]}, "deepstack_layers=.* strictly increasing"),  # would silently drop a stack
    ({"deepstack_layers": [1, 2, 3]}, "deepstack_layers=.* 3 entries but the model builds 4 stacks"),
    ({"deepstack_layers": [1, 2, 3, 6]}, r"deepstack_layers=.* must lie in \[0, 6\)"),
    ({"num_crops": 6}, "6 entries but the model builds|has 4 entries but the model builds 6 stacks"),
    ({"num_crops": 1}, "num_crops=1 is not allowed"),
    ({"stack_sampling": "3d"}, "Unknown stack_sampling '3d'"),
    ({"square_grid": None}, "square_grid must be True or False"),
    ({"square_grid": True, "num_crops": 6, "deepstack_layers": [0, 1, 2, 3, 4, 5]}, "square number"),
    ({"projector_hidden_act": "no_such_act"}, "projector_hidden_act"),
    ({"vision_feature_layer": 40}, "vision_feature_layer=40 is not allowed"),
    ({"image_seq_length": 17}, "image_seq_length=17"),
    ({"vision_split_layer": 2}, "vision_split_layer is a DeepStack-V field"),
    ({"deepstack_variant": "V"}, "DeepStack-V needs square_grid=True"),
    ({"text_config": {"model_type": "llama"}}, "text_config must be a config object"),
]


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from deepstack_hf import DeepStackModel

    torch.manual_seed(0)
    return DeepStackModel(tiny_deepstack_config()).eval()


@pytest.mark.parametrize(("changes", "message"), CHANGES_AFTER_CONSTRUCTION)
def test_fields_changed_after_construction_are_refused_at_use(tiny_model, changes, message, monkeypatch, tmp_path):
    import torch
    from huggingface_hub.errors import StrictDataclassClassValidationError

    ids = torch.tensor([[1, 5, 6, 7]])
    tiny_model(input_ids=ids)  # the unchanged config is accepted
    for field, value in changes.items():
        monkeypatch.setattr(tiny_model.config, field, value)
    with pytest.raises(ValueError, match=message):
        tiny_model(input_ids=ids)
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_model.config.save_pretrained(tmp_path / "config")
    assert not (tmp_path / "config" / "config.json").exists()
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "config.json").exists()


def test_a_sub_config_changed_after_construction_is_refused_at_use(tiny_model, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(tiny_model.config.text_config, "num_hidden_layers", 3)  # stacks go before layers 1..4
    with pytest.raises(ValueError, match=r"deepstack_layers=\[1, 2, 3, 4\] must lie in \[0, 3\) for a 3-layer"):
        tiny_model(input_ids=torch.tensor([[1, 5]]))
    with pytest.raises(Exception, match=r"must lie in \[0, 3\)"):
        tiny_model.config.save_pretrained(tmp_path)
