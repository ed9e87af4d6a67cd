"""Attention backends, `device_map="auto"` with CPU + disk offload, tensor-parallel plan, and the static KV cache.

Every numeric check compares two code paths of the same weights: eager vs sdpa, a counting attention function vs
sdpa, offloaded vs in-memory, static vs dynamic cache.
"""

from collections import Counter

import pytest
import torch

from conftest import tiny_deepstack_config
from deepstack_hf import DeepStackForConditionalGeneration
from deepstack_hf.grid_layout import num_image_tokens, num_views, select_best_grid
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def _image(config, height, width, generator):
    crop = config.vision_config.image_size
    grid = select_best_grid(width, height, config.num_crops, crop)
    tokens = num_image_tokens(grid, config.hd_layout, config.patches_per_side)
    pixels = torch.randn(num_views(grid, config.num_crops, config.hd_layout), 3, crop, crop, generator=generator)
    return tokens, pixels


def _batch(config, seed=0):
    """Two prompts of different lengths, left-padded, one image each (different grids), as a processor would give."""
    crop = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    sizes = [(2 * crop, 2 * crop), (crop, 3 * crop)]
    rows, pixels = [], []
    for (height, width), text_len in zip(sizes, (6, 3)):
        tokens, views = _image(config, height, width, generator)
        text = torch.randint(3, 290, (text_len + 4,), generator=generator)
        image = torch.full((tokens,), config.image_token_id)
        rows.append(torch.cat([torch.tensor([1]), text[:4], image, text[4:]]))
        pixels.append(views)
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), config.text_config.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for index, row in enumerate(rows):
        input_ids[index, length - len(row) :] = row
        attention_mask[index, length - len(row) :] = 1
    max_views = max(p.shape[0] for p in pixels)
    pixel_values = torch.zeros(len(pixels), max_views, *pixels[0].shape[1:])
    for index, views in enumerate(pixels):
        pixel_values[index, : views.shape[0]] = views
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "image_sizes": torch.tensor(sizes),
    }


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "hd"])
def checkpoint(request, tmp_path_factory):
    config = tiny_deepstack_config(hd_layout=request.param, text_config={"initializer_range": 0.1})
    config.vision_config.initializer_range = 0.1  # peaked logits: greedy tokens are not decided by rounding noise
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("fp32")
    model.save_pretrained(path)
    return {"path": path, "config": config, "inputs": _batch(config)}


def _greedy(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, **kwargs)


# ------------------------------------------------------------------------------------------------- attention
def test_attention_backends_are_declared():
    assert DeepStackForConditionalGeneration._supports_sdpa
    assert DeepStackForConditionalGeneration._supports_flash_attn
    assert DeepStackForConditionalGeneration._supports_attention_backend


def test_default_is_sdpa_everywhere(checkpoint):
    model = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"])
    assert model.config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"


def test_eager_and_sdpa_give_the_same_logits(checkpoint):
    inputs = checkpoint["inputs"]
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = DeepStackForConditionalGeneration.from_pretrained(
            checkpoint["path"], attn_implementation=implementation
        ).eval()
        assert model.config.text_config._attn_implementation == implementation
        assert model.config.vision_config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits
    mask = inputs["attention_mask"].bool()  # left-padding rows are not defined the same way by both kernels
    torch.testing.assert_close(logits["eager"][mask], logits["sdpa"][mask], rtol=0, atol=1e-5)


def test_flash_attention_2_is_routed_not_refused(checkpoint):
    """No flash-attn package (nor GPU) here: the request must get as far as the kernel import, i.e. the model itself
    accepts `flash_attention_2` (a model without `_supports_flash_attn` fails earlier with a different message)."""
    try:
        DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"], attn_implementation="flash_attention_2")
    except ImportError as error:
        assert "FlashAttention2" in str(error) and "does not support" not in str(error)
    except ValueError as error:  # e.g. a GPU build without a visible device
        assert "does not support" not in str(error), error


