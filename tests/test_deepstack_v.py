"""DeepStack-V: stacks into the vision tower's layers (docs/design.md, "DeepStack-V").

Independent expectations: a hand-built mosaic cut with plain slicing; a second, loop-by-loop run of the same CLIP
layers with the stacks gathered token by token from the design's rule; `transformers.LlavaForConditionalGeneration`
on the same weights when no stack reaches the global view; single-row runs for batches.
"""

import pytest
import torch
from torch import nn

from conftest import TINY_IMAGE_SIZE, enable_activation_checkpointing, tiny_deepstack_config
from deepstack_hf import DeepStackConfig, DeepStackForConditionalGeneration
from deepstack_hf.modeling_deepstack_vision import DeepStackVisionModel
from deepstack_hf.stack_layout import vision_tower_stacks
from test_modeling_deepstack import PAD, left_padded, llava_twin

from deepstack_hf._compat import GENERATE_ENCODES_IMAGES, GENERATE_REPEATS_IMAGE_GROUPS

TOWER_LAYERS = 3  # the tiny CLIP of conftest
PATCHES = 4  # patches per side of one tiny view
IMAGE_TOKEN = 300


def v_config(split=None, **overrides):
    if split is not None:
        overrides["vision_split_layer"] = split
        if split >= TOWER_LAYERS and overrides.get("vision_post_layers", 5):
            overrides.setdefault("vision_feature_layer", -1)
    return tiny_deepstack_config(deepstack_variant="V", **overrides)


def v_model(seed=0, split=None, **overrides):
    torch.manual_seed(seed)
    return DeepStackForConditionalGeneration(v_config(split, **overrides)).eval()


def views(num_images, seed=0, num_crops=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_images, 1 + num_crops, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=generator)


# ---------------------------------------------------------------- config


def test_config_defaults():
    config = v_config()
    assert config.vision_split_layer == TOWER_LAYERS // 2 and config.vision_post_layers == 0
    assert config.square_grid and config.deepstack_layers == [] and config.num_stacks == 0
    assert config.num_vision_stacks == 4
    clip_l = DeepStackConfig(deepstack_variant="V")  # CLIP ViT-L/14-336: 24 layers
    assert clip_l.vision_split_layer == 12 and clip_l.vision_post_layers == 0
    extended = v_config(split=TOWER_LAYERS)
    assert extended.vision_post_layers == 5 and extended.vision_feature_layer == -1
    reloaded = DeepStackConfig.from_dict(extended.to_dict())
    assert (reloaded.vision_split_layer, reloaded.vision_post_layers) == (TOWER_LAYERS, 5)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"hd_layout": True}, "hd_layout"),
        ({"square_grid": False}, "square_grid"),
        ({"stack_sampling": "1d"}, "stack_sampling"),
        ({"deepstack_layers": [1, 2, 3, 4]}, "deepstack_layers"),
        ({"num_crops": 6}, "square number"),
        ({"vision_split_layer": -1}, "vision_split_layer"),
        ({"vision_split_layer": TOWER_LAYERS}, "vision_feature_layer=-1"),  # 5 extra layers, select layer -2
        ({"vision_feature_layer": 4}, "vision_feature_layer"),
    ],
)
def test_config_refusals(overrides, named):
    with pytest.raises(ValueError, match=named):
        tiny_deepstack_config(deepstack_variant=overrides.pop("deepstack_variant", "V"), **overrides)


def test_unknown_variant_is_refused_by_the_strict_config():
    with pytest.raises(Exception, match="deepstack_variant"):
        tiny_deepstack_config(deepstack_variant="X")


@pytest.mark.parametrize("field", ["vision_split_layer", "vision_post_layers"])
def test_vision_fields_need_the_v_variant(field):
    with pytest.raises(ValueError, match=field):
        tiny_deepstack_config(**{field: 2})


# ---------------------------------------------------------------- stacks


