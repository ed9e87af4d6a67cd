"""Original DeepStack weight names -> Transformers `DeepStackForConditionalGeneration` names.

| original | converted |
| --- | --- |
| `model.embed_tokens.*`, `model.layers.N.*`, `model.norm.*` | `model.language_model.` + the same suffix |
| `lm_head.weight` | `lm_head.weight` |
| `model.mm_projector.weight/bias` (`linear`) | `model.multi_modal_projector.linear_1.*` |
| `model.mm_projector.{2i}.*` (`mlpNx_gelu`) | `model.multi_modal_projector.linear_{i+1}.*` |
| `model.image_newline` (HD only) | `model.image_newline` |
| `model.vision_tower.vision_tower.vision_model.*` (checkpoint copy) | `model.vision_tower.*` |
| `vision_model.*` of `mm_vision_tower` (tower weights) | `model.vision_tower.*` |
| `model.vision_tower.post_encoder.{j}.*` (DeepStack-V extra layers) | the same name |

(`model.vision_tower.vision_model.*` instead, for a Transformers whose `CLIPVisionModel` still has the
`vision_model` level; see `adapt_vision_names`.)

Rotary `inv_freq` and CLIP `position_ids` buffers are dropped; `model.image_newline` of a non-HD model (present
when it was trained with `mm_patch_merge_type` containing `unpad`) is unused by the original and dropped.
"""

from __future__ import annotations

import re

from .errors import ConversionError
from .streaming_safetensors import FLOAT_DTYPES, PlannedTensor, TensorRecord

CHECKPOINT_VISION_PREFIX = "model.vision_tower.vision_tower."
POST_ENCODER_PREFIX = "model.vision_tower.post_encoder."
TOWER_VISION_PREFIX = "vision_model."
HF_VISION_PREFIX = "model.vision_tower."
EMBEDDING_NAMES = ("model.language_model.embed_tokens.weight", "lm_head.weight")

_DROPPED_SUFFIXES = (".rotary_emb.inv_freq", "embeddings.position_ids")


def _layer_sort_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def map_checkpoint_name(name: str, projector_type: str, hd_layout: bool, use_checkpoint_vision: bool) -> str | None:
    """Converted name of one original tensor, `None` when it is intentionally dropped.

    Raises `ConversionError` for a name the original architecture does not have.
    """
    if name.endswith(_DROPPED_SUFFIXES):
        return None
    if name == "lm_head.weight":
        return name
    if name.startswith(("model.embed_tokens.", "model.layers.", "model.norm.")):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("model.mm_projector."):
        suffix = name[len("model.mm_projector.") :]
        if projector_type == "linear" and suffix in ("weight", "bias"):
            return f"model.multi_modal_projector.linear_1.{suffix}"
        match = re.fullmatch(r"(\d+)\.(weight|bias)", suffix)
        if projector_type != "linear" and match and int(match.group(1)) % 2 == 0:
            return f"model.multi_modal_projector.linear_{int(match.group(1)) // 2 + 1}.{match.group(2)}"
        raise ConversionError(f"Unexpected projector tensor {name!r} for mm_projector_type {projector_type!r}.")
    if name == "model.image_newline":
        return name if hd_layout else None
    if name.startswith(POST_ENCODER_PREFIX):
        # DeepStack-V's extra CLIP layers: the original loads them from the checkpoint whichever CLIP copy is used
        return name
    if name.startswith(CHECKPOINT_VISION_PREFIX + "vision_model."):
        return HF_VISION_PREFIX + name[len(CHECKPOINT_VISION_PREFIX) :] if use_checkpoint_vision else None
    raise ConversionError(f"Unexpected tensor {name!r} in the checkpoint: it is not part of a DeepStack model.")


def plan_tensors(
    checkpoint: dict[str, TensorRecord],
    tower: dict[str, TensorRecord] | None,
    projector_type: str,
    hd_layout: bool,
    target_dtype: str,
    vocab_rows: int,
) -> list[PlannedTensor]:
    """Every output tensor, in a stable order (decoder, lm_head, vision tower, projector, newline).

    `tower` holds the `vision_model.*` tensors of `mm_vision_tower` when the CLIP weights come from there, `None`
    when they come from the checkpoint's copy. The input embedding and `lm_head` grow to `vocab_rows` rows (new
    rows = mean of the existing ones). Floating-point tensors are cast to `target_dtype` (a safetensors dtype name).
    """
    planned: dict[str, PlannedTensor] = {}

    def add(out_name: str, record: TensorRecord):
        if out_name in planned:
            raise ConversionError(f"Two tensors map to {out_name!r} (second: {record.name!r}).")
        dtype = target_dtype if record.dtype in FLOAT_DTYPES else record.dtype
        extra = 0
        if out_name in EMBEDDING_NAMES:
            extra = vocab_rows - record.shape[0]
            if extra < 0:
                raise ConversionError(
                    f"{record.name} has {record.shape[0]} rows, more than the converted vocabulary ({vocab_rows})."
                )
        planned[out_name] = PlannedTensor(out_name, dtype, record, extra)

    for name, record in checkpoint.items():
        out_name = map_checkpoint_name(name, projector_type, hd_layout, use_checkpoint_vision=tower is None)
        if out_name is not None:
            add(out_name, record)
    if tower is not None:
        for name, record in tower.items():
            if not name.endswith(_DROPPED_SUFFIXES):
                add(HF_VISION_PREFIX + name, record)

    def group(name: str) -> int:
        for rank, prefix in enumerate(
            ("model.language_model.", "lm_head.", HF_VISION_PREFIX, "model.multi_modal_projector.", "model.image_newline")
        ):
            if name.startswith(prefix):
                return rank
        return 99

    return sorted(planned.values(), key=lambda t: (group(t.name), _layer_sort_key(t.name)))


def adapt_vision_names(planned: list[PlannedTensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Drop the `vision_model.` level from the vision names when the model's CLIP has none (Transformers >= 5).

    Transformers 5 flattened `CLIPVisionModel` (its weights are `embeddings.*`, `encoder.*`... without the old
    `vision_model.` level); the converted names follow whatever the installed model class expects.
    """
    old = HF_VISION_PREFIX + "vision_model."
    if any(name.startswith(old) for name in expected):
        return
    for tensor in planned:
        if tensor.name.startswith(old):
            tensor.name = HF_VISION_PREFIX + tensor.name[len(old) :]


def check_against_model(planned: list[PlannedTensor], expected: dict[str, tuple[int, ...]], tied: bool) -> None:
    """Compare the plan with the names and shapes of a (meta-device) `DeepStackForConditionalGeneration`."""
    have = {tensor.name: tensor.shape for tensor in planned}
    missing = sorted(set(expected) - set(have) - ({"lm_head.weight"} if tied else set()))
    unexpected = sorted(set(have) - set(expected))
    if missing:
        hint = ""
        if any(name.startswith(HF_VISION_PREFIX) for name in missing):
            hint = " (vision tower weights missing: check --vision-weights and the tower directory)"
        raise ConversionError(
            f"The checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:3]}{hint}."
        )
    if unexpected:
        raise ConversionError(f"The checkpoint has {len(unexpected)} tensor(s) the model lacks, e.g. {unexpected[:3]}.")
    for name, shape in have.items():
        if tuple(expected[name]) != tuple(shape):
            raise ConversionError(
                f"Tensor {name!r} has shape {tuple(shape)} but the converted config expects {tuple(expected[name])}."
            )


__all__ = ["adapt_vision_names", "check_against_model", "map_checkpoint_name", "plan_tensors"]
