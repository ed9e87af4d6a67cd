"""DeepStack (NeurIPS 2024): a LLaVA-style model whose high-resolution crops are stacked onto the visual tokens.

CLIP encodes every view of an image, the projector maps each view to `p*p` decoder-width tokens, and
[`stack_layout`](./stack_layout.py) splits one image's views into the tokens that go into the prompt sequence
and K stacks of the same length. Stack k is added to the hidden states at the visual positions just before
decoder layer `config.deepstack_layers[k]` ([`modeling_deepstack_text`](./modeling_deepstack_text.py)).
DeepStack-V (`config.deepstack_variant == "V"`) adds its stacks inside the vision tower instead
([`modeling_deepstack_vision`](./modeling_deepstack_vision.py)); its decoder gets none.
"""

import dataclasses
import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from transformers import AutoModel, GenerationMixin, PreTrainedModel, logging
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack

from ._compat import (
    ACT2FN,
    CACHE_NAME,
    CHUNKED_PREFILL_GETS_IMAGES,
    GENERATE_ENCODES_IMAGES,
    GENERATE_REPEATS_IMAGE_GROUPS,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
    TransformersKwargs,
    can_return_tuple,
    init,
    is_torchdynamo_compiling,
    merge_with_config_defaults,
    select_hidden_states,
    slice_logits_to_keep,
    torch_compilable_check,
)
from .configuration_deepstack import DeepStackConfig
from .grid_layout import image_grid, num_views
from .quantization import apply_default_bnb_skip_modules
from .modeling_deepstack_text import text_model_class
from .modeling_deepstack_vision import DeepStackVisionModel
from .stack_layout import hd_layout, plain_layout


logger = logging.get_logger(__name__)


@dataclass
class DeepStackImageFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`DeepStackModel.get_image_features`]; `last_hidden_state`, `hidden_states` and `attentions` are the
    vision tower's over all encoded views.

    pooler_output (`list[torch.Tensor]`):
        Per image, its sequence features `(num_image_tokens, hidden_size)`.
    deepstack_features (`list[list[torch.Tensor]]`, *optional*):
        Per stack k (K of them), per image, `(num_image_tokens, hidden_size)`: the rows added to that image's visual
        tokens before decoder layer `config.deepstack_layers[k]`. `None` for DeepStack-V, whose decoder gets no
        stacks (generation's expansion of pre-encoded features for beams and `num_return_sequences` reads
        `deepstack_features[0][0]` whenever the field is not `None`).
    """

    deepstack_features: list[list[torch.Tensor]] | None = None


@dataclass
class DeepStackModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    The installed release's multimodal `BaseModelOutputWithPast` (its fields, the KV cache under that release's name,
    `image_outputs`: the [`DeepStackImageFeaturesOutput`] of the images, `None` without images) plus:

    image_hidden_states (`torch.Tensor` of shape `(num_visual_tokens, hidden_size)`, *optional*):
        The sequence features of all images of the batch, in visual-token order.
    """

    image_hidden_states: torch.Tensor | None = None


