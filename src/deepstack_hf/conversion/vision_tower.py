"""The CLIP vision tower named by `mm_vision_tower`: its vision config, image-processor settings and weights.

The directory (or Hub repo) holds a CLIP `config.json` (`CLIPModel` or `CLIPVisionModel`),
`preprocessor_config.json` and safetensors weights whose vision part is named `vision_model.*`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError
from .source_checkpoint import index_weight_files, resolve_directory
from .streaming_safetensors import TensorRecord

TOWER_CONFIG_PATTERNS = ["config.json", "preprocessor_config.json"]
TOWER_WEIGHT_PATTERNS = ["*.safetensors", "model.safetensors.index.json"]

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

    def weights(self) -> dict[str, TensorRecord]:
        """The tower's `vision_model.*` tensors (downloading the weights first when the tower is a Hub id)."""
        directory = self.directory
        if not any(directory.glob("*.safetensors")) and not Path(self.name).is_dir():
            directory = resolve_directory(self.name, TOWER_CONFIG_PATTERNS + TOWER_WEIGHT_PATTERNS, "Vision tower")
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
        nested = dict(config.get("vision_config") or {})
        nested.update(config.get("vision_config_dict") or {})  # configs saved by old Transformers versions
        source = nested
    elif model_type == "clip_vision_model":
        source = config
    else:
        raise ConversionError(f"Vision tower {where} is not a CLIP model (config.json model_type {model_type!r}).")
    defaults = CLIPVisionConfig(**{k: source[k] for k in _VISION_FIELDS if k in source})
    result = {"model_type": "clip_vision_model"}
    for key in _VISION_FIELDS:
        result[key] = getattr(defaults, key)
    return result


def load_vision_tower(name: str) -> VisionTower:
    directory = resolve_directory(name, TOWER_CONFIG_PATTERNS, "Vision tower")
    config_path, processor_path = directory / "config.json", directory / "preprocessor_config.json"
    for path in (config_path, processor_path):
        if not path.is_file():
            raise ConversionError(f"Vision tower {directory} has no {path.name}.")
    try:
        config = json.loads(config_path.read_text())
        preprocessor = json.loads(processor_path.read_text())
    except ValueError as error:
        raise ConversionError(f"Vision tower file in {directory} does not parse: {error}") from None
    return VisionTower(name, directory, clip_vision_config(config, directory), preprocessor)


def image_processor_settings(preprocessor: dict) -> dict:
    """The CLIP image-processor fields (crop size, resize edge, mean/std, resample, rescale) as plain values."""

    def side(value, key):
        if isinstance(value, dict):
            return int(value.get(key) or value.get("height") or value.get("shortest_edge"))
        return int(value)

    crop = side(preprocessor.get("crop_size", 224), "height")
    size = preprocessor.get("size", crop)
    return {
        "crop_size": crop,
        "shortest_edge": side(size, "shortest_edge"),
        "image_mean": [float(x) for x in preprocessor.get("image_mean", [0.48145466, 0.4578275, 0.40821073])],
        "image_std": [float(x) for x in preprocessor.get("image_std", [0.26862954, 0.26130258, 0.27577711])],
        "resample": int(preprocessor.get("resample", 3)),
        "rescale_factor": float(preprocessor.get("rescale_factor", 1 / 255)),
    }


__all__ = ["VisionTower", "clip_vision_config", "image_processor_settings", "load_vision_tower"]
