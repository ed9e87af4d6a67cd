"""DeepStack-V's vision tower: a CLIP ViT whose global view receives the high-resolution stacks inside its layers.

docs/design.md, "DeepStack-V": every view of an image (the global view, then its `n*n` crops row-major) gets CLIP's
embeddings and `pre_layrnorm`; the layers before the split layer S run on all views as one batch. Before layer S
the local views' patch states are regrouped into `n*n` stacks ([`stack_layout.vision_tower_stacks`]) and only the
global view goes on; stack k is added to its patch tokens (CLS untouched) at the input of layer S + k. The layer
stack is CLIP's encoder followed by `post_encoder` (extra CLIP encoder layers, used by the original when S >= L).

The layers are Transformers' own `CLIPEncoderLayer`s (gradient checkpointing, sdpa / eager / flash attention
come with them); the weights keep `CLIPVisionModel`'s names, so a CLIP checkpoint loads as is.
"""

from dataclasses import dataclass

import torch
from torch import nn

from transformers import CLIPPreTrainedModel, CLIPVisionConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack

from ._compat import CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPVisionEmbeddings, TransformersKwargs, capture_outputs
from .stack_layout import vision_tower_stacks


@dataclass
class DeepStackVisionModelOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`DeepStackVisionModel`]; `p*p` patches per view, `C` the tower width, `D = L + P` layers.

    last_hidden_state (`torch.Tensor` of shape `(num_images, 1 + p*p, C)`):
        The global views' output of the last layer (no `post_layernorm`).
    pooler_output (`torch.Tensor` of shape `(num_images, C)`):
        `post_layernorm` of that output's CLS token, as `CLIPVisionModel`.
    hidden_states (`tuple[torch.Tensor]`, `D + 1` entries, *optional*):
        `hidden_states[i]` is the global views' input of layer i after its stack was added, `hidden_states[D]`
        is `last_hidden_state`; each `(num_images, 1 + p*p, C)`. With `output_hidden_states` given as indices, the
        other entries are `None`.
    attentions (`tuple[torch.Tensor]`, *optional*):
        Per layer; layers before the split attend within every view (`num_images * (1 + n*n)` rows), later layers
        within the global views only.
    vision_stacks (`torch.Tensor` of shape `(num_images, n*n, p*p, C)`, *optional*):
        The stacks drawn at the split; `None` when the split layer is at or past the last layer.
    """

    vision_stacks: torch.Tensor | None = None


def _kept_hidden_states(output_hidden_states: bool | int | list[int] | None, num_states: int) -> set[int]:
    """Indices into the `num_states` hidden states that `output_hidden_states` asks for (a flag, an index or indices)."""
    if output_hidden_states is None or output_hidden_states is False:
        return set()
    if output_hidden_states is True:
        return set(range(num_states))
    indices = [output_hidden_states] if isinstance(output_hidden_states, int) else output_hidden_states
    for index in indices:
        if not -num_states <= index < num_states:
            raise ValueError(f"Hidden state {index} does not exist: the DeepStack-V tower has {num_states}.")
    return {index % num_states for index in indices}


class DeepStackVisionModel(CLIPPreTrainedModel):
    """CLIP vision tower with DeepStack-V's split and per-layer stacks; `CLIPVisionModel`'s weights plus `post_encoder`.

    Args:
        config: the CLIP vision config.
        split_layer: S, the layer index (CLIP layers, then the extra ones) before which the local views split off.
        num_stacks: `n*n`, the number of local views of every image (a square number).
        num_post_layers: P, extra `CLIPEncoderLayer`s run after the CLIP encoder (`post_encoder`).
    """

    config: CLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _input_embed_layer = "patch_embedding"
    _can_record_outputs = {"attentions": CLIPAttention}

    def __init__(self, config: CLIPVisionConfig, split_layer: int, num_stacks: int, num_post_layers: int = 0):
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_encoder = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(num_post_layers)])
        self.split_layer = split_layer
        self.num_stacks = num_stacks
        self.post_init()

    @property
    def layers(self) -> list[CLIPEncoderLayer]:
        """The layer stack the split and stack indices count: CLIP's encoder layers, then `post_encoder`."""
        return [*self.encoder.layers, *self.post_encoder]

    def split_views(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(num_images * (1 + K), 1 + p*p, C)` -> the global views `(num_images, 1 + p*p, C)` and the stacks
        `(num_images, K, p*p, C)` drawn from the local views."""
        per_image = hidden_states.unflatten(0, (-1, 1 + self.num_stacks))
        return per_image[:, 0], vision_tower_stacks(per_image[:, 1:, 1:])

    @staticmethod
    def add_stack(hidden_states: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        """Adds `stack` `(num_images, p*p, C)` to the patch tokens of `hidden_states` `(num_images, 1 + p*p, C)`."""
        stack = stack.to(hidden_states.device, hidden_states.dtype)
        return torch.cat([hidden_states[:, :1], hidden_states[:, 1:] + stack], dim=1)

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | int | list[int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DeepStackVisionModelOutput:
        r"""
        Args:
            pixel_values: `(num_images * (1 + K), 3, S, S)`: every image's global view, then its K crops row-major.
            output_hidden_states: `True` for every hidden state, or the index (indices) of the ones to keep.

        Returns:
            [`DeepStackVisionModelOutput`].
        """
        views_per_image = 1 + self.num_stacks
        if pixel_values.shape[0] % views_per_image:
            raise ValueError(
                f"DeepStack-V needs {views_per_image} views per image (the global view and {self.num_stacks} crops), "
                f"got {pixel_values.shape[0]} views in all."
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        layers = self.layers
        kept = _kept_hidden_states(output_hidden_states, len(layers) + 1)
        split = self.split_layer
        global_only = split >= len(layers)  # no split: the local views never reach the global view
        if global_only:
            pixel_values = pixel_values[::views_per_image]
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))

        all_hidden_states, stacks = [], None
        for index, layer in enumerate(layers):
            if index == split:
                hidden_states, stacks = self.split_views(hidden_states)
                global_only = True
            if stacks is not None and index - split < self.num_stacks:
                hidden_states = self.add_stack(hidden_states, stacks[:, index - split])
            if kept:
                global_states = hidden_states if global_only else hidden_states[::views_per_image]
                all_hidden_states.append(global_states if index in kept else None)
            hidden_states = layer(hidden_states, None, **kwargs)
        if kept:
            all_hidden_states.append(hidden_states if len(layers) in kept else None)

        return DeepStackVisionModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=self.post_layernorm(hidden_states[:, 0]),
            hidden_states=tuple(all_hidden_states) if kept else None,
            vision_stacks=stacks,
        )


__all__ = ["DeepStackVisionModel", "DeepStackVisionModelOutput"]
