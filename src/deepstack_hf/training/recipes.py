"""The paper's two training stages: which modules train and the `TrainingArguments` values of each.

| stage | trains | data format | learning rate | batch / GPU (x 8 GPUs) |
| --- | --- | --- | --- | --- |
| `pretrain` | the projector (DeepStack-V: and its newly added extra vision layers) | `plain` | 1e-3 | 32 (256) |
| `finetune` | the projector, the decoder (embeddings and `lm_head` included), DeepStack-L-HD's `image_newline`; DeepStack-V: and the vision layers from the split on | chat template | 2e-5 | 16 (128) |

Both: one epoch, cosine schedule with 3 % warmup, no weight decay, AdamW (`adamw_torch`), 2048 tokens (4096 for
DeepStack-L-HD, LLaVA-NeXT's value: one HD image takes up to 2928), activation
checkpointing, checkpoints every 24000 / 50000 steps keeping one. The original repository publishes no training
script (its README says "coming soon"); its `train.py` fixes only `optim="adamw_torch"` and
`remove_unused_columns=False`. Every other value is LLaVA-1.5's published one (`scripts/v1_5/pretrain.sh`,
`finetune.sh`), which the paper's training follows (docs/training.md labels each).
"""

from __future__ import annotations

import dataclasses

from torch import nn

STAGES = ("pretrain", "finetune")

COMMON_ARGUMENTS = {
    "num_train_epochs": "1",
    "lr_scheduler_type": "cosine",
    "warmup_steps": "0.03",  # a ratio of the training steps (LLaVA-1.5's warmup_ratio 0.03)
    "weight_decay": "0.0",
    "optim": "adamw_torch",
    "logging_steps": "1",
    "save_strategy": "steps",
    "save_total_limit": "1",
    "dataloader_num_workers": "4",
}
STAGE_ARGUMENTS = {
    "pretrain": {"learning_rate": "1e-3", "per_device_train_batch_size": "32", "save_steps": "24000"},
    "finetune": {"learning_rate": "2e-5", "per_device_train_batch_size": "16", "save_steps": "50000"},
}
MODEL_MAX_LENGTH = {"plain": 2048, "hd": 4096}  # LLaVA-1.5's; LLaVA-NeXT's for the HD layout
DATA_FORMATS = {"pretrain": "plain", "finetune": "chat"}


def checkpointing_flag() -> str:
    """`activation_checkpointing` where `TrainingArguments` has it (newer Transformers), else its former name."""
    from transformers import TrainingArguments

    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


# option names that set the same TrainingArguments value: a user's one overrides the recipe's other
ALIASES = {"activation_checkpointing": {"gradient_checkpointing"}, "gradient_checkpointing": {"activation_checkpointing"}}


def recipe_arguments(stage: str, given: set[str]) -> list[str]:
    """The stage's `TrainingArguments` as command-line flags, leaving out every option in `given` (the user's own).

    Args:
        stage: `"pretrain"` or `"finetune"`.
        given: option names the user passed (without `--`).

    Returns:
        `["--learning_rate", "1e-3", ...]` to put before the user's flags.
    """
    values = {**COMMON_ARGUMENTS, **STAGE_ARGUMENTS[stage], checkpointing_flag(): "true"}
    flags = []
    for name, value in values.items():
        if name in given or ALIASES.get(name, set()) & given:
            continue
        flags += [f"--{name}", value]
    return flags


def stage_modules(model, stage: str) -> dict[str, nn.Module | nn.Parameter]:
    """The modules (and bare parameters) that train in `stage`, by name.

    Args:
        model: a `DeepStackForConditionalGeneration`.
        stage: `"pretrain"` or `"finetune"`.
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {STAGES}.")
    inner, config = model.model, model.config
    modules = {"multi_modal_projector": inner.multi_modal_projector}
    if config.deepstack_variant == "V":  # pretrain: only the extra layers, which nothing else initialises
        tower = inner.vision_tower
        first = config.vision_split_layer if stage == "finetune" else len(tower.encoder.layers)
        for index, layer in enumerate(tower.layers):
            if index >= first:
                modules[f"vision_tower.layers.{index}"] = layer
    if stage == "finetune":
        modules["language_model"] = inner.language_model
        modules["lm_head"] = model.lm_head
        if inner.image_newline is not None:
            modules["image_newline"] = inner.image_newline
    return modules


def model_max_length(config) -> int:
    """The recipe's longest sample for a model: 2048 tokens, 4096 with the HD layout (an HD image alone takes up to
    576 + 48 * 49 = 2928 tokens with 4 crops)."""
    return MODEL_MAX_LENGTH["hd" if config.hd_layout else "plain"]


def apply_stage(model, stage: str) -> list[str]:
    """Freezes everything but the stage's modules (`stage_modules`); returns their names."""
    model.requires_grad_(False)
    modules = stage_modules(model, stage)
    for module in modules.values():
        module.requires_grad_(True)
    return list(modules)


__all__ = ["DATA_FORMATS", "STAGES", "apply_stage", "model_max_length", "recipe_arguments", "stage_modules"]
