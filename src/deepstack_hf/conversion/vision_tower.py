"""The CLIP vision tower named by `mm_vision_tower`: its vision config, image-processor settings and weights.

The directory (or Hub repo) holds a CLIP `config.json` (`CLIPModel` or `CLIPVisionModel`),
`preprocessor_config.json` and safetensors weights whose vision part is named `vision_model.*`.

The converter reads no path the user did not give: a tower named by a checkpoint that came from the Hub is looked
up on the Hub only (`hub_only`), and a local path there is refused, naming the field (`--vision-tower` gives it).
The tower's geometry (image size, patch size) must match its preprocessing (`check_tower_geometry`), checked
before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .config_bounds import check_tower_config
from .errors import ConversionError, short_repr
from .source_checkpoint import (
    SourceFolder,
    check_source_links,
    index_weight_files,
    is_hub_source,
    looks_like_hub_id,
    resolve_directory,
)
from .streaming_safetensors import TensorRecord

TOWER_CONFIG_PATTERNS = ["config.json", "preprocessor_config.json"]
TOWER_WEIGHT_PATTERNS = ["*.safetensors", "model.safetensors.index.json"]
MAX_IMAGE_SIDE = 8192

_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)


@dataclass
class VisionTower:
    name: str
    directory: Path
    vision_config: dict
    preprocessor: dict
    from_hub: bool = False

    @property
    def card_name(self) -> str:
        """How the model card names the tower: its Hub id, or only the folder name of a local tower."""
        return f"`{self.name}`" if self.from_hub else f"the local CLIP folder `{Path(self.name).name}`"

    def weights(self) -> dict[str, TensorRecord]:
        """The tower's `vision_model.*` tensors (downloading the weights first when the tower is a Hub id)."""
        directory = self.directory
        if self.from_hub and not any(directory.glob("*.safetensors")):
            directory = resolve_directory(self.name, TOWER_CONFIG_PATTERNS + TOWER_WEIGHT_PATTERNS, "Vision tower",
                                          hub_only=True)
        tensors, _ = index_weight_files(directory, "Vision tower")
        vision = {name: record for name, record in tensors.items() if name.startswith("vision_model.")}
        if not vision:
            raise ConversionError(f"Vision tower {directory} has no 'vision_model.*' weights.")
        return vision


def clip_vision_config(config: dict, where: Path) -> dict:
    """CLIP vision config from a `CLIPModel` (nested `vision_config`) or `CLIPVisionModel` config.json."""
    from transformers import CLIPVisionConfig

    model_type = config.get("model_type")
    if model_type == "clip":
        parts = [config.get("vision_config") or {}, config.get("vision_config_dict") or {}]  # the latter: old saves
        if not all(isinstance(part, dict) for part in parts):
            raise ConversionError(f"Vision tower {where}: vision_config must be an object.")
        source = {**parts[0], **parts[1]}
    elif model_type == "clip_vision_model":
        source = config
    else:
        raise ConversionError(f"Vision tower {where} is not a CLIP model (config.json model_type {model_type!r:.60}).")
    check_tower_config(source, f"Vision tower {where}/config.json")
    defaults = CLIPVisionConfig(**{k: source[k] for k in _VISION_FIELDS if k in source})
    result = {"model_type": "clip_vision_model"}
    for key in _VISION_FIELDS:
        result[key] = getattr(defaults, key)
    return result


