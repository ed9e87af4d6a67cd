"""DeepStackModel / DeepStackForConditionalGeneration on tiny random configs.

Independent references: `transformers.LlavaForConditionalGeneration` with the same weights (zero stacks), the
same LLaVA modules with the stacks added by forward pre-hooks (non-zero stacks), single-row runs for batches,
and a hand-written cross-entropy for the loss.
"""

import pytest
import torch
from conftest import enable_activation_checkpointing, tiny_deepstack_config
from safetensors.torch import save_file
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForImageTextToText, LlavaConfig, LlavaForConditionalGeneration

from deepstack_hf import DeepStackForConditionalGeneration, DeepStackModel
from deepstack_hf.grid_layout import image_grid, num_image_tokens, num_views
from deepstack_hf.stack_layout import hd_layout, plain_layout

IMAGE_TOKEN, PAD, SIZE = 300, 0, 56
# (height, width) of the images used below: wide, tall and square grids
IMAGE_SIZES = [(40, 100), (120, 30), (50, 50)]
BACKBONES = {
    "llama": {},
    "llama-hd": {"hd_layout": True},
    "phi3-window": {"text_model_type": "phi3", "text_config": {"sliding_window": 8}},
}


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return DeepStackForConditionalGeneration(tiny_deepstack_config(**overrides)).eval()


def grid_of(size, config):
    """The crop grid of a `(height, width)` image under `config` (the square grid for DeepStack-V)."""
    return image_grid(size[1], size[0], config.num_crops, SIZE, config.square_grid)


def image_pixels(config, sizes, seed=0):
    """`(num_images, max_views, 3, S, S)` random views, zero-padded, and `image_sizes` `(num_images, 2)`."""
    generator = torch.Generator().manual_seed(seed)
    counts = [num_views(grid_of(size, config), config.num_crops, config.hd_layout) for size in sizes]
    pixel_values = torch.zeros(len(sizes), max(counts), 3, SIZE, SIZE)
    for index, count in enumerate(counts):
        pixel_values[index, :count] = torch.randn(count, 3, SIZE, SIZE, generator=generator)
    return pixel_values, torch.tensor(sizes)


def row_ids(config, pieces):
    """Token ids of one prompt: ints are text tokens, `(h, w)` tuples expand to that image's placeholder run."""
    ids = []
    for piece in pieces:
        if isinstance(piece, tuple):
            ids += [IMAGE_TOKEN] * num_image_tokens(grid_of(piece, config), config.hd_layout, config.patches_per_side)
        else:
            ids.append(piece)
    return ids


def left_padded(rows):
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[PAD] * (length - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return input_ids, attention_mask


# one image; text only; two images (images are numbered in placeholder order over the batch)
ROWS = [[1, 5, IMAGE_SIZES[0], 7, 8], [1, 9, 10, 11, 12, 13], [1, IMAGE_SIZES[1], 14, IMAGE_SIZES[2], 15, 16]]
ROW_IMAGES = [[0], [], [1, 2]]


def batch_inputs(config, rows=ROWS):
    images = [piece for row in rows for piece in row if isinstance(piece, tuple)]
    pixel_values, image_sizes = image_pixels(config, images)
    input_ids, attention_mask = left_padded([row_ids(config, row) for row in rows])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "image_sizes": image_sizes,
    }


def row_inputs(config, batch, row, images):
    """Row `row` of `batch` alone, unpadded, with its own images (padded to their own largest view count)."""
    keep = batch["attention_mask"][row].bool()
    inputs = {"input_ids": batch["input_ids"][row, keep][None]}
    if images:
        sizes = batch["image_sizes"][images]
        views = max(num_views(grid_of(size, config), config.num_crops, config.hd_layout) for size in sizes.tolist())
        inputs["pixel_values"] = batch["pixel_values"][images, :views]
        inputs["image_sizes"] = sizes
    return inputs


def positions(attention_mask):
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def llava_twin(model):
    """`LlavaForConditionalGeneration` holding `model`'s vision tower, projector, decoder and head."""
    config = model.config
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_id=config.image_token_id,
        image_seq_length=config.image_seq_length,
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy="default",
    )
    llava = LlavaForConditionalGeneration(llava_config).eval()
    state = {key: value for key, value in model.state_dict().items() if key != "model.image_newline"}
    llava.load_state_dict(state, strict=True)
    return llava


# ---------------------------------------------------------------- references


def test_zero_stacks_match_llava():
    model = make_model()
    batch = batch_inputs(model.config)
    with torch.no_grad():
        features = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"])
        features.deepstack_features = [[torch.zeros_like(f) for f in stack] for stack in features.deepstack_features]
        logits = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], mm_encoder_outputs={"image": features}
        ).logits
        expected = llava_twin(model)(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"][:, 0],  # the global views only
        ).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hd", [False, True], ids=["plain", "hd"])
