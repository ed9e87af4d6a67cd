"""Types and ranges of every original `config.json`, CLIP config and preprocessor field the converter reads.

Checked right after the JSON is parsed, before anything is allocated or built, so that a hostile or careless
config (a string where a count belongs, `1e400`, zero heads, `mm_projector_type="mlp99999999999x_gelu"`, a
`mm_vision_select_layer` beyond the tower) is refused in one short line naming the field and its allowed range.
Which *values* the port implements (model types, ablations, samplings...) is `config_mapping`'s business.
"""

from __future__ import annotations

import math
import re

from ..grid_layout import MAX_NUM_CROPS
from ..configuration_deepstack import MAX_PROJECTOR_DEPTH
from .errors import ConversionError, short_repr

_TOKEN_ID = (0, 2**24)

# field -> (kind, low, high); kind "int", "float" (ints accepted), "bool", "str" (high = max length), "ids"
ORIGINAL_FIELDS: dict[str, tuple[str, float, float]] = {
    "hidden_size": ("int", 1, 65536),
    "intermediate_size": ("int", 1, 262144),
    "num_hidden_layers": ("int", 1, 1024),
    "num_attention_heads": ("int", 1, 1024),
    "num_key_value_heads": ("int", 1, 1024),
    "head_dim": ("int", 1, 4096),
    "vocab_size": ("int", 1, 2**24),
    "max_position_embeddings": ("int", 1, 2**24),
    "original_max_position_embeddings": ("int", 1, 2**24),
    "mm_hidden_size": ("int", 1, 65536),
    "num_crops": ("int", 2, MAX_NUM_CROPS),
    "mm_vision_select_layer": ("int", -1025, 1024),
    "deepstack_start_id": ("int", 0, 1024),
    "deepstack_interval": ("int", 1, 1024),
    "rms_norm_eps": ("float", 0, 1),
    "rope_theta": ("float", 1e-3, 1e12),
    "initializer_range": ("float", 0, 10),
    "resid_pdrop": ("float", 0, 1),
    "embd_pdrop": ("float", 0, 1),
    "attention_dropout": ("float", 0, 1),
    "bos_token_id": ("ids", *_TOKEN_ID),
    "eos_token_id": ("ids", *_TOKEN_ID),
    "pad_token_id": ("ids", *_TOKEN_ID),
    "tie_word_embeddings": ("bool", 0, 0),
    "attention_bias": ("bool", 0, 0),
    "mlp_bias": ("bool", 0, 0),
    "unfreeze_mm_vision_tower": ("bool", 0, 0),
    "is_anyres_deepstack": ("bool", 0, 0),
    "mm_use_im_start_end": ("bool", 0, 0),
    "twoviews_unshare": ("bool", 0, 0),
    "s2": ("bool", 0, 0),
    "model_type": ("str", 0, 64),
    "mm_projector_type": ("str", 0, 64),
    "mm_vision_tower": ("str", 1, 1024),
    "vision_tower": ("str", 1, 1024),
    "mm_vision_select_feature": ("str", 0, 64),
    "image_aspect_ratio": ("str", 0, 64),
    "deepstack_sampling": ("str", 0, 64),
    "deepstack_args_for_ablation": ("str", 0, 1024),
    "hidden_act": ("str", 1, 64),
}

TOWER_FIELDS: dict[str, tuple[str, float, float]] = {
    "hidden_size": ("int", 1, 65536),
    "intermediate_size": ("int", 1, 262144),
    "projection_dim": ("int", 1, 65536),
    "num_hidden_layers": ("int", 1, 1024),
    "num_attention_heads": ("int", 1, 1024),
    "num_channels": ("int", 1, 16),
    "image_size": ("int", 1, 8192),
    "patch_size": ("int", 1, 8192),
    "layer_norm_eps": ("float", 0, 1),
    "hidden_act": ("str", 1, 64),
}


def _allowed(kind: str, low: float, high: float) -> str:
    if kind == "bool":
        return "true or false"
    if kind == "str":
        return f"a string of at most {int(high)} characters"
    if kind == "ids":
        return f"an integer or list of integers in [{low}, {high})"
    return f"{'an integer' if kind == 'int' else 'a finite number'} in [{low}, {high}]"


def _fits(value, kind: str, low: float, high: float) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int":
        return is_int and low <= value <= high
    if kind == "float":
        return (is_int or isinstance(value, float)) and math.isfinite(value) and low <= value <= high
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str) and low <= len(value) <= high
    values = value if isinstance(value, list) and len(value) <= 64 else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) and low <= v < high for v in values)


def check_fields(values: dict, fields: dict[str, tuple[str, float, float]], where: str) -> None:
    """`ConversionError` for the first present, non-null field of `fields` outside its kind and range."""
    for key, (kind, low, high) in fields.items():
        value = values.get(key)
        if value is not None and not _fits(value, kind, low, high):
            raise ConversionError(f"{where}: {key}={short_repr(value)} is not allowed; expected {_allowed(kind, low, high)}.")


def check_original_config(config: dict) -> None:
    """Types and ranges of an original config.json, and the head counts' divisibility."""
    check_fields(config, ORIGINAL_FIELDS, "config.json")
    projector = config.get("mm_projector_type")
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector or "")
    if match and not 1 <= int(match.group(1)) <= MAX_PROJECTOR_DEPTH:
        raise ConversionError(
            f"config.json: mm_projector_type={short_repr(projector)} is not allowed; the mlpNx_gelu depth N must be in "
            f"[1, {MAX_PROJECTOR_DEPTH}]."
        )
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads and config.get("hidden_size") and not config.get("head_dim") and config["hidden_size"] % heads:
        raise ConversionError(
            f"config.json: hidden_size={config['hidden_size']} is not a multiple of num_attention_heads={heads}."
        )
    if heads and kv_heads and heads % kv_heads:
        raise ConversionError(
            f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}."
        )
    if config.get("rope_scaling") is not None and not isinstance(config["rope_scaling"], dict):
        raise ConversionError(f"config.json: rope_scaling={short_repr(config['rope_scaling'])} must be an object or null.")


def check_tower_config(vision_config: dict, where: str) -> None:
    """Types and ranges of a CLIP vision config (as read from the tower's config.json)."""
    check_fields(vision_config, TOWER_FIELDS, where)
    size, patch = vision_config.get("image_size"), vision_config.get("patch_size")
    if size and patch and (patch > size or size % patch):
        raise ConversionError(f"{where}: image_size={size} must be a multiple of patch_size={patch}.")


def check_select_layer(select_layer: int, tower_layers: int) -> None:
    """`mm_vision_select_layer` must index the tower's `tower_layers + 1` hidden states."""
    if not -(tower_layers + 1) <= select_layer <= tower_layers:
        raise ConversionError(
            f"config.json: mm_vision_select_layer={select_layer} is not allowed; the {tower_layers}-layer vision tower "
            f"has hidden states [{-(tower_layers + 1)}, {tower_layers}]."
        )


__all__ = [
    "ORIGINAL_FIELDS",
    "TOWER_FIELDS",
    "check_fields",
    "check_original_config",
    "check_select_layer",
    "check_tower_config",
]
