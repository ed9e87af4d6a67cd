"""Original DeepStack `config.json` -> `DeepStackConfig`, with the original code's defaults and refusals.

`read_original_settings` validates every field that changes the original model's computation and refuses, by
name, each one this port does not implement. `build_deepstack_config` then assembles the Transformers config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..configuration_deepstack import DeepStackConfig
from ..grid_layout import num_stacks
from .errors import ConversionError

# model_type in the original config.json -> (Transformers text model_type, prompt template name)
SUPPORTED_MODEL_TYPES = {"deepstack_llama": ("llama", "vicuna_v1"), "deepstack_phi": ("phi3", "phi3_instruct")}

# Defaults the original code uses when a field is missing (llava/train/train.py, clip_encoder.py, deepstack_arch.py).
ORIGINAL_DEFAULTS = {
    "deepstack_start_id": 1,
    "deepstack_interval": 1,
    "num_crops": 4,
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_projector_type": "linear",
    "deepstack_sampling": "2d",
    "is_anyres_deepstack": False,
    "unfreeze_mm_vision_tower": False,
    "deepstack_args_for_ablation": "",
    "twoviews_unshare": False,
    "mm_use_im_start_end": False,
    "s2": False,
}

# `deepstack_args_for_ablation` items that are real options, mapped by `read_original_settings`.
SQUARE_GRID_OPTION = "2xsample"
VISION_STACKS_OPTION = "deepstack_vit"  # DeepStack-V
SPLIT_LAYER_PREFIX = "lsvit_start_layer_"  # DeepStack-V's split layer S, e.g. `lsvit_start_layer_12`
ORIGINAL_POST_LAYERS = 5  # extra CLIP layers the original appends when S >= L

# Research options of the original code that this port does not implement (`deepstack_args_for_ablation` items).
KNOWN_ABLATIONS = (
    "hires_local",
    "dummy_local",
    "only_global_features",
    "global_and_local",
    "string_woglobal",
    "string_withglobal",
    "scaledown_clip",
    "inconsistent",
    "anyres_unpad",
)

PLAIN_SAMPLINGS = ("2d", "1d", "grid")

# Fields copied from the original (flat) config into the text config, when present.
_SHARED_TEXT_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
)
_LLAMA_FIELDS = _SHARED_TEXT_FIELDS + ("attention_bias", "mlp_bias", "head_dim")
_PHI3_FIELDS = _SHARED_TEXT_FIELDS + ("original_max_position_embeddings", "resid_pdrop", "embd_pdrop", "attention_dropout")


@dataclass(frozen=True)
class OriginalSettings:
    """The validated, defaulted fields of an original DeepStack config.json."""

    model_type: str
    text_model_type: str
    template: str
    vision_tower: str
    unfreeze_vision_tower: bool
    select_layer: int
    projector_type: str
    projector_depth: int
    num_crops: int
    hd_layout: bool
    square_grid: bool
    vision_split_layer: int | None
    sampling: str
    deepstack_start: int
    deepstack_interval: int
    num_layers: int
    vocab_size: int
    tie_word_embeddings: bool

    @property
    def vision_stacks(self) -> bool:
        """DeepStack-V (`deepstack_vit`): the stacks go into the vision tower, the decoder gets none."""
        return self.vision_split_layer is not None

    @property
    def num_stacks(self) -> int:
        return 0 if self.vision_stacks else num_stacks(self.num_crops, self.hd_layout)

    @property
    def deepstack_layers(self) -> list[int]:
        return deepstack_layers_from_original(self.deepstack_start, self.deepstack_interval, self.num_stacks)


def deepstack_layers_from_original(start: int, interval: int, count: int) -> list[int]:
    """Layers receiving the stacks in the original code: stack k goes in before layer ``start + k * interval``."""
    return [start + k * interval for k in range(count)]


def projector_depth(projector_type: str) -> int:
    """`linear` -> 1, `mlpNx_gelu` -> N; anything else (identity, resblocks, ...) is refused by name."""
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise ConversionError(
        f"Unsupported mm_projector_type {projector_type!r}: only 'linear' and 'mlpNx_gelu' projectors can be converted."
    )


def _get(config: dict, key: str):
    value = config.get(key)
    return ORIGINAL_DEFAULTS[key] if value is None else value


def ablation_items(config: dict) -> list[str]:
    raw = config.get("deepstack_args_for_ablation") or ""
    return [item for item in str(raw).split("+") if item.strip()]


def read_original_settings(config: dict, vision_tower_override: str | None = None) -> OriginalSettings:
    """Validate an original config.json (as a dict) and fill in the original code's defaults.

    Raises `ConversionError` naming the field for unknown model types and every option the port does not
    implement; nothing has been written when it does.
    """
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"Unsupported model_type {model_type!r}: expected one of {sorted(SUPPORTED_MODEL_TYPES)} "
            "(an original DeepStack checkpoint)."
        )
    text_model_type, template = SUPPORTED_MODEL_TYPES[model_type]

    ablations = [item for item in ablation_items(config) if not _is_implemented_option(item)]
    if ablations:
        known = [item for item in ablations if item in KNOWN_ABLATIONS or item.startswith("lsvit_start_layer")]
        unknown = [item for item in ablations if item not in known]
        detail = ", ".join(repr(item) for item in known + unknown)
        raise ConversionError(
            f"deepstack_args_for_ablation={config.get('deepstack_args_for_ablation')!r}: ablation option(s) {detail} "
            "are not implemented by this port; only the released DeepStack models (no ablation) can be converted."
        )
    if config.get("twoviews_unshare"):
        raise ConversionError(
            f"twoviews_unshare={config.get('twoviews_unshare')!r} (separate vision towers for global and local views) "
            "is not implemented by this port."
        )
    select_feature = _get(config, "mm_vision_select_feature")
    if select_feature != "patch":
        raise ConversionError(
            f"mm_vision_select_feature={select_feature!r} is not supported: stacks are regrouped on the square patch "
            "map, which needs the CLS token dropped ('patch')."
        )
    aspect = config.get("image_aspect_ratio")
    if aspect != "deepstack":
        raise ConversionError(
            f"image_aspect_ratio={aspect!r} is not supported: DeepStack checkpoints use 'deepstack' (other values run "
            "the original code's plain LLaVA path, which this port does not implement)."
        )
    if _get(config, "mm_use_im_start_end"):
        raise ConversionError("mm_use_im_start_end=True (image start/end tokens) is not implemented by this port.")
    if _get(config, "s2"):
        raise ConversionError("s2=True (S2 multi-scale vision tower) is not implemented by this port.")

    hd_layout = bool(_get(config, "is_anyres_deepstack"))
    sampling = str(_get(config, "deepstack_sampling"))
    if hd_layout:
        # The original HD path never reads deepstack_sampling: its stacks are always the 2x2-strided sub-grids.
        sampling = "2d"
    elif sampling not in PLAIN_SAMPLINGS:
        raise ConversionError(
            f"deepstack_sampling={sampling!r} is not implemented by this port (supported: {', '.join(PLAIN_SAMPLINGS)})."
        )

    vision_tower = vision_tower_override or config.get("mm_vision_tower") or config.get("vision_tower")
    if not vision_tower:
        raise ConversionError(
            "config.json has no mm_vision_tower; pass --vision-tower with the CLIP model (Hub id or directory)."
        )

    projector_type = str(_get(config, "mm_projector_type"))
    depth = projector_depth(projector_type)

    num_crops = int(_get(config, "num_crops"))
    if num_crops < 2:
        raise ConversionError(f"num_crops={num_crops} is not supported: DeepStack needs at least 2 crops.")
    vision_split_layer = read_vision_split_layer(config, hd_layout, num_crops)
    square_grid = SQUARE_GRID_OPTION in ablation_items(config) or vision_split_layer is not None
    if square_grid and math.isqrt(num_crops) ** 2 != num_crops:
        raise ConversionError(
            f"deepstack_args_for_ablation item {SQUARE_GRID_OPTION!r} with num_crops={num_crops}: the square grid "
            "needs a square num_crops (the original would silently use fewer crops)."
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in config:
            raise ConversionError(f"config.json lacks the language-model field {key!r}.")

    settings = OriginalSettings(
        model_type=model_type,
        text_model_type=text_model_type,
        template=template,
        vision_tower=str(vision_tower),
        unfreeze_vision_tower=bool(_get(config, "unfreeze_mm_vision_tower")),
        select_layer=int(_get(config, "mm_vision_select_layer")),
        projector_type=projector_type,
        projector_depth=depth,
        num_crops=num_crops,
        hd_layout=hd_layout,
        square_grid=square_grid,
        vision_split_layer=vision_split_layer,
        sampling=sampling,
        deepstack_start=int(_get(config, "deepstack_start_id")),
        deepstack_interval=int(_get(config, "deepstack_interval")),
        num_layers=int(config["num_hidden_layers"]),
        vocab_size=int(config["vocab_size"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    layers = settings.deepstack_layers
    if settings.vision_stacks:  # deepstack_start_id / _interval are unused by DeepStack-V
        return settings
    if settings.deepstack_interval < 1 or settings.deepstack_start < 0 or layers[-1] >= settings.num_layers:
        raise ConversionError(
            f"deepstack_start_id={settings.deepstack_start}, deepstack_interval={settings.deepstack_interval} put the "
            f"{settings.num_stacks} stacks before layers {layers}, outside the {settings.num_layers}-layer decoder "
            "(the original silently drops such stacks; this port does not)."
        )
    return settings


def _is_implemented_option(item: str) -> bool:
    return item in (SQUARE_GRID_OPTION, VISION_STACKS_OPTION) or item.startswith(SPLIT_LAYER_PREFIX)


def read_vision_split_layer(config: dict, hd_layout: bool, num_crops: int) -> int | None:
    """DeepStack-V's split layer S from `deepstack_vit` + `lsvit_start_layer_S`; `None` for DeepStack-L.

    Refuses, by name, what the original cannot run: a bare `deepstack_vit` (its loader compares `None >= L` and
    crashes), several or malformed `lsvit_start_layer_*` items, a split layer without `deepstack_vit`, the HD
    layout and a non-square `num_crops`.
    """
    items = ablation_items(config)
    splits = [item for item in items if item.startswith(SPLIT_LAYER_PREFIX)]
    if VISION_STACKS_OPTION not in items:
        if splits:
            raise ConversionError(
                f"deepstack_args_for_ablation item {splits[0]!r} without {VISION_STACKS_OPTION!r}: the split layer "
                "only exists for DeepStack-V."
            )
        return None
    if not splits:
        raise ConversionError(
            f"deepstack_args_for_ablation={config.get('deepstack_args_for_ablation')!r}: a bare {VISION_STACKS_OPTION!r} "
            f"(no '{SPLIT_LAYER_PREFIX}S') cannot be loaded by the original code (it compares None with the number of "
            "vision layers and crashes), so no checkpoint of it exists."
        )
    if len(splits) > 1:
        raise ConversionError(f"Several DeepStack-V split layers {splits}: the original accepts at most one.")
    value = splits[0][len(SPLIT_LAYER_PREFIX) :]
    if not value.isdigit():
        raise ConversionError(f"deepstack_args_for_ablation item {splits[0]!r}: the split layer must be an integer >= 0.")
    if hd_layout:
        raise ConversionError(
            f"{VISION_STACKS_OPTION!r} with is_anyres_deepstack=True: DeepStack-V with the HD layout crashes in the "
            "original code and is not defined."
        )
    if math.isqrt(num_crops) ** 2 != num_crops:
        raise ConversionError(
            f"{VISION_STACKS_OPTION!r} with num_crops={num_crops}: DeepStack-V tiles its crops into a square mosaic "
            "and needs a square num_crops."
        )
    return int(value)


def vision_stack_config_fields(settings: OriginalSettings, vision_config: dict) -> dict:
    """`DeepStackConfig` fields of DeepStack-V (empty for DeepStack-L): variant, split layer, extra layers.

    With S >= L the original appends 5 CLIP layers whose weights it loads from the checkpoint only when
    `unfreeze_mm_vision_tower` is true (otherwise they are random): such a checkpoint is refused.
    """
    if not settings.vision_stacks:
        return {}
    tower_layers = int(vision_config["num_hidden_layers"])
    post_layers = ORIGINAL_POST_LAYERS if settings.vision_split_layer >= tower_layers else 0
    if post_layers and not settings.unfreeze_vision_tower:
        raise ConversionError(
            f"{SPLIT_LAYER_PREFIX}{settings.vision_split_layer} >= the tower's {tower_layers} layers adds "
            f"{ORIGINAL_POST_LAYERS} extra vision layers (post_encoder), but unfreeze_mm_vision_tower is false: the "
            "original re-initialises them randomly instead of loading them, so the checkpoint does not determine "
            "the model."
        )
    fields = {
        "deepstack_variant": "V",
        "vision_split_layer": settings.vision_split_layer,
        "vision_post_layers": post_layers,
    }
    if post_layers:
        fields["vision_feature_layer"] = -1  # the original forces the last layer when it has extra layers
    return fields


def _rope_scaling(config: dict, text_model_type: str):
    """The decoder's `rope_scaling`: Phi-3's `su` / `longrope`, or a RoPE type Transformers implements (Llama)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = config.get("rope_scaling")
    if not scaling:
        return None
    scaling = dict(scaling)
    kind = scaling.get("rope_type", scaling.get("type"))
    if text_model_type == "phi3":
        if kind in ("su", "longrope"):
            scaling.pop("type", None)
            scaling["rope_type"] = "longrope"
            return scaling
        raise ConversionError(f"Phi-3 rope_scaling type {kind!r:.60} is not supported (only 'su'/'longrope').")
    known = ["default", *sorted(ROPE_INIT_FUNCTIONS)]
    if kind not in known:
        raise ConversionError(f"rope_scaling type {kind!r:.60} is not supported; expected one of {', '.join(known)}.")
    return scaling