def test_matches_llava_modules_with_hooked_stacks(hd):
    """Second code path: LLaVA's CLIP + projector encode the views, `stack_layout` arranges them, plain Python places
    the sequence features, and forward pre-hooks on the stock decoder layers add the stacks."""
    model = make_model(hd_layout=hd)
    config = model.config
    batch = batch_inputs(config)
    llava = llava_twin(model)

    images = [(index, grid_of(size, config)) for index, size in enumerate(batch["image_sizes"].tolist())]
    sequences, stacks = [], []
    with torch.no_grad():
        for index, grid in images:
            views = batch["pixel_values"][index, : num_views(grid, config.num_crops, hd)]
            per_view = torch.stack(llava.model.get_image_features(views).pooler_output)
            if hd:
                sequence, image_stacks = hd_layout(per_view, grid, config.num_crops, model.model.image_newline)
            else:
                sequence, image_stacks = plain_layout(per_view, grid, config.num_crops)
            sequences.append(sequence)
            stacks.append(image_stacks)
    visual_rows = torch.cat(sequences)
    layer_stacks = torch.cat(stacks, dim=1)  # (K, total visual tokens, hidden)

    inputs_embeds = llava.get_input_embeddings()(batch["input_ids"]).detach().clone()
    visual_positions = [tuple(p) for p in (batch["input_ids"] == IMAGE_TOKEN).nonzero().tolist()]
    for row, (b, t) in enumerate(visual_positions):
        inputs_embeds[b, t] = visual_rows[row]

    def adder(stack):
        def hook(module, args, kwargs):
            hidden = args[0].clone()
            for row, (b, t) in enumerate(visual_positions):
                hidden[b, t] += stack[row]
            return (hidden,) + args[1:], kwargs

        return hook

    decoder_layers = llava.model.language_model.layers
    hooks = [
        decoder_layers[layer].register_forward_pre_hook(adder(stack), with_kwargs=True)
        for layer, stack in zip(config.deepstack_layers, layer_stacks)
    ]
    with torch.no_grad():
        expected = llava(
            inputs_embeds=inputs_embeds,
            attention_mask=batch["attention_mask"],
            position_ids=positions(batch["attention_mask"]),
        ).logits
        logits = model(**batch, position_ids=positions(batch["attention_mask"])).logits
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- batching and generation


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_batch_with_left_padding_matches_rows_alone(backbone):
    """Logits of a left-padded batch; generation in every mode is tests/test_generation_modes.py's."""
    model = make_model(**BACKBONES[backbone])
    batch = batch_inputs(model.config)
    with torch.no_grad():
        batched = model(**batch, position_ids=positions(batch["attention_mask"])).logits
        for row, images in enumerate(ROW_IMAGES):
            single = row_inputs(model.config, batch, row, images)
            keep = batch["attention_mask"][row].bool()
            torch.testing.assert_close(batched[row, keep], model(**single).logits[0], rtol=1e-5, atol=1e-5)


def test_only_prefill_receives_stacks():
    model = make_model()
    batch = batch_inputs(model.config)
    calls = []

    def record(module, args, kwargs):
        stacks = kwargs.get("deepstack_embeds")
        calls.append((kwargs["inputs_embeds"].shape[1], None if stacks is None else sorted(stacks)))

    hook = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=PAD)
    hook.remove()
    prompt_length = batch["input_ids"].shape[1]
    assert calls == [(prompt_length, model.config.deepstack_layers), (1, None), (1, None)]


def test_stacks_change_the_logits():
    model = make_model()
    batch = batch_inputs(model.config)
    with torch.no_grad():
        features = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"])
        with_stacks = model(**batch).logits
        features.deepstack_features = [[torch.zeros_like(f) for f in stack] for stack in features.deepstack_features]
        without = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], mm_encoder_outputs={"image": features}
        )
    assert (with_stacks - without.logits).abs().max() > 1e-3


# ---------------------------------------------------------------- training


def labels_for(batch):
    labels = batch["input_ids"].clone()
    labels[(labels == IMAGE_TOKEN) | (batch["attention_mask"] == 0)] = -100
    return labels