@dataclass
class DeepStackCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    The installed release's multimodal `CausalLMOutputWithPast` (`loss` `()`, `logits` `(batch_size, kept_positions,
    vocab_size)`, the KV cache under that release's name, `hidden_states`, `attentions`, `image_outputs`) plus:

    image_hidden_states (`torch.Tensor` of shape `(num_visual_tokens, hidden_size)`, *optional*):
        The sequence features of all images of the batch, in visual-token order.
    """

    image_hidden_states: torch.Tensor | None = None


class DeepStackMultiModalProjector(nn.Module):
    """`projector_depth` Linear layers `linear_1 ... linear_N` with the activation `act` between them (LLaVA names).

    Maps `(..., vision_hidden_size)` to `(..., text_hidden_size)`.
    """

    def __init__(self, config: DeepStackConfig):
        super().__init__()
        vision_size, text_size = config.vision_config.hidden_size, config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(vision_size, text_size, bias=bias)
        self.act = ACT2FN[config.projector_hidden_act]
        for index in range(2, config.projector_depth + 1):
            self.add_module(f"linear_{index}", nn.Linear(text_size, text_size, bias=bias))
        self.depth = config.projector_depth

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(image_features)
        for index in range(2, self.depth + 1):
            hidden_states = getattr(self, f"linear_{index}")(self.act(hidden_states))
        return hidden_states


class DeepStackPreTrainedModel(PreTrainedModel):
    """Shared loading, initialization (`image_newline` ~ N(0, 1/hidden)) and attention-backend flags."""

    config: DeepStackConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_NAME]

    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # as Llava: decode steps (no images) trace without graph breaks

    @classmethod
    def is_custom_code(cls) -> bool:
        """`False`: the initialization goes through `transformers.initialization` like an in-library model's.

        `PreTrainedModel.initialize_weights` treats a custom-code model's parameter-less modules (CLIP's attention and
        MLP blocks) as already initialized, so a model whose weights are initialized while loading
        (`from_pretrained` with missing weights) would keep the generic `Linear` init in its CLIP tower instead of
        CLIP's own, which `DeepStackForConditionalGeneration(config)` gives.
        """
        return False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with bitsandbytes quantizing only the language model by default.

        See [`deepstack_hf.quantization`]: a `BitsAndBytesConfig` whose `llm_int8_skip_modules` is `None` keeps the
        vision tower, the projector and `lm_head` in the compute dtype.
        """
        apply_default_bnb_skip_modules(kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DeepStackModel) and module.image_newline is not None:
            init.normal_(module.image_newline, mean=0.0, std=1 / math.sqrt(self.config.text_config.hidden_size))


class DeepStackModel(DeepStackPreTrainedModel):
    """CLIP vision tower, projector and a stack-injecting Llama-family decoder, without the language-modeling head."""

    def __init__(self, config: DeepStackConfig):
        super().__init__(config)
        self.vision_tower = self.build_vision_tower(config)
        self.multi_modal_projector = DeepStackMultiModalProjector(config)
        hidden_size = config.text_config.hidden_size
        self.image_newline = nn.Parameter(torch.empty(hidden_size)) if config.hd_layout else None
        self.language_model = text_model_class(config.text_config.model_type)(config.text_config)
        self.post_init()

    @staticmethod
    def build_vision_tower(config: DeepStackConfig) -> PreTrainedModel:
        """CLIP (`CLIPVisionModel`) for DeepStack-L, [`DeepStackVisionModel`] (stacks inside the tower) for DeepStack-V."""
        if config.deepstack_variant == "V":
            return DeepStackVisionModel._from_config(
                config.vision_config,
                split_layer=config.vision_split_layer,
                num_stacks=config.num_vision_stacks,
                num_post_layers=config.vision_post_layers,
            )
        return AutoModel.from_config(config.vision_config)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def real_views(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, list[int], list[tuple[int, int]]]:
        """Drops the view padding.

        Args:
            pixel_values: `(num_images, max_views, 3, S, S)`.
            image_sizes: `(num_images, 2)` original `(height, width)`.

        Returns:
            The real views of all images `(total_views, 3, S, S)`, each image's view count and crop grid `(w, h)`.
        """
        self.check_image_inputs(pixel_values, image_sizes)
        crop_size, num_crops = self.config.vision_config.image_size, self.config.num_crops
        square = self.config.square_grid
        grids = [image_grid(width, height, num_crops, crop_size, square) for height, width in image_sizes.tolist()]
        counts = [num_views(grid, num_crops, self.config.hd_layout) for grid in grids]
        self.check_view_counts(pixel_values, image_sizes, counts)
        views = torch.cat([image[:count] for image, count in zip(pixel_values, counts)])
        return views, counts, grids

    def check_image_inputs(self, pixel_values, image_sizes) -> None:
        """Types, dtypes and shapes of `pixel_values` / `image_sizes`; a `TypeError` or `ValueError` naming the argument.

        `pixel_values` must be a float tensor `(num_images, max_views, C, S, S)` (what `DeepStackImageProcessor`
        returns with `return_tensors="pt"`): raw uint8 pixels would run unnormalized, and a 4-D tensor (one image's
        views without the image dimension) would be read with its channels as views.
        """
        vision = self.config.vision_config
        expected = f"(num_images, max_views, {vision.num_channels}, {vision.image_size}, {vision.image_size})"
        for name, value in (("pixel_values", pixel_values), ("image_sizes", image_sizes)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}; call the "
                    "processor with return_tensors='pt'."
                )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values has dtype {pixel_values.dtype}; the model takes normalized float pixels from "
                "DeepStackImageProcessor, not raw image bytes."
            )
        if pixel_values.ndim != 5 or tuple(pixel_values.shape[2:]) != (vision.num_channels, vision.image_size, vision.image_size):
            hint = " (one image's views need a leading image dimension: pixel_values[None])" if pixel_values.ndim == 4 else ""
            raise ValueError(
                f"pixel_values must be {expected}, got {pixel_values.ndim}-D shape {tuple(pixel_values.shape)}{hint}."
            )
        if image_sizes.ndim != 2 or image_sizes.shape[1] != 2 or image_sizes.is_floating_point() or image_sizes.is_complex():
            raise ValueError(
                f"image_sizes must be an integer tensor (num_images, 2) of (height, width), got dtype "
                f"{image_sizes.dtype} shape {tuple(image_sizes.shape)}."
            )
        if pixel_values.shape[0] != image_sizes.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} images but image_sizes has {image_sizes.shape[0]}."
            )

    def check_view_counts(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, counts: list[int]) -> None:
        """Each image's views must be exactly the `counts[i]` that its size implies under the model's `num_crops`
        and layout, the rest zero padding: anything else means a processor with another `num_crops` / layout /
        `square_grid`, or `image_sizes` that do not belong to these pixels, and would silently encode the wrong views
        (a real view is never all zeros: normalization maps black to `-mean / std`)."""
        for index, (count, size) in enumerate(zip(counts, image_sizes.tolist())):
            real = pixel_values[index, :count].flatten(1).any(1)
            if count > pixel_values.shape[1] or bool(pixel_values[index, count:].any()) or not bool(real.all()):
                sent = int(pixel_values[index].flatten(1).any(1).sum())
                raise ValueError(
                    f"Image {index}: image_sizes {tuple(size)} implies {count} views under the model's "
                    f"num_crops={self.config.num_crops}, hd_layout={self.config.hd_layout}, square_grid="
                    f"{self.config.square_grid}, but pixel_values holds "
                    f"{sent} non-zero views (of {pixel_values.shape[1]}); was it made by a processor with another "
                    "num_crops, or for other image sizes?"
                )

    def check_text_inputs(self, input_ids, inputs_embeds, cache, has_images: bool) -> None:
        """Warnings for image tokens without images (at prefill) and for a prompt past `max_position_embeddings`.

        Image tokens without images are a warning, not an error: generate()'s assisted decoding runs its assistant
        on the prompt without the images, and Transformers' common tests feed text-only ids in which the image
        token id doubles as padding. Skipped while `torch.compile` traces (a static cache's length is a tensor).
        """
        if is_torchdynamo_compiling():
            return
        past = cache.get_seq_length() if cache is not None else 0
        if input_ids is not None and not has_images and past == 0:
            image_tokens = int((input_ids == self.config.image_token_id).sum())
            if image_tokens:
                logger.warning_once(
                    f"input_ids holds {image_tokens} image tokens (id {self.config.image_token_id}) but no "
                    "pixel_values or mm_encoder_outputs were given; they are read as text."
                )
        length = past + (input_ids if input_ids is not None else inputs_embeds).shape[1]
        limit = self.config.text_config.max_position_embeddings
        if limit and length > limit:
            logger.warning_once(
                f"The sequence ({length} tokens, image tokens included) is longer than the decoder's "
                f"max_position_embeddings ({limit}); positions beyond it were never trained."
            )

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DeepStackImageFeaturesOutput:
        r"""
        Encodes every real view, projects it and lays each image out into sequence features and K stacks. For
        DeepStack-V the tower consumes the local views itself and returns the global views only: each image gets its
        global view's features and no decoder stacks (`deepstack_features is None`).

        Args:
            pixel_values: `(num_images, max_views, 3, S, S)`, each image's views in processor order, then zero padding.
            image_sizes: `(num_images, 2)`, each image's original `(height, width)` in pixels.
            vision_feature_layer: CLIP hidden state fed to the projector (defaults to the config's).

        Returns:
            [`DeepStackImageFeaturesOutput`]: `pooler_output[i]` `(T_i, hidden)` and `deepstack_features[k][i]`
            `(T_i, hidden)`, `T_i` being image i's number of image tokens.
        """
        views, counts, grids = self.real_views(pixel_values, image_sizes)
        image_outputs = self.vision_tower(views.to(self.vision_tower.dtype), return_dict=True, **kwargs)
        view_features = self.multi_modal_projector(image_outputs.hidden_states[vision_feature_layer][:, 1:])
        if self.config.deepstack_variant == "V":
            counts = [1] * len(counts)  # one global view per image comes out of the DeepStack-V tower
        layouts = [self.layout_image(*args) for args in zip(view_features.split(counts), grids)]
        sequences, stacks = zip(*layouts)
        return DeepStackImageFeaturesOutput(
            last_hidden_state=image_outputs.last_hidden_state,
            pooler_output=list(sequences),
            hidden_states=image_outputs.hidden_states,
            attentions=image_outputs.attentions,
            deepstack_features=[list(stack) for stack in zip(*(image_stacks.unbind(0) for image_stacks in stacks))]
            or None,
        )

    def layout_image(self, views: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's projected views `(num_views, p*p, D)` -> sequence `(T, D)` and stacks `(K, T, D)`."""
        if self.config.deepstack_variant == "V":
            return views[0], views.new_zeros(0, *views.shape[1:])
        if self.config.hd_layout:
            return hd_layout(views, grid, self.config.num_crops, self.image_newline)
        return plain_layout(views, grid, self.config.num_crops, self.config.stack_sampling)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Bool `(batch_size, seq_len)` mask of the image tokens; `ValueError` unless there is one per feature row."""
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embed).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        n_image_tokens = special_image_mask.sum()
        torch_compilable_check(
            n_image_tokens == image_features.shape[0],
            lambda: f"Image features and image tokens do not match, tokens: {int(n_image_tokens)}, "
            f"features: {image_features.shape[0]}",
        )
        return special_image_mask.to(inputs_embeds.device)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, DeepStackImageFeaturesOutput] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DeepStackModelOutputWithPast:
        r"""
        Args:
            input_ids: `(batch_size, seq_len)`; each image is a run of `num_image_tokens(...)` `image_token_id`s.
            pixel_values: `(num_images, max_views, 3, S, S)`, images in the order of their placeholder runs.
            image_sizes: `(num_images, 2)` original `(height, width)`; required with `pixel_values`.
            attention_mask: `(batch_size, past + seq_len)`.
            position_ids: `(batch_size, seq_len)`.
            inputs_embeds: `(batch_size, seq_len, hidden_size)`, instead of `input_ids`.
            mm_encoder_outputs: `{"image": get_image_features(...)}`, pre-encoded images instead of `pixel_values`.
            kwargs: passed on to the decoder as the installed release's decoder takes them; among them the KV cache,
                under that release's name (`_compat.CACHE_NAME`: `past_key_values` up to 5.23, `cache` from 5.24).

        Returns:
            [`DeepStackModelOutputWithPast`] with `last_hidden_state` `(batch_size, seq_len, hidden_size)`.
        """
        self.config.validate_deepstack_fields()  # fields changed after construction are refused here, not applied
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")
        image_output = (mm_encoder_outputs or {}).get("image")
        has_images = image_output is not None or pixel_values is not None
        self.check_text_inputs(input_ids, inputs_embeds, kwargs.get(CACHE_NAME), has_images)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if image_output is None and pixel_values is not None:
            if image_sizes is None:
                raise ValueError("image_sizes is required with pixel_values: it sets each image's crop grid.")
            image_output = self.get_image_features(pixel_values, image_sizes, return_dict=True)

        image_features = None
        if image_output is not None:
            image_features = torch.cat(image_output.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
            visual_pos_masks = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(visual_pos_masks.unsqueeze(-1), image_features)
            stacks = image_output.deepstack_features or []  # DeepStack-V: none for the decoder
            layers = self.config.deepstack_layers
            deepstack_embeds = {layer: torch.cat(stack) for layer, stack in zip(layers, stacks, strict=True)}
            if deepstack_embeds:  # the decoder's layers get them through the stock forward's keyword arguments
                kwargs.update(visual_pos_masks=visual_pos_masks, deepstack_embeds=deepstack_embeds)

        outputs = self.language_model(
            attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs
        )
        return DeepStackModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_output,
            image_hidden_states=image_features,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )


class DeepStackForConditionalGeneration(DeepStackPreTrainedModel, GenerationMixin):
    """[`DeepStackModel`] with a language-modeling head.

    Images are only seen at prefill: generation drops `pixel_values` (and pre-encoded `mm_encoder_outputs`) after
    the first step, so cached decode steps add no stacks.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: DeepStackConfig):
        super().__init__(config)
        self.model = DeepStackModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> DeepStackImageFeaturesOutput:
        """See [`DeepStackModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes, **kwargs)

    def generate(self, *args, **kwargs):
        """[`GenerationMixin.generate`], leaving the caller's pre-encoded images (`mm_encoder_outputs`) as they were.

        Generation replaces fields of the image outputs it is handed (it repeats them per prompt for beams and
        `num_return_sequences`, and slices them per prefill chunk); it gets shallow copies, so the caller's
        `pooler_output` / `deepstack_features` lists keep their length and order. Image inputs that the installed
        release's `generate` would hand the model wrongly are refused first ([`check_generation_images`]).
        """
        encoded = kwargs.get("mm_encoder_outputs")
        if encoded is not None:
            kwargs["mm_encoder_outputs"] = {
                modality: None if output is None else dataclasses.replace(output) for modality, output in encoded.items()
            }
        self.check_generation_images(kwargs)
        return super().generate(*args, **kwargs)

    def check_generation_images(self, generate_kwargs: dict) -> None:
        """`ValueError` for image inputs that older releases' `generate` would give the model wrongly.

        * Before 5.23 (`CHUNKED_PREFILL_GETS_IMAGES` false) a chunked prefill (`prefill_chunk_size`) runs every chunk
          without the images, so their tokens would be read as text.
        * Before 5.19 (`GENERATE_REPEATS_IMAGE_GROUPS` false) `generate` repeats the images one by one for beams and
          `num_return_sequences` (`[A, B] -> [A, A, B, B]`: 5.17 its `pixel_values`, 5.18 their encoder outputs),
          which is right only while no prompt holds two images; 5.17 (`GENERATE_ENCODES_IMAGES` false) does not
          repeat pre-encoded `mm_encoder_outputs` at all.
        """
        images = [key for key in ("pixel_values", "mm_encoder_outputs") if generate_kwargs.get(key) is not None]
        if not images:
            return
        config = generate_kwargs.get("generation_config") or self.generation_config
        option = lambda name: generate_kwargs[name] if generate_kwargs.get(name) is not None else getattr(config, name)
        if option("prefill_chunk_size") is not None and not CHUNKED_PREFILL_GETS_IMAGES:
            raise ValueError(
                f"This Transformers release runs the chunks of a chunked prefill without the images ({images[0]}): "
                "pass prefill_chunk_size=None, or use Transformers >= 5.23."
            )
        if GENERATE_REPEATS_IMAGE_GROUPS or max(option("num_beams") or 1, option("num_return_sequences") or 1) == 1:
            return
        encoded = generate_kwargs.get("mm_encoder_outputs")
        if encoded is not None and not GENERATE_ENCODES_IMAGES:
            raise ValueError(
                "This Transformers release does not repeat pre-encoded mm_encoder_outputs for num_beams / "
                "num_return_sequences > 1: pass pixel_values and image_sizes instead, or use Transformers >= 5.18."
            )
        input_ids = generate_kwargs.get("input_ids")
        prompts_with_images = 0 if input_ids is None else int((input_ids == self.config.image_token_id).any(-1).sum())
        if encoded is not None:
            num_images = len(encoded["image"].pooler_output)
        else:
            num_images = generate_kwargs["pixel_values"].shape[0]
        if num_images > prompts_with_images:
            raise ValueError(
                "This Transformers release repeats the images one by one for num_beams / num_return_sequences > 1 "
                "([A, B] -> [A, A, B, B]), which gives a prompt with several images the wrong images: use "
                "Transformers >= 5.19 for such prompts."
            )

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """[`GenerationMixin.prepare_inputs_for_generation`]; pre-encoded images, like raw ones, go to the prefill only.

        `mm_encoder_outputs` is dropped from cached decode steps (5.17 would hand it to every step).
        """
        if not kwargs.get("is_first_iteration", False) and kwargs.get("use_cache", True):
            kwargs.pop("mm_encoder_outputs", None)
        return super().prepare_inputs_for_generation(*args, **kwargs)

    # `generate` checks its keyword arguments against this signature: keep the release's own (its cache name included)
    prepare_inputs_for_generation.__signature__ = inspect.signature(GenerationMixin.prepare_inputs_for_generation)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, DeepStackImageFeaturesOutput] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DeepStackCausalLMOutputWithPast:
        r"""
        Args:
            labels: `(batch_size, seq_len)` next-token targets (shifted inside the loss); -100 is ignored. Image-token
                positions of `input_ids` are always ignored; put -100 on padding yourself.
            logits_to_keep: compute logits for the last `logits_to_keep` positions only (0 = all), or the positions
                given as a 1-D tensor.
            Other arguments: see [`DeepStackModel.forward`].

        Returns:
            [`DeepStackCausalLMOutputWithPast`] with `logits` `(batch_size, kept_positions, vocab_size)`.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return DeepStackCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            image_hidden_states=outputs.image_hidden_states,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )


__all__ = ["DeepStackForConditionalGeneration", "DeepStackModel", "DeepStackPreTrainedModel"]