@pytest.mark.parametrize("side", [2, 3])
def test_stacks_of_a_hand_built_mosaic(side):
    """Mosaic cell (R, C) holds (R, C); crops are its p x p blocks; stack a*n+b must be rows a::n, columns b::n."""
    rows = torch.arange(side * PATCHES).view(-1, 1).expand(-1, side * PATCHES)
    mosaic = torch.stack([rows, rows.T], dim=-1).float()  # (n*p, n*p, 2): the channels are the cell's coordinates
    crops = [
        mosaic[r * PATCHES : (r + 1) * PATCHES, c * PATCHES : (c + 1) * PATCHES].reshape(-1, 2)
        for r in range(side)
        for c in range(side)
    ]
    stacks = vision_tower_stacks(torch.stack(crops)[None])[0]
    assert stacks.shape == (side * side, PATCHES * PATCHES, 2)
    for a in range(side):
        for b in range(side):
            expected = [(a + side * y, b + side * x) for y in range(PATCHES) for x in range(PATCHES)]
            assert stacks[a * side + b].long().tolist() == [list(cell) for cell in expected]


def reference_tower(tower: DeepStackVisionModel, pixel_values: torch.Tensor, split: int, side: int = 2):
    """The design's DeepStack-V run with explicit loops over the same CLIP layers: (hidden states of the globals,
    stacks)."""
    layers = [*tower.encoder.layers, *tower.post_encoder]
    per_image = 1 + side * side
    states = tower.pre_layrnorm(tower.embeddings(pixel_values))
    hidden, stacks = [], None
    for index in range(len(layers) + 1):
        if index == split < len(layers):
            local = states.view(-1, per_image, *states.shape[1:])[:, 1:, 1:]
            stacks = torch.zeros(local.shape[0], side * side, PATCHES * PATCHES, local.shape[-1])
            for a in range(side):
                for b in range(side):
                    for y in range(PATCHES):
                        for x in range(PATCHES):
                            row, col = a + side * y, b + side * x  # mosaic cell of stack (a, b), token (y, x)
                            crop = (row // PATCHES) * side + col // PATCHES
                            token = (row % PATCHES) * PATCHES + col % PATCHES
                            stacks[:, a * side + b, y * PATCHES + x] = local[:, crop, token]
            states = states[::per_image]
        if stacks is not None and 0 <= index - split < side * side and index < len(layers):
            states = states.clone()
            states[:, 1:] += stacks[:, index - split]
        hidden.append(states if stacks is not None else states[::per_image])
        if index < len(layers):
            states = layers[index](states, None)
    return hidden, stacks


@pytest.mark.parametrize("split", range(0, TOWER_LAYERS + 6))
def test_tower_hidden_states_for_every_split_layer(split):
    model = v_model(split=split)
    tower = model.model.vision_tower
    depth = TOWER_LAYERS + (5 if split >= TOWER_LAYERS else 0)
    assert len(tower.layers) == depth
    pixel_values = views(2).flatten(0, 1)
    with torch.no_grad():
        output = tower(pixel_values, output_hidden_states=True)
        expected_states, expected_stacks = reference_tower(tower, pixel_values, split)
    assert len(output.hidden_states) == depth + 1
    for index, (got, want) in enumerate(zip(output.hidden_states, expected_states)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"hidden state {index}")
    torch.testing.assert_close(output.last_hidden_state, expected_states[-1], rtol=1e-5, atol=1e-5)
    if split >= depth:
        assert output.vision_stacks is None and expected_stacks is None
    else:
        torch.testing.assert_close(output.vision_stacks, expected_stacks, rtol=1e-5, atol=1e-5)
    # the feature: hidden state `vision_feature_layer`, CLS dropped (CLIP-L, S = 12: the input of layer 23)
    with torch.no_grad():
        features = model.model.get_image_features(views(2), torch.tensor([[30, 200], [90, 40]])).pooler_output
        expected = model.model.multi_modal_projector(expected_states[model.config.vision_feature_layer][:, 1:])
    torch.testing.assert_close(torch.stack(features), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split, reaches", [(0, True), (TOWER_LAYERS - 1, True), (TOWER_LAYERS + 4, True), (TOWER_LAYERS + 5, False)])
def test_local_views_reach_the_features_only_before_the_last_layer(split, reaches):
    model = v_model(split=split)
    pixel_values, changed = views(1), views(1, seed=1)
    changed[:, 0] = pixel_values[:, 0]  # same global view, other crops
    sizes = torch.tensor([[50, 50]])
    with torch.no_grad():
        a = model.model.get_image_features(pixel_values, sizes).pooler_output[0]
        b = model.model.get_image_features(changed, sizes).pooler_output[0]
    assert (not torch.allclose(a, b)) == reaches


def test_select_layer_minus_2_reads_the_input_of_the_last_layer():
    """CLIP-L shape of the design's example (docs/design.md, "DeepStack-V"): S = L // 2, select -2 -> feature =
    input of layer L - 1."""
    model = v_model()
    with torch.no_grad():
        output = model.model.vision_tower(views(1).flatten(0, 1), output_hidden_states=-2)
    assert output.hidden_states[TOWER_LAYERS - 1] is not None
    assert sum(state is not None for state in output.hidden_states) == 1


# ---------------------------------------------------------------- the model


def image_row(pieces):
    ids = []
    for piece in pieces:
        ids += [IMAGE_TOKEN] * PATCHES * PATCHES if piece == "image" else [piece]
    return ids


# one image; text only; two images. Image sizes differ (wide, tall, square): DeepStack-V always uses 5 views.
ROWS = [[1, 5, "image", 7, 8], [1, 9, 10, 11, 12, 13, 17], [1, "image", 14, "image", 15, 16]]
ROW_IMAGES = [[0], [], [1, 2]]
SIZES = torch.tensor([[40, 100], [120, 30], [50, 50]])


def test_zero_stack_deepstack_v_is_llava():
    """Split at the last CLIP layer with no extra layers: no stack reaches the global view; LLaVA-1.5 on CLIP."""
    model = v_model(split=TOWER_LAYERS, vision_post_layers=0)
    input_ids, attention_mask = left_padded([image_row(row) for row in ROWS])
    pixel_values = views(3)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, image_sizes=SIZES).logits
        expected = llava_twin(model)(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values[:, 0]).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, TOWER_LAYERS])
