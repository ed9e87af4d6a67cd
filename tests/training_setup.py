"""Shared pieces of the training tests (tests/test_training_*.py): tiny processors, tiny repositories built from a
tiny CLIP and a tiny decoder, LLaVA-format data on disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from packaging import version
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from conftest import TINY_IMAGE_SIZE, TINY_PATCH_SIZE
from deepstack_hf import DeepStackImageProcessor, DeepStackProcessor
from deepstack_hf.chat_templates import PHI3_INSTRUCT_TEMPLATE, VICUNA_V1_TEMPLATE
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint
from deepstack_hf.testing_utils.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.conversion.tokenizer_conversion import convert_tokenizer
from deepstack_hf.training.collator import MIN_TRANSFORMERS
from deepstack_hf.training.model_builder import build_deepstack_model

needs_collator = pytest.mark.skipif(
    version.parse(transformers.__version__) < version.parse(MIN_TRANSFORMERS),
    reason=f"DeepStackDataCollator needs transformers >= {MIN_TRANSFORMERS}",
)

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (220, 220, 30)}
SIZES = {"red": (60, 40), "blue": (40, 90), "green": (80, 80), "yellow": (120, 30)}


def tiny_processor(root: Path, family: str = "llama", hd: bool = False, square: bool = False) -> DeepStackProcessor:
    """The processor of a tiny original-format checkpoint (300-piece SentencePiece, Phi-3's added tokens for
    `family="phi3"`), tokenizer converted as the converter does: the tokenizer the original comparison used."""
    synthetic = build_synthetic_checkpoint(root / family, text_model_type=family, dtype=torch.float32)
    tokenizer = convert_tokenizer(synthetic.checkpoint).tokenizer
    image_processor = DeepStackImageProcessor(
        crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, hd_layout=hd, square_grid=square
    )
    template = PHI3_INSTRUCT_TEMPLATE if family == "phi3" else VICUNA_V1_TEMPLATE
    return DeepStackProcessor(image_processor, tokenizer, chat_template=template)


def piece_text(tokenizer, ids) -> str:
    """The text the token pieces spell (`▁` as a space, byte pieces as their character), nothing stripped."""
    text = "".join(tokenizer.convert_ids_to_tokens(list(ids))).replace("\u2581", " ")
    return re.sub(r"<0x([0-9A-F]{2})>", lambda match: chr(int(match.group(1), 16)), text)


def supervised_runs(tokenizer, input_ids, labels) -> list[str]:
    """The text of every run of consecutive supervised positions (labels != -100); checks labels == ids there."""
    runs, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist(), strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(piece_text(tokenizer, current))
            current = []
    return runs + ([piece_text(tokenizer, current)] if current else [])


def write_image(folder: Path, color: str) -> str:
    path = folder / f"{color}.png"
    if not path.exists():
        Image.new("RGB", SIZES[color], COLORS[color]).save(path)
    return path.name


def write_llava_json(folder: Path, samples: list[dict], name: str = "data.json") -> Path:
    """Writes the samples (LLaVA format) and the colour images their `image` fields name (`red.png`, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        images = sample.get("image")
        for image in [images] if isinstance(images, str) else images or []:
            stem = Path(image).stem
            if stem in COLORS:
                write_image(folder, stem)
    path = folder / name
    path.write_text(json.dumps(samples))
    return path


def color_samples(count: int = 8) -> list[dict]:
    """`count` samples: a colour image (or none, every fourth) and its colour name as the answer."""
    samples = []
    for index in range(count):
        color = list(COLORS)[index % len(COLORS)]
        if index % 4 == 3:
            turns = [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": "green"}]
            samples.append({"id": f"text-{index}", "conversations": turns})
            continue
        turns = [{"from": "human", "value": "<image>\nWhat color is the picture?"}, {"from": "gpt", "value": color}]
        samples.append({"id": f"{color}-{index}", "image": f"{color}.png", "conversations": turns})
    return samples


def tiny_parts(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny CLIP vision checkpoint and a tiny Llama checkpoint with a SentencePiece tokenizer.model."""
    torch.manual_seed(seed)
    clip = CLIPVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE, projection_dim=16,
    )
    CLIPVisionModel(clip).save_pretrained(root / "clip")
    llama = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096,
    )
    LlamaForCausalLM(llama).save_pretrained(root / "llm")
    train_tiny_sentencepiece(root / "llm" / "tokenizer.model")
    return root / "clip", root / "llm"


def tiny_repo(root: Path, variant: str = "L", **options) -> Path:
    """A DeepStack repository built from `tiny_parts` by `build_deepstack_model`."""
    clip, llm = (root / "clip", root / "llm") if (root / "llm").is_dir() else tiny_parts(root)
    return build_deepstack_model(clip, llm, root / f"deepstack-{variant}", variant=variant, **options)
