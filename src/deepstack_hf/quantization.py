"""DeepStack's default bitsandbytes policy: quantize the language model's Linear layers only.

LLaVA-family users load checkpoints with ``BitsAndBytesConfig(load_in_4bit=True, ...)`` and expect the model's
own defaults to keep the numerically sensitive parts in the compute dtype. For DeepStack those are:

* the CLIP vision tower: it runs on every crop (up to 5 views for DeepStack-L, 25 for the HD layout), and its
  activations feed both the sequence tokens and every stack, so quantization error there is added K+1 times;
* the multimodal projector: two small Linears whose outputs are *added* to the decoder's residual stream;
* ``lm_head``: Transformers' own default skip for causal LMs.

Transformers' bnb quantizers skip ``quantization_config.llm_int8_skip_modules`` (plus ``lm_head``-style default
keys only when that list is ``None``) plus ``model._keep_in_fp32_modules``. Putting the vision tower in
``_keep_in_fp32_modules`` would upcast it to fp32 whenever the user asks for fp16, which is not wanted, so the
policy is expressed as a default ``llm_int8_skip_modules`` instead, filled in by :func:`apply_default_bnb_skip_modules`
by ``DeepStackPreTrainedModel.from_pretrained`` when the user left it ``None``. The filled list is saved in the
quantized checkpoint's ``config.json``, so a pre-quantized save/reload keeps exactly the same modules quantized.

Name matching (``transformers.quantizers.quantizers_utils.should_convert_module``): a pattern skips a module when it
matches *from the start* of the module's full name up to a module boundary, or when the name *ends with* it. The
full names seen by the quantizer are ``model.vision_tower...`` / ``model.multi_modal_projector...`` / ``lm_head``
for ``DeepStackForConditionalGeneration`` and ``vision_tower...`` / ``multi_modal_projector...`` for the bare
``DeepStackModel``, so both spellings are listed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# Module-name prefixes (see the module docstring for the matching rule) that stay in the compute dtype.
DEFAULT_BNB_SKIP_MODULES: tuple[str, ...] = (
    "model.vision_tower",
    "model.multi_modal_projector",
    "vision_tower",
    "multi_modal_projector",
    "lm_head",
)


def _is_bnb_config(quantization_config: Any) -> bool:
    if isinstance(quantization_config, Mapping):
        method = str(quantization_config.get("quant_method", "")).lower()
        return bool(
            quantization_config.get("load_in_4bit")
            or quantization_config.get("load_in_8bit")
            or method.startswith("bitsandbytes")
        )
    try:
        from transformers import BitsAndBytesConfig
    except ImportError:  # pragma: no cover - transformers always ships it
        return False
    return isinstance(quantization_config, BitsAndBytesConfig)


def default_bnb_quantization_config(quantization_config: Any) -> Any:
    """Return ``quantization_config`` with DeepStack's default skip list when the user did not choose one.

    * Not a bitsandbytes config (or ``None``): returned unchanged.
    * ``llm_int8_skip_modules`` already set (even to ``[]``): the user's choice wins, returned unchanged.
    * Otherwise: a *copy* (the caller's object is never mutated) with
      ``llm_int8_skip_modules = list(DEFAULT_BNB_SKIP_MODULES)``.

    Works for ``BitsAndBytesConfig`` objects and for plain dicts (``from_pretrained`` accepts both).
    """
    if quantization_config is None or not _is_bnb_config(quantization_config):
        return quantization_config
    if isinstance(quantization_config, Mapping):
        if quantization_config.get("llm_int8_skip_modules") is not None:
            return quantization_config
        updated = dict(quantization_config)
        updated["llm_int8_skip_modules"] = list(DEFAULT_BNB_SKIP_MODULES)
        return updated
    if getattr(quantization_config, "llm_int8_skip_modules", None) is not None:
        return quantization_config
    updated = copy.deepcopy(quantization_config)
    updated.llm_int8_skip_modules = list(DEFAULT_BNB_SKIP_MODULES)
    return updated


def apply_default_bnb_skip_modules(from_pretrained_kwargs: dict) -> dict:
    """Fill in DeepStack's bitsandbytes skip list in a ``from_pretrained`` kwargs dict, in place; returns it.

    Meant to be called first thing in ``DeepStackPreTrainedModel.from_pretrained``. A pre-quantized checkpoint's
    own ``quantization_config`` (in its ``config.json``) is not touched: its weights were quantized with the
    list it was saved with, which this policy wrote when it was quantized.
    """
    if "quantization_config" in from_pretrained_kwargs:
        from_pretrained_kwargs["quantization_config"] = default_bnb_quantization_config(
            from_pretrained_kwargs["quantization_config"]
        )
    return from_pretrained_kwargs


def quantized_module_names(model) -> dict[str, list[str]]:
    """Group a loaded model's bitsandbytes Linear layers by top-level part, for reports and tests.

    Returns ``{"quantized": [...], "full_precision_linear": [...]}`` with full module names.
    """
    import torch.nn as nn

    try:
        import bitsandbytes as bnb

        bnb_types: tuple[type, ...] = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except ImportError:  # pragma: no cover - only without bitsandbytes
        bnb_types = ()
    quantized, plain = [], []
    for name, module in model.named_modules():
        if bnb_types and isinstance(module, bnb_types):
            quantized.append(name)
        elif type(module) is nn.Linear:
            plain.append(name)
    return {"quantized": quantized, "full_precision_linear": plain}


__all__ = [
    "DEFAULT_BNB_SKIP_MODULES",
    "apply_default_bnb_skip_modules",
    "default_bnb_quantization_config",
    "quantized_module_names",
]