def test_attention_goes_through_the_transformers_interface(checkpoint):
    """A custom function registered with `AttentionInterface` receives every attention call of CLIP and the decoder."""
    calls = Counter()

    def counting_sdpa(module, *args, **kwargs):
        calls[type(module).__name__] += 1
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("deepstack_counting_sdpa", counting_sdpa)
    AttentionMaskInterface.register("deepstack_counting_sdpa", sdpa_mask)
    inputs = checkpoint["inputs"]
    config = checkpoint["config"]
    counted = DeepStackForConditionalGeneration.from_pretrained(
        checkpoint["path"], attn_implementation="deepstack_counting_sdpa"
    ).eval()
    reference = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"]).eval()
    with torch.no_grad():
        got, want = counted(**inputs).logits, reference(**inputs).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # one call per layer and forward: CLIP runs once over all views (sliced as far as `vision_feature_layer` needs)
    text_layers = config.text_config.num_hidden_layers
    assert calls["LlamaAttention"] == text_layers
    assert 1 <= calls["CLIPAttention"] <= config.vision_config.num_hidden_layers


# ------------------------------------------------------------------------------------------------- device map
@pytest.mark.parametrize("text_model_type", ["llama", "phi3"])
def test_no_split_modules_cover_encoder_and_decoder_layers(text_model_type):
    with torch.device("meta"):
        model = DeepStackForConditionalGeneration(tiny_deepstack_config(text_model_type=text_model_type))
    layer = {"llama": "LlamaDecoderLayer", "phi3": "Phi3DecoderLayer"}[text_model_type]
    assert {"CLIPEncoderLayer", layer} <= set(model._no_split_modules)


def test_device_map_auto_with_cpu_and_disk_offload_generates_the_same_tokens(checkpoint, tmp_path):
    inputs = checkpoint["inputs"]
    model = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"]).eval()
    expected = _greedy(model, inputs)
    size = sum(p.numel() * p.element_size() for p in model.parameters())

    offloaded = DeepStackForConditionalGeneration.from_pretrained(
        checkpoint["path"],
        device_map="auto",
        max_memory={"cpu": int(size * 0.6)},
        offload_folder=str(tmp_path / "offload"),
    ).eval()
    placement = offloaded.hf_device_map
    assert {"cpu", "disk"} <= set(placement.values()), placement
    # disk-offloaded weights are not in memory: their modules hold meta tensors, loaded by accelerate's hooks per call
    on_disk = [name for name, device in placement.items() if device == "disk"]
    assert all(p.device.type == "meta" for name in on_disk for p in offloaded.get_submodule(name).parameters())
    # whole layers only: no entry deeper than one CLIP encoder layer / one decoder layer
    for name in placement:
        for container in ("vision_tower.encoder.layers.", "language_model.layers."):
            if container in name:
                assert name.split(container, 1)[1].isdigit(), f"{name} splits a layer"
    stack_layers = checkpoint["config"].deepstack_layers
    assert any(placement.get(f"model.language_model.layers.{i}") == "disk" for i in stack_layers) or (
        placement.get("model.language_model") == "disk"
    ), "at least one stack must be added inside an offloaded decoder layer"

    torch.testing.assert_close(_greedy(offloaded, inputs), expected, rtol=0, atol=0)


def test_tensor_parallel_plan_is_kept(checkpoint):
    model = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"])
    text_plan = model.config.text_config.base_model_tp_plan
    assert text_plan and text_plan["layers.*.self_attn.q_proj"] == "colwise"
    plan = model.tp_plan if hasattr(model, "tp_plan") else model._tp_plan
    for key, style in text_plan.items():
        assert plan[f"model.language_model.{key}"] == style
    assert plan["lm_head"] == "colwise_gather_output"


# ------------------------------------------------------------------------------------------------- static cache
def test_static_cache_generation_equals_dynamic(checkpoint):
    inputs = checkpoint["inputs"]
    model = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"]).eval()
    dynamic = _greedy(model, inputs)
    static = _greedy(model, inputs, cache_implementation="static")
    torch.testing.assert_close(static, dynamic, rtol=0, atol=0)
    # and one prompt alone gives its batch row (left padding does not leak into the result)
    single = {
        "input_ids": inputs["input_ids"][:1],
        "attention_mask": inputs["attention_mask"][:1],
        "pixel_values": inputs["pixel_values"][:1],
        "image_sizes": inputs["image_sizes"][:1],
    }
    torch.testing.assert_close(_greedy(model, single, cache_implementation="static"), dynamic[:1], rtol=0, atol=0)
