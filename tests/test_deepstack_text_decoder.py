"""The stack-injecting decoder against the stock Transformers decoders and hand-placed stacks."""

import pytest
import torch
from conftest import tiny_text_config
from transformers import AutoConfig, LlamaModel, MistralModel, Phi3Model, Qwen2Model

from deepstack_hf.modeling_deepstack_text import SUPPORTED_TEXT_MODELS, text_model_class

STOCK_MODELS = {"llama": LlamaModel, "mistral": MistralModel, "phi3": Phi3Model, "qwen2": Qwen2Model}
# small windows so that the sliding-window masks really cut the 12-token inputs below
WINDOW_OVERRIDES = {
    "llama": {},
    "mistral": {"sliding_window": 4},
    "phi3": {"sliding_window": 4},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 3},
}


def decoder_pair(model_type):
    """(DeepStack decoder, stock decoder) with the same random weights."""
    config = AutoConfig.for_model(**tiny_text_config(model_type, **WINDOW_OVERRIDES[model_type]))
    torch.manual_seed(0)
    deepstack = text_model_class(model_type)(config).eval()
    stock = STOCK_MODELS[model_type](config).eval()
    stock.load_state_dict(deepstack.state_dict())
    return deepstack, stock


def visual_inputs():
    """Two rows, left padding on the first; visual tokens at scattered positions."""
    input_ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[0, :3] = 0
    visual_pos_masks = torch.zeros(2, 12, dtype=torch.bool)
    visual_pos_masks[0, 4:7] = True
    visual_pos_masks[1, [1, 2, 9]] = True
    return input_ids, attention_mask, visual_pos_masks


def test_supported_types_and_unknown_type():
    assert set(SUPPORTED_TEXT_MODELS) == set(STOCK_MODELS)
    with pytest.raises(ValueError, match="gpt2"):
        text_model_class("gpt2")


@pytest.mark.parametrize("model_type", sorted(STOCK_MODELS))
def test_without_stacks_matches_stock_decoder(model_type):
    deepstack, stock = decoder_pair(model_type)
    input_ids, attention_mask, _ = visual_inputs()
    with torch.no_grad():
        expected = stock(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        actual = deepstack(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", sorted(STOCK_MODELS))
def test_stacks_land_at_visual_positions_of_their_layers_only(model_type):
    deepstack, _ = decoder_pair(model_type)
    input_ids, attention_mask, visual_pos_masks = visual_inputs()
    inputs_embeds = deepstack.embed_tokens(input_ids).detach()
    stacks = {1: torch.randn(6, 32), 4: torch.randn(6, 32)}

    layer_inputs, layer_outputs = [], []
    hooks = [
        hook
        for layer in deepstack.layers
        for hook in (
            layer.register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0])),
            layer.register_forward_hook(lambda module, args, output: layer_outputs.append(output)),
        )
    ]
    with torch.no_grad():
        deepstack(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            visual_pos_masks=visual_pos_masks,
            deepstack_embeds=stacks,
        )
    for hook in hooks:
        hook.remove()

    previous = [inputs_embeds] + layer_outputs[:-1]
    for layer_idx, (before, seen) in enumerate(zip(previous, layer_inputs)):
        expected_delta = torch.zeros_like(before)
        if layer_idx in stacks:
            visual_positions = [(b, t) for b in range(2) for t in range(12) if visual_pos_masks[b, t]]
            for row, (b, t) in enumerate(visual_positions):
                expected_delta[b, t] = stacks[layer_idx][row]
        torch.testing.assert_close(seen - before, expected_delta, rtol=0, atol=1e-6)


def test_stack_rows_must_match_visual_positions_checked_before_any_layer():
    deepstack, _ = decoder_pair("llama")
    input_ids, _, visual_pos_masks = visual_inputs()
    calls = []
    hook = deepstack.layers[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(ValueError, match=r"positions: 6, rows: \[5\]"):  # a late stack is refused before layer 0 runs
        deepstack(input_ids=input_ids, visual_pos_masks=visual_pos_masks, deepstack_embeds={4: torch.zeros(5, 32)})
    with pytest.raises(ValueError, match=r"positions: 6, rows: \[6, 5\]"):
        deepstack(
            input_ids=input_ids,
            visual_pos_masks=visual_pos_masks,
            deepstack_embeds={1: torch.zeros(6, 32), 4: torch.zeros(5, 32)},
        )
    hook.remove()
    assert calls == []


@pytest.mark.parametrize("model_type", sorted(STOCK_MODELS))
def test_precomputed_mask_dict_is_accepted_like_the_stock_decoder(model_type):
    """GenerationMixin (static cache, compiled generation) passes `{layer type: mask}`; the DeepStack decoder takes it
    for every backbone (as the stock `Qwen2Model` does) and gives what the 2-D padding mask gives."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    deepstack, stock = decoder_pair(model_type)
    input_ids, attention_mask, visual_pos_masks = visual_inputs()
    inputs_embeds = deepstack.embed_tokens(input_ids).detach()
    mask_kwargs = {
        "config": deepstack.config,
        "inputs_embeds": inputs_embeds,
        "attention_mask": attention_mask,
        "past_key_values": None,
        "position_ids": torch.arange(12).unsqueeze(0),
    }
    masks = {"full_attention": create_causal_mask(**mask_kwargs)}
    if getattr(deepstack.config, "sliding_window", None):
        masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
    stacks = {1: torch.randn(6, 32)}
    with torch.no_grad():
        expected = deepstack(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, visual_pos_masks=visual_pos_masks,
            deepstack_embeds=stacks,
        ).last_hidden_state
        actual = deepstack(
            inputs_embeds=inputs_embeds, attention_mask=masks, visual_pos_masks=visual_pos_masks,
            deepstack_embeds=stacks,
        ).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    if model_type == "qwen2":
        with torch.no_grad():
            stock_out = stock(inputs_embeds=inputs_embeds, attention_mask=masks).last_hidden_state
            stock_plain = stock(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        torch.testing.assert_close(stock_out, stock_plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no mask for the layer type"):
        deepstack(inputs_embeds=inputs_embeds, attention_mask={"other": masks["full_attention"]})
