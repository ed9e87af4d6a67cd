"""The stack-injecting decoder against the stock Transformers decoders and hand-placed stacks."""

import pytest
import torch
from conftest import enable_activation_checkpointing, tiny_text_config
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


def decoder_pair(model_type, attn_implementation="sdpa"):
    """(DeepStack decoder, stock decoder) with the same random weights."""
    config = AutoConfig.for_model(**tiny_text_config(model_type, **WINDOW_OVERRIDES[model_type]))
    config._attn_implementation = attn_implementation
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
def test_the_stock_forward_runs_the_layers_and_each_hook_knows_its_layer(model_type, monkeypatch):
    """The decoder's own forward only checks the stacks and calls the stock forward once, which runs every layer."""
    deepstack, _ = decoder_pair(model_type)
    stock_class = STOCK_MODELS[model_type]
    calls = []
    stock_forward = stock_class.forward

    def recording_forward(self, *args, **kwargs):
        calls.append(sorted(kwargs))
        return stock_forward(self, *args, **kwargs)

    monkeypatch.setattr(stock_class, "forward", recording_forward)
    input_ids, _, visual_pos_masks = visual_inputs()
    with torch.no_grad():
        deepstack(input_ids=input_ids, visual_pos_masks=visual_pos_masks, deepstack_embeds={2: torch.zeros(6, 32)})
    assert len(calls) == 1 and {"deepstack_embeds", "visual_pos_masks"} <= set(calls[0])
    hooks = [list(layer._forward_pre_hooks.values()) for layer in deepstack.layers]
    assert [[hook.layer_idx for hook in layer_hooks] for layer_hooks in hooks] == [[index] for index in range(6)]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", sorted(STOCK_MODELS))
def test_stacks_land_at_visual_positions_of_their_layers_only(model_type, attn_implementation):
    """The stacks travel through the stock forward's keyword arguments to every layer's pre-hook; each layer gets its
    own stack at the visual positions, and none of the two extra arguments reaches a layer's own forward."""
    deepstack, _ = decoder_pair(model_type, attn_implementation)
    input_ids, attention_mask, visual_pos_masks = visual_inputs()
    inputs_embeds = deepstack.embed_tokens(input_ids).detach()
    stacks = {1: torch.randn(6, 32), 4: torch.randn(6, 32)}

    layer_inputs, layer_outputs, layer_kwargs = [], [], []

    def record_input(module, args, kwargs):  # registered after the injector: sees what the layer's forward gets
        layer_inputs.append(args[0] if args else kwargs["hidden_states"])
        layer_kwargs.append(set(kwargs))

    hooks = [
        hook
        for layer in deepstack.layers
        for hook in (
            layer.register_forward_pre_hook(record_input, with_kwargs=True),
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

    assert len(layer_inputs) == 6
    assert not any({"visual_pos_masks", "deepstack_embeds"} & kwargs for kwargs in layer_kwargs)
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


def test_unknown_stack_layers_are_refused():
    deepstack, _ = decoder_pair("llama")
    input_ids, _, visual_pos_masks = visual_inputs()
    with pytest.raises(ValueError, match=r"stacks for 6, which are not decoder layer indices"):
        deepstack(input_ids=input_ids, visual_pos_masks=visual_pos_masks, deepstack_embeds={6: torch.zeros(6, 32)})


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_gradient_checkpointing_keeps_outputs_and_gradients(model_type, use_reentrant):
    """Training checkpoints every layer (the release decides whether its hooks run inside the checkpoint); the output
    and the gradients reaching the stacks, the inputs and the weights stay those of the plain run."""
    deepstack, _ = decoder_pair(model_type)
    deepstack.train()
    input_ids, attention_mask, visual_pos_masks = visual_inputs()
    inputs_embeds = deepstack.embed_tokens(input_ids).detach()
    weights = torch.randn(12, 32, generator=torch.Generator().manual_seed(2))

    def run():
        deepstack.zero_grad()
        embeds = inputs_embeds.clone().requires_grad_()
        stacks = {layer: torch.randn(6, 32, generator=torch.Generator().manual_seed(layer)).requires_grad_() for layer in (0, 3)}
        output = deepstack(
            inputs_embeds=embeds, attention_mask=attention_mask, visual_pos_masks=visual_pos_masks, deepstack_embeds=stacks
        ).last_hidden_state
        (output * weights).sum().backward()
        grads = {name: p.grad.clone() for name, p in deepstack.named_parameters() if p.grad is not None}
        return output.detach(), embeds.grad, {layer: stack.grad for layer, stack in stacks.items()}, grads

    plain = run()
    enable_activation_checkpointing(deepstack, {"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in deepstack.layers)
    checkpointed = run()
    torch.testing.assert_close(checkpointed[0], plain[0])
    torch.testing.assert_close(checkpointed[1], plain[1])
    for layer, grad in plain[2].items():
        assert grad is not None and grad.abs().sum() > 0
        torch.testing.assert_close(checkpointed[2][layer], grad, msg=f"stack {layer}")
    assert checkpointed[3].keys() == plain[3].keys()
    for name, grad in plain[3].items():
        torch.testing.assert_close(checkpointed[3][name], grad, rtol=1e-4, atol=1e-6, msg=name)