def text_config_dict(config: dict, settings: OriginalSettings, vocab_size: int, pad_token_id: int | None) -> dict:
    """The decoder's Transformers config as a dict (`model_type` llama or phi3)."""
    fields = _PHI3_FIELDS if settings.text_model_type == "phi3" else _LLAMA_FIELDS
    text = {"model_type": settings.text_model_type}
    for key in fields:
        if config.get(key) is not None:
            text[key] = config[key]
    rope_scaling = _rope_scaling(config, settings.text_model_type)
    if rope_scaling is not None:
        text["rope_scaling"] = rope_scaling
    if settings.text_model_type == "phi3":
        # The original loader runs Phi-3 with eager/SDPA attention, which never applies `sliding_window`
        # (only its flash-attention path does), so the faithful conversion has no sliding window.
        text["sliding_window"] = None
    text["vocab_size"] = vocab_size
    text["pad_token_id"] = pad_token_id
    text["tie_word_embeddings"] = settings.tie_word_embeddings
    return text


def build_deepstack_config(
    config: dict,
    settings: OriginalSettings,
    vision_config: dict,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int | None,
    dtype: str | None = None,
) -> DeepStackConfig:
    """Assemble the `DeepStackConfig` of the converted model."""
    image_size, patch_size = int(vision_config["image_size"]), int(vision_config["patch_size"])
    mm_hidden = config.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != int(vision_config["hidden_size"]):
        raise ConversionError(
            f"mm_hidden_size={mm_hidden} does not match the vision tower's hidden_size={vision_config['hidden_size']}."
        )
    fields = {
        "vision_feature_layer": settings.select_layer,
        "deepstack_layers": settings.deepstack_layers,
        **vision_stack_config_fields(settings, vision_config),
    }
    result = DeepStackConfig(
        vision_config=vision_config,
        text_config=text_config_dict(config, settings, vocab_size, pad_token_id),
        image_token_id=image_token_id,
        projector_depth=settings.projector_depth,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_select_strategy="default",
        num_crops=settings.num_crops,
        hd_layout=settings.hd_layout,
        square_grid=settings.square_grid,
        stack_sampling=settings.sampling,
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=settings.tie_word_embeddings,
        pad_token_id=pad_token_id,
        **fields,
    )
    if dtype is not None:
        result.dtype = dtype
    result.architectures = ["DeepStackForConditionalGeneration"]
    return result


__all__ = [
    "KNOWN_ABLATIONS",
    "ORIGINAL_DEFAULTS",
    "OriginalSettings",
    "SUPPORTED_MODEL_TYPES",
    "build_deepstack_config",
    "deepstack_layers_from_original",
    "projector_depth",
    "read_original_settings",
    "read_vision_split_layer",
    "text_config_dict",
    "vision_stack_config_fields",
]