def test_batch_matches_rows_alone(split):
    model = v_model(split=split)
    input_ids, attention_mask = left_padded([image_row(row) for row in ROWS])
    pixel_values = views(3)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, image_sizes=SIZES)
    with torch.no_grad():
        batched = model(**batch).logits
        for row, images in enumerate(ROW_IMAGES):
            keep = attention_mask[row].bool()
            single = {"input_ids": input_ids[row, keep][None]}
            if images:
                single.update(pixel_values=pixel_values[images], image_sizes=SIZES[images])
            torch.testing.assert_close(batched[row, keep], model(**single).logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("repeat", [{"num_return_sequences": 2, "do_sample": True}, {"num_beams": 2}], ids=["sequences", "beams"])
def test_pre_encoded_images_with_repeated_prompts_leave_the_callers_features_alone(repeat):
    """Generation repeats pre-encoded features per prompt for beams / `num_return_sequences` (DeepStack-V has no
    decoder stacks: `deepstack_features is None`, nothing to index); the caller's `mm_encoder_outputs` stay as given
    and give what the raw images give."""
    model = v_model()
    input_ids, attention_mask = left_padded([image_row(row) for row in ROWS])
    pixel_values = views(3)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values, SIZES)
    assert features.deepstack_features is None
    pooled = list(features.pooler_output)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3, pad_token_id=PAD, **repeat)
    if not GENERATE_REPEATS_IMAGE_GROUPS:  # 5.17 does not repeat pre-encoded outputs, 5.18 repeats them one by one
        refusal = "one by one" if GENERATE_ENCODES_IMAGES else "does not repeat pre-encoded mm_encoder_outputs"
        with pytest.raises(ValueError, match=refusal):
            model.generate(mm_encoder_outputs={"image": features}, **kwargs)
    else:
        torch.manual_seed(0)
        encoded = model.generate(mm_encoder_outputs={"image": features}, **kwargs)
        torch.manual_seed(0)
        raw = model.generate(pixel_values=pixel_values, image_sizes=SIZES, **kwargs)
        assert encoded.shape[0] == 3 * repeat.get("num_return_sequences", 1) and encoded.tolist() == raw.tolist()
    assert len(features.pooler_output) == 3 and all(a is b for a, b in zip(features.pooler_output, pooled))
    assert features.deepstack_features is None