def load_vision_tower(name: str, named_by: str | None = None) -> VisionTower:
    """The tower `name`: a directory or a Hub repo id the user gave, or, with `named_by` (the config field of a
    checkpoint that came from the Hub, e.g. `mm_vision_tower`), a Hub repo id only."""
    if named_by is not None and not looks_like_hub_id(name):
        raise ConversionError(
            f"The Hub checkpoint's config.json names {named_by}={name!r:.80}, which is not a Hub repo id; the converter "
            "never reads a local path that a downloaded file names. Pass --vision-tower with the CLIP tower (a Hub "
            "id or a directory)."
        )
    from_hub = named_by is not None or is_hub_source(name)
    directory = resolve_directory(name, TOWER_CONFIG_PATTERNS, "Vision tower", hub_only=named_by is not None)
    check_source_links(directory, "Vision tower")
    folder = SourceFolder.of(directory)
    config = folder.read_json("config.json", "Vision tower")
    preprocessor = folder.read_json("preprocessor_config.json", "Vision tower")
    tower = VisionTower(name, directory, clip_vision_config(config, directory), preprocessor, from_hub)
    check_tower_geometry(tower)  # refuse a bad preprocessor or geometry now, before anything is written
    return tower


def check_tower_geometry(tower: VisionTower) -> None:
    """The views the processor cuts (`crop_size`) must be the tower's input (`image_size`), and CLIP's shortest-edge
    resize an identity on them (`size` = `crop_size`), else the first image forward fails or differs from the
    original; `ConversionError` naming both fields otherwise."""
    settings = image_processor_settings(tower.preprocessor, tower.directory)
    image_size, patch_size = tower.vision_config["image_size"], tower.vision_config["patch_size"]
    where = f"Vision tower {tower.directory}"
    if settings["crop_size"] != image_size:
        raise ConversionError(
            f"{where}: preprocessor_config.json crop_size={settings['crop_size']} does not match config.json "
            f"image_size={image_size} (patch_size={patch_size}): the views would not fit the tower's position "
            "embeddings."
        )
    if settings["shortest_edge"] != settings["crop_size"]:
        raise ConversionError(
            f"{where}: preprocessor_config.json size={settings['shortest_edge']} differs from crop_size="
            f"{settings['crop_size']}: the original resizes every view before cropping it, which this port does not."
        )


def image_processor_settings(preprocessor: dict, where: Path | str = "the vision tower") -> dict:
    """The CLIP image-processor fields (crop size, resize edge, mean/std, resample, rescale) as plain values.

    Raises `ConversionError` naming the field of `preprocessor_config.json` whose type or range is wrong.
    """

    def fail(key, value, allowed):
        raise ConversionError(
            f"{where}/preprocessor_config.json: {key}={short_repr(value)} is not allowed; expected {allowed}."
        )

    def side(key, default, inner):
        value = preprocessor.get(key, default)
        if isinstance(value, dict):
            value = value.get(inner) or value.get("height") or value.get("shortest_edge")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIDE:
            fail(key, preprocessor.get(key), f"an integer (or {{'{inner}': integer}}) in [1, {MAX_IMAGE_SIDE}]")
        return value

    def triple(key, default):
        value = preprocessor.get(key, default)
        if not (isinstance(value, list) and len(value) == 3 and all(_finite(x) for x in value)):
            fail(key, value, "a list of 3 finite numbers")
        return [float(x) for x in value]

    crop = side("crop_size", 224, "height")
    edge = side("size", crop, "shortest_edge")
    resample = preprocessor.get("resample", 3)
    if isinstance(resample, bool) or resample not in range(6):
        fail("resample", resample, "a PIL resampling filter id in [0, 5]")
    rescale = preprocessor.get("rescale_factor", 1 / 255)
    if not _finite(rescale) or not 0 < rescale <= 1:
        fail("rescale_factor", rescale, "a number in (0, 1]")
    std = triple("image_std", [0.26862954, 0.26130258, 0.27577711])
    if not all(value > 0 for value in std):
        fail("image_std", std, "3 positive numbers")
    return {
        "crop_size": crop,
        "shortest_edge": edge,
        "image_mean": triple("image_mean", [0.48145466, 0.4578275, 0.40821073]),
        "image_std": std,
        "resample": int(resample),
        "rescale_factor": float(rescale),
    }


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = [
    "VisionTower",
    "check_tower_geometry",
    "clip_vision_config",
    "image_processor_settings",
    "load_vision_tower",
]
