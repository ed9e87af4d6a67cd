"""Shared factories for tiny random DeepStack configurations (CPU, seconds)."""

import pytest
import torch

from deepstack_hf import DeepStackConfig

TINY_IMAGE_SIZE = 56  # 4x4 patches of 14 pixels per view: 16 visual tokens per view
TINY_PATCH_SIZE = 14


def tiny_text_config(model_type: str = "llama", vocab_size: int = 320, num_hidden_layers: int = 6, **overrides) -> dict:
    """A Llama-family decoder small enough to run a forward pass in milliseconds."""
    config = {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


def tiny_vision_config(**overrides) -> dict:
    config = {
        "model_type": "clip_vision_model",
        "hidden_size": 24,
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": TINY_PATCH_SIZE,
        "projection_dim": 16,
    }
    config.update(overrides)
    return config


def tiny_deepstack_config(
    text_model_type: str = "llama", hd_layout: bool = False, num_crops: int = 4, image_token_id: int = 300, **overrides
) -> DeepStackConfig:
    """DeepStack config over a tiny CLIP and a tiny decoder; extra keyword arguments override config fields."""
    text_overrides = overrides.pop("text_config", {})
    return DeepStackConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(text_model_type, **text_overrides),
        image_token_id=image_token_id,
        num_crops=num_crops,
        hd_layout=hd_layout,
        image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
        **overrides,
    )


def trainer_checkpointing_argument() -> dict:
    """`TrainingArguments` keyword turning gradient checkpointing on: `activation_checkpointing` (5.23 on) or its
    former name."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {field.name for field in fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True}


def enable_activation_checkpointing(model, checkpoint_kwargs: dict | None = None) -> None:
    """Gradient checkpointing on every layer: `activation_checkpointing_enable` (5.23 on) or its former name."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(checkpoint_kwargs)


@pytest.fixture
def tiny_config_factory():
    return tiny_deepstack_config


def single_image_inputs(config, image_height: int, image_width: int, text_before: int = 4, text_after: int = 6, seed: int = 0):
    """Model inputs for one prompt `<s> text <image tokens> text` with random pixels, sized by the rules of
    docs/design.md."""
    from deepstack_hf.grid_layout import num_image_tokens, num_views, select_best_grid

    crop = config.vision_config.image_size
    grid = select_best_grid(image_width, image_height, config.num_crops, crop)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.cat(
        [
            torch.tensor([[1]]),
            torch.randint(3, 290, (1, text_before), generator=generator),
            torch.full((1, num_image_tokens(grid, config.hd_layout, config.patches_per_side)), config.image_token_id),
            torch.randint(3, 290, (1, text_after), generator=generator),
        ],
        dim=1,
    )
    views = num_views(grid, config.num_crops, config.hd_layout)
    pixel_values = torch.randn(1, views, 3, crop, crop, generator=generator)
    return {"input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": torch.tensor([[image_height, image_width]])}
