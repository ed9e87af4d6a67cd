"""Static KV cache and `torch.compile`d generation on every supported backbone, and a fresh model's CLIP init.

Greedy tokens from the static cache and from compiled decoding (`fullgraph=True`, so a graph break fails) must equal
the dynamic-cache tokens of the same weights. Compilation uses the `eager` backend: it traces exactly what
inductor would (graph breaks, guards, the precomputed mask dict GenerationMixin passes) without building kernels,
which keeps the test to seconds on CPU.
"""

import math

import pytest
import torch
from conftest import single_image_inputs, tiny_deepstack_config
from transformers import CompileConfig

from deepstack_hf import DeepStackForConditionalGeneration

# small windows on the sliding-window backbones, so that their second mask type is really built
TEXT_OVERRIDES = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "phi3": {"sliding_window": 8},
    "qwen2": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 3},
}


def _greedy(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, **kwargs)


def test_compile_flag_is_declared():
    assert DeepStackForConditionalGeneration._can_compile_fullgraph


@pytest.mark.parametrize("text_model_type", sorted(TEXT_OVERRIDES))
def test_static_cache_and_compiled_generation_equal_dynamic(text_model_type):
    text_config = {"initializer_range": 0.1, **TEXT_OVERRIDES[text_model_type]}
    config = tiny_deepstack_config(text_model_type, text_config=text_config)
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    inputs = single_image_inputs(config, 56, 112)
    dynamic = _greedy(model, inputs)
    static = _greedy(model, inputs, cache_implementation="static")
    compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    compile_config._compile_all_devices = True  # GenerationMixin compiles on accelerators only unless told
    compiled = _greedy(model, inputs, cache_implementation="static", compile_config=compile_config)
    torch.testing.assert_close(static, dynamic, rtol=0, atol=0)
    torch.testing.assert_close(compiled, dynamic, rtol=0, atol=0)
    torch._dynamo.reset()


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
