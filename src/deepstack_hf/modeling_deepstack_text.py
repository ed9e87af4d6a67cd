"""The DeepStack text decoder: any supported Llama-family decoder whose layers can receive visual stacks.

One mixin adds stack injection to the stock Transformers decoder models: its `forward` is that of
`LlamaModel` (same mask, rotary, cache and output-capturing machinery) with one extra step, adding
`deepstack_embeds[i]` to the hidden states at the visual positions just before decoder layer `i` runs. The decoder
layers, their weights and their names are the stock ones.
"""

import torch

from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.models.mistral.modeling_mistral import MistralModel
from transformers.models.phi3.modeling_phi3 import Phi3Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, torch_compilable_check
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs


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


class DeepStackTextModelMixin:
    """Gives a Llama-family decoder model (`LlamaModel`, `Phi3Model`, ...) DeepStack's per-layer stack injection.

    Put it before the decoder model class: `class DeepStackLlamaTextModel(DeepStackTextModelMixin, LlamaModel)`.
    Layers whose `config.layer_types` entry is `"sliding_attention"` (or every layer, when the config has a
    `sliding_window` but no `layer_types`) get the sliding-window causal mask, the others the full causal mask.
    """

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        visual_pos_masks: torch.Tensor | None = None,
        deepstack_embeds: dict[int, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        r"""
        Args:
            input_ids: `(batch_size, seq_len)`; exactly one of `input_ids` and `inputs_embeds` is given.
            attention_mask: `(batch_size, past + seq_len)` padding mask (1 = keep), or a prepared mask.
            position_ids: `(batch_size, seq_len)`; defaults to the positions after the cached ones.
            past_key_values: KV cache; a `DynamicCache` is created when `use_cache` and none is given.
            inputs_embeds: `(batch_size, seq_len, hidden_size)`.
            visual_pos_masks: bool `(batch_size, seq_len)`, `True` at the visual tokens of this input.
            deepstack_embeds: decoder layer index -> `(num_visual_tokens, hidden_size)` stack, rows in visual-token
                order; added at `visual_pos_masks` just before that layer runs. `None` (decode steps) adds nothing.

        Returns:
            `BaseModelOutputWithPast` with `last_hidden_state` `(batch_size, seq_len, hidden_size)`.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        layer_masks = self._layer_masks(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        deepstack_embeds = deepstack_embeds or {}
        check_stack_rows(visual_pos_masks, deepstack_embeds)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)

        for layer_idx, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            if layer_idx in deepstack_embeds:
                hidden_states = add_visual_stack(hidden_states, visual_pos_masks, deepstack_embeds[layer_idx])
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=layer_masks[layer_idx],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)

    def _layer_masks(self, **mask_kwargs) -> list:
        """One attention mask per decoder layer, built once per attention type.

        An `attention_mask` that is already a dict `{layer type: mask}` (what `GenerationMixin` prepares for
        static-cache and compiled generation, and what the stock `Qwen2Model` accepts) is used as given.
        """
        sliding_default = "sliding_attention" if getattr(self.config, "sliding_window", None) else "full_attention"
        layer_types = getattr(self.config, "layer_types", None) or [sliding_default] * self.config.num_hidden_layers
        masks = mask_kwargs["attention_mask"]
        if not isinstance(masks, dict):
            builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
            masks = {layer_type: builders[layer_type](**mask_kwargs) for layer_type in set(layer_types)}
        missing = set(layer_types) - set(masks)
        if missing:
            raise ValueError(f"The attention mask dict has no mask for the layer type(s) {sorted(missing)}.")
        return [masks[layer_type] for layer_type in layer_types]


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
    "add_visual_stack",
    "check_stack_rows",
    "text_model_class",
]
