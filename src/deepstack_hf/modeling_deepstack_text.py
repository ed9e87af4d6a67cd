"""The DeepStack text decoder: a stock Llama-family decoder whose layers receive visual stacks.

The decoder classes are the installed Transformers release's own decoder models (`LlamaModel`, `MistralModel`,
`Phi3Model`, `Qwen2Model`), their `forward` included and unchanged: masks, rotary embeddings, KV cache, attention
backends, output capturing and gradient checkpointing are whatever that release does. DeepStack adds one thing, at
the extension points the stock forward already offers:

* the stock forward hands every keyword argument it does not know itself (`**kwargs`) to each decoder layer, so the
  decoder's `visual_pos_masks` and `deepstack_embeds` arguments travel to every layer that way;
* each decoder layer carries a forward pre-hook ([`VisualStackInjector`], registered with `with_kwargs=True` when the
  decoder is built) that knows the layer's position `i` in `self.layers`. It takes both arguments out of the layer's
  keyword arguments, so the layer itself never sees them, and adds `deepstack_embeds[i]` (if any) to the layer's input
  hidden states at the visual positions before the layer runs.

Layer weights, names and the decoder's output are the stock ones.
"""

import torch

from transformers import LlamaModel, MistralModel, Phi3Model, Qwen2Model

from ._compat import torch_compilable_check