def test_decoder_gets_no_stacks():
    model = v_model()
    seen = []
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("deepstack_embeds")), with_kwargs=True
    )
    input_ids, _ = left_padded([image_row(ROWS[0])])
    with torch.no_grad():
        model(input_ids=input_ids, pixel_values=views(1), image_sizes=SIZES[:1])
    assert not seen[0]


def test_eager_and_sdpa_agree_and_attentions_cover_every_layer():
    eager = v_model(split=TOWER_LAYERS, attn_implementation="eager")
    sdpa = v_model(split=TOWER_LAYERS, attn_implementation="sdpa")
    assert eager.model.vision_tower.config._attn_implementation == "eager"
    pixel_values = views(2).flatten(0, 1)
    with torch.no_grad():
        a = eager.model.vision_tower(pixel_values, output_attentions=True)
        b = sdpa.model.vision_tower(pixel_values)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert len(a.attentions) == TOWER_LAYERS + 5
    # CLIP layers see all 2 x 5 views, the extra layers after the split only the 2 global views
    assert [att.shape[0] for att in a.attentions] == [10] * TOWER_LAYERS + [2] * 5


@pytest.mark.parametrize("split", [1, TOWER_LAYERS])
def test_gradient_checkpointing_gives_the_same_gradients(split):
    input_ids, _ = left_padded([image_row(ROWS[2])])
    inputs = dict(input_ids=input_ids, pixel_values=views(2), image_sizes=SIZES[1:], labels=input_ids)
    grads = []
    for checkpointing in (False, True):
        model = v_model(split=split).train()
        if checkpointing:
            enable_activation_checkpointing(model)
            assert all(layer.gradient_checkpointing for layer in model.model.vision_tower.layers)
        model(**inputs).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(name.startswith("model.vision_tower.encoder.layers.0.") for name in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_fp32(dtype):
    model = v_model(split=1)
    input_ids, _ = left_padded([image_row(ROWS[0])])
    inputs = dict(input_ids=input_ids, pixel_values=views(1), image_sizes=SIZES[:1])
    with torch.no_grad():
        reference = model(**inputs).logits
        half = model.to(dtype)(**inputs).logits.float()
    assert torch.isfinite(half).all()
    assert nn.functional.cosine_similarity(half.flatten(), reference.flatten(), dim=0) > 0.99


def test_save_reload_with_extra_layers_and_device_map(tmp_path):
    model = v_model(split=TOWER_LAYERS + 1)
    names = [name for name in model.state_dict() if ".post_encoder." in name]
    assert len(names) == 5 * 16 and "model.vision_tower.post_encoder.4.mlp.fc2.bias" in names
    model.save_pretrained(tmp_path)
    reloaded = DeepStackForConditionalGeneration.from_pretrained(tmp_path, device_map="auto").eval()
    assert "CLIPEncoderLayer" in reloaded._no_split_modules  # a device_map never cuts a tower layer
    input_ids, _ = left_padded([image_row(ROWS[2])])
    inputs = dict(input_ids=input_ids, pixel_values=views(2), image_sizes=SIZES[1:])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_bitsandbytes_keeps_the_whole_tower_unquantized(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    model = v_model(split=TOWER_LAYERS, text_config={"hidden_size": 64, "intermediate_size": 128})
    model.save_pretrained(tmp_path)
    quantized = DeepStackForConditionalGeneration.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    ).eval()
    tower = quantized.model.vision_tower
    assert all(type(module) is nn.Linear for module in tower.modules() if isinstance(module, nn.Linear))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.model.language_model.modules())
    pixel_values = views(1)
    with torch.no_grad():
        got = quantized.model.get_image_features(pixel_values, SIZES[:1]).pooler_output[0]
        want = model.model.get_image_features(pixel_values, SIZES[:1]).pooler_output[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
