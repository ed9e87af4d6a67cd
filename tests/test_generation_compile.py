"""The compile flag, and a fresh model's CLIP init.

Static-cache and `torch.compile`d generation on every decoder and variant are in tests/test_generation_modes.py.
"""

import math

import pytest
import torch
from conftest import tiny_deepstack_config

from deepstack_hf import DeepStackForConditionalGeneration


def test_compile_flag_is_declared():
    assert DeepStackForConditionalGeneration._can_compile_fullgraph


@pytest.mark.parametrize("load_path", ["init", "from_pretrained with missing weights"])
def test_fresh_model_initializes_its_clip_tower_the_clip_way(load_path):
    """CLIP draws its attention projections with std `d**-0.5 * (2 * layers)**-0.5` and its MLP input with
    `(2 * d)**-0.5`, not the generic `Linear` std (0.02); a DeepStack model built from a config, or loaded with
    its weights missing, must do the same."""
    config = tiny_deepstack_config()
    torch.manual_seed(0)
    if load_path == "init":
        model = DeepStackForConditionalGeneration(config)
    else:
        model = DeepStackForConditionalGeneration.from_pretrained(None, config=config, state_dict={})
    vision = config.vision_config
    layers = model.model.vision_tower.encoder.layers
    q_std = vision.hidden_size**-0.5 * (2 * vision.num_hidden_layers) ** -0.5
    fc1_std = (2 * vision.hidden_size) ** -0.5
    weights_q = torch.cat([layer.self_attn.q_proj.weight.flatten() for layer in layers])
    weights_fc1 = torch.cat([layer.mlp.fc1.weight.flatten() for layer in layers])
    assert math.isclose(weights_q.std().item(), q_std, rel_tol=0.15)
    assert math.isclose(weights_fc1.std().item(), fc1_std, rel_tol=0.15)