def add_visual_stack(hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """Out-of-place `hidden_states[visual_pos_masks] += stack`.

    Args:
        hidden_states: `(batch_size, seq_len, hidden_size)`.
        visual_pos_masks: bool `(batch_size, seq_len)`, `True` at the visual tokens.
        stack: `(num_visual_tokens, hidden_size)`, rows in visual-token order (row-major over the batch); the
            caller checks the row count (`check_stack_rows`).

    Returns:
        A new `(batch_size, seq_len, hidden_size)` tensor.
    """
    visual_pos_masks = visual_pos_masks.to(hidden_states.device)
    hidden_states = hidden_states.clone()
    hidden_states[visual_pos_masks] = hidden_states[visual_pos_masks] + stack.to(hidden_states)
    return hidden_states


def check_stack_rows(visual_pos_masks: torch.Tensor | None, deepstack_embeds: dict[int, torch.Tensor]) -> None:
    """Every stack must have one row per visual position (checked once per forward, for all stacks)."""
    if not deepstack_embeds:
        return
    if visual_pos_masks is None:
        raise ValueError("deepstack_embeds needs visual_pos_masks: the positions its rows are added at.")
    rows = [stack.shape[0] for stack in deepstack_embeds.values()]
    num_visual = visual_pos_masks.sum()
    for count in rows:
        torch_compilable_check(
            num_visual == count,
            lambda: f"Visual positions and stack rows do not match, positions: {int(num_visual)}, rows: {rows}",
        )


class VisualStackInjector:
    """Forward pre-hook (`with_kwargs=True`) of the decoder layer at position `layer_idx` of the decoder's `layers`.

    Called with the layer's positional and keyword arguments as the stock decoder forward passes them
    (`hidden_states` first, `(batch_size, seq_len, hidden_size)`). Removes `visual_pos_masks` and `deepstack_embeds`
    from the keyword arguments and, when `deepstack_embeds` holds a stack for `layer_idx`, returns the hidden states
    with that stack added at the visual positions ([`add_visual_stack`]).
    """

    def __init__(self, layer_idx: int):
        self.layer_idx = layer_idx

    def __call__(self, layer: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        visual_pos_masks = kwargs.pop("visual_pos_masks", None)
        stack = (kwargs.pop("deepstack_embeds", None) or {}).get(self.layer_idx)
        if stack is not None:
            if args:
                args = (add_visual_stack(args[0], visual_pos_masks, stack), *args[1:])
            else:
                kwargs["hidden_states"] = add_visual_stack(kwargs["hidden_states"], visual_pos_masks, stack)
        return args, kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer_idx={self.layer_idx})"


class DeepStackTextModelMixin:
    """Gives a Llama-family decoder model (`LlamaModel`, `Phi3Model`, ...) DeepStack's per-layer stack injection.

    Put it before the decoder model class: `class DeepStackLlamaTextModel(DeepStackTextModelMixin, LlamaModel)`.
    Building the decoder registers one [`VisualStackInjector`] on each decoder layer; `forward` checks the stacks and
    runs the stock decoder forward with them as extra keyword arguments.
    """

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        for layer_idx, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(VisualStackInjector(layer_idx), with_kwargs=True)

    def forward(
        self,
        *args,
        visual_pos_masks: torch.Tensor | None = None,
        deepstack_embeds: dict[int, torch.Tensor] | None = None,
        **kwargs,
    ):
        r"""The stock decoder forward (same arguments, same output), with DeepStack's two extra inputs.

        Args:
            visual_pos_masks: bool `(batch_size, seq_len)`, `True` at the visual tokens of this input.
            deepstack_embeds: decoder layer index -> `(num_visual_tokens, hidden_size)` stack, rows in visual-token
                order; added at `visual_pos_masks` just before that layer runs. `None` or `{}` (text-only inputs,
                decode steps) adds nothing.
            *args, **kwargs: the stock decoder's arguments (`input_ids` or `inputs_embeds` `(batch_size, seq_len,
                hidden_size)`, `attention_mask`, `position_ids`, the KV cache under the release's own name, ...).

        Returns:
            The stock decoder's output (`BaseModelOutputWithPast`, `last_hidden_state` `(batch_size, seq_len,
            hidden_size)`).
        """
        if deepstack_embeds:
            self.check_stack_layers(deepstack_embeds)
            check_stack_rows(visual_pos_masks, deepstack_embeds)
            kwargs.update(visual_pos_masks=visual_pos_masks, deepstack_embeds=deepstack_embeds)
        return super().forward(*args, **kwargs)

    def check_stack_layers(self, deepstack_embeds: dict[int, torch.Tensor]) -> None:
        """A stack keyed by anything but the index of a decoder layer that runs would never be added."""
        num_layers = min(len(self.layers), self.config.num_hidden_layers)
        unknown = sorted(str(layer) for layer in deepstack_embeds if not (isinstance(layer, int) and 0 <= layer < num_layers))
        if unknown:
            raise ValueError(
                f"deepstack_embeds has stacks for {', '.join(unknown)}, which are not decoder layer indices "
                f"(0 ... {num_layers - 1})."
            )


class DeepStackLlamaTextModel(DeepStackTextModelMixin, LlamaModel):
    """`LlamaModel` (Llama, Vicuna) with DeepStack stack injection."""


class DeepStackMistralTextModel(DeepStackTextModelMixin, MistralModel):
    """`MistralModel` with DeepStack stack injection."""


class DeepStackPhi3TextModel(DeepStackTextModelMixin, Phi3Model):
    """`Phi3Model` with DeepStack stack injection."""


class DeepStackQwen2TextModel(DeepStackTextModelMixin, Qwen2Model):
    """`Qwen2Model` with DeepStack stack injection."""


SUPPORTED_TEXT_MODELS = {
    "llama": DeepStackLlamaTextModel,
    "mistral": DeepStackMistralTextModel,
    "phi3": DeepStackPhi3TextModel,
    "qwen2": DeepStackQwen2TextModel,
}


def text_model_class(model_type: str) -> type:
    """The DeepStack decoder class for a text config's `model_type`; raises `ValueError` for unsupported types."""
    if model_type not in SUPPORTED_TEXT_MODELS:
        raise ValueError(
            f"Text model type {model_type!r} is not supported by DeepStack; "
            f"supported: {sorted(SUPPORTED_TEXT_MODELS)}."
        )
    return SUPPORTED_TEXT_MODELS[model_type]


__all__ = [
    "SUPPORTED_TEXT_MODELS",
    "DeepStackLlamaTextModel",
    "DeepStackMistralTextModel",
    "DeepStackPhi3TextModel",
    "DeepStackQwen2TextModel",
    "DeepStackTextModelMixin",
    "VisualStackInjector",
    "add_visual_stack",
    "check_stack_rows",
    "text_model_class",
]