def test_loss_equals_manual_cross_entropy():
    model = make_model()
    batch = batch_inputs(model.config)
    labels = labels_for(batch)
    with torch.no_grad():
        output = model(**batch, labels=labels)
        unmasked_image_labels = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    expected = F.cross_entropy(
        output.logits[:, :-1].reshape(-1, output.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(unmasked_image_labels.loss, expected)  # image positions are ignored either way


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    model = make_model().train()
    batch = batch_inputs(model.config)
    labels = labels_for(batch)

    def loss_and_grads():
        model.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    enable_activation_checkpointing(model)
    assert model.model.language_model.layers[0].gradient_checkpointing
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys()
    assert any("multi_modal_projector" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- outputs, errors, plumbing


def test_hidden_states_and_attentions_eager():
    model = make_model()
    model.set_attn_implementation("eager")
    batch = batch_inputs(model.config)
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True, output_attentions=True)
    batch_size, length = batch["input_ids"].shape
    layers = model.config.text_config.num_hidden_layers
    assert len(output.hidden_states) == layers + 1 and len(output.attentions) == layers
    assert all(h.shape == (batch_size, length, 32) for h in output.hidden_states)
    assert all(a.shape == (batch_size, 4, length, length) for a in output.attentions)
    assert output.image_hidden_states.shape == ((batch["input_ids"] == IMAGE_TOKEN).sum(), 32)


def test_outputs_carry_the_image_encoder_output():
    """`image_outputs` (the release's multimodal output field from 5.24, the same field before): the images'
    `get_image_features` output, per image; `None` for text-only input. The tuple form still starts with the logits."""
    model = make_model()
    batch = batch_inputs(model.config)
    with torch.no_grad():
        output = model(**batch)
        text_only = model(input_ids=batch["input_ids"][1:2, -6:])
        as_tuple = model(**batch, return_dict=False)
        features = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"])
    assert len(output.image_outputs.pooler_output) == 3
    for got, want in zip(output.image_outputs.pooler_output, features.pooler_output):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(output.image_hidden_states, torch.cat(features.pooler_output))
    assert text_only.image_outputs is None and text_only.image_hidden_states is None
    torch.testing.assert_close(as_tuple[0], output.logits)


def test_token_feature_mismatch_raises_with_both_counts():
    model = make_model()
    batch = batch_inputs(model.config, rows=[[1, IMAGE_SIZES[0], 5]])
    batch["input_ids"] = batch["input_ids"][:, 1:]  # drop BOS: still 16 image tokens
    batch["input_ids"][0, 0] = 7  # now 15
    batch["attention_mask"] = batch["attention_mask"][:, 1:]
    with pytest.raises(ValueError, match="tokens: 15, features: 16"):
        model(**batch)


def test_pixel_values_need_image_sizes():
    model = make_model()
    batch = batch_inputs(model.config)
    del batch["image_sizes"]
    with pytest.raises(ValueError, match="image_sizes"):
        model(**batch)


def test_pixel_values_must_hold_every_view():
    model = make_model()
    batch = batch_inputs(model.config)
    with pytest.raises(ValueError, match=r"implies \d+ views .* holds \d+ non-zero views \(of 2\)"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:, :2]))
    with pytest.raises(ValueError, match="3 images but image_sizes has 2"):
        model(**dict(batch, image_sizes=batch["image_sizes"][:2]))


def test_inputs_embeds_instead_of_input_ids():
    model = make_model()
    batch = batch_inputs(model.config)
    with torch.no_grad():
        expected = model(**batch).logits
        inputs_embeds = model.get_input_embeddings()(batch.pop("input_ids"))
        torch.testing.assert_close(model(**batch, inputs_embeds=inputs_embeds).logits, expected, rtol=0, atol=0)


def test_logits_to_keep():
    model = make_model()
    batch = batch_inputs(model.config)
    with torch.no_grad():
        full = model(**batch).logits
        last = model(**batch, logits_to_keep=1).logits
    torch.testing.assert_close(last, full[:, -1:])


def test_save_and_auto_load_round_trip(tmp_path):
    model = make_model(hd_layout=True)
    batch = batch_inputs(model.config)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    base = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is DeepStackForConditionalGeneration and type(base) is DeepStackModel
    torch.testing.assert_close(base.image_newline, model.model.image_newline, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_weight_names():
    names = set(make_model(hd_layout=True).state_dict())
    assert "model.image_newline" in names and "lm_head.weight" in names
    assert "model.vision_tower.embeddings.patch_embedding.weight" in names  # CLIPVisionModel's 5.x names
    assert {"model.language_model.embed_tokens.weight", "model.language_model.layers.5.mlp.up_proj.weight"} <= names
    assert "model.image_newline" not in make_model().state_dict()


def test_loads_checkpoints_with_vision_model_prefix(tmp_path):
    """LLaVA-style files name the tower `model.vision_tower.vision_model.*`; Transformers maps that prefix away."""
    model = make_model()
    state = {
        key.replace("model.vision_tower.", "model.vision_tower.vision_model."): value.contiguous()
        for key, value in model.state_dict().items()
    }
    model.config.save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = DeepStackForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_projector_depth(depth):
    projector = make_model(projector_depth=depth).model.multi_modal_projector
    linears = sorted(name.split(".")[0] for name, _ in projector.named_parameters())
    assert linears == sorted(f"linear_{i}" for i in range(1, depth + 1) for _ in ("weight", "bias"))
    features = torch.randn(5, 24)
    expected = projector.linear_1(features)
    for i in range(2, depth + 1):
        expected = getattr(projector, f"linear_{i}")(F.gelu(expected))
    torch.testing.assert_close(projector(features), expected)


def test_resize_token_embeddings():
    model = make_model()
    model.resize_token_embeddings(336)
    assert model.get_input_embeddings().weight.shape[0] == 336 and model.lm_head.weight.shape[0] == 336
    batch = batch_inputs(model.config)
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == 336


def test_unknown_text_model_type_raises():
    config = tiny_deepstack_config()
    config.text_config.model_type = "gpt2"
    with pytest.raises(ValueError, match="gpt2"):
        DeepStackForConditionalGeneration(config)
