"""Build tiny original-format DeepStack checkpoints with random weights (tests, the offline demo, benchmarks).

`build_synthetic_checkpoint(root, ...)` writes two directories under `root`:

* `clip-tower/`: a tiny CLIP vision tower like `openai/clip-vit-large-patch14-336` (config.json of a
  `CLIPVisionModel`, preprocessor_config.json with crop 56, `model.safetensors` holding `vision_model.*`);
* `checkpoint/`: the DeepStack checkpoint in the original layout (config.json with `model_type`
  `deepstack_llama` or `deepstack_phi` and `mm_vision_tower` pointing at the tower, single-file or sharded
  safetensors, `tokenizer.model` trained on the spot, tokenizer_config.json, special_tokens_map.json and, for
  Phi-3, generation_config.json).

The checkpoint's own copy of CLIP (`model.vision_tower.vision_tower.vision_model.*`) gets *different* random
values from the tower, so a test can tell which copy a converter used. Weights are drawn with fan-in scaling and
non-trivial norms/biases so that every part of the model visibly moves the logits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..conversion.streaming_safetensors import write_tensors

# Phi-3's added tokens after its 32000 SentencePiece pieces, in id order: (content, rstrip).
PHI3_ADDED_TOKENS = (
    ("<|endoftext|>", False),
    ("<|assistant|>", True),
    ("<|placeholder1|>", True),
    ("<|placeholder2|>", True),
    ("<|placeholder3|>", True),
    ("<|placeholder4|>", True),
    ("<|system|>", True),
    ("<|end|>", True),
    ("<|placeholder5|>", True),
    ("<|placeholder6|>", True),
    ("<|user|>", True),
)

TINY_CROP = 56
TINY_PATCH = 14


@dataclass
class SyntheticCheckpoint:
    checkpoint: Path
    vision_tower: Path
    config: dict


def _random_state(shapes: dict[str, tuple[int, ...]], generator: torch.Generator, dtype: torch.dtype) -> dict:
    state = {}
    for name, shape in shapes.items():
        if name.endswith("position_ids") or name.endswith("inv_freq"):
            continue
        if len(shape) == 1 and ("norm" in name or "layernorm" in name) and name.endswith("weight"):
            value = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        elif name.endswith("bias") or name.endswith("class_embedding") or name.endswith("image_newline"):
            value = 0.2 * torch.randn(shape, generator=generator)
        elif "embed" in name:
            value = 0.5 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            value = torch.randn(shape, generator=generator) * (1.5 / math.sqrt(fan_in))
        state[name] = value.to(dtype)
    return state


def _meta_shapes(model_class, config, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of `model_class(config)`, each name given `prefix` unless it already has it."""
    with torch.device("meta"):
        model = model_class(config)
    return {
        (name if name.startswith(prefix) else prefix + name): tuple(t.shape) for name, t in model.state_dict().items()
    }


def _post_encoder_shapes(clip_config, num_layers: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of DeepStack-V's extra CLIP layers in the original layout."""
    from .._compat import CLIPEncoderLayer

    shapes = {}
    for index in range(num_layers):
        with torch.device("meta"):
            layer = CLIPEncoderLayer(clip_config)
        shapes.update({f"model.vision_tower.post_encoder.{index}.{k}": tuple(v.shape) for k, v in layer.state_dict().items()})
    return shapes


def tiny_vision_config() -> dict:
    return {
        "model_type": "clip_vision_model",
        "architectures": ["CLIPVisionModel"],
        "hidden_size": 24,
        "intermediate_size": 48,
        "projection_dim": 16,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_channels": 3,
        "image_size": TINY_CROP,
        "patch_size": TINY_PATCH,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def build_vision_tower(directory: Path, seed: int = 0) -> dict:
    """A tiny CLIP tower directory (config.json, preprocessor_config.json, model.safetensors)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_vision_config()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    preprocessor = {
        "crop_size": {"height": TINY_CROP, "width": TINY_CROP},
        "size": {"shortest_edge": TINY_CROP},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "do_rescale": True,
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "image_processor_type": "CLIPImageProcessor",
        "feature_extractor_type": "CLIPFeatureExtractor",
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    vision_config = CLIPVisionConfig(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")})
    shapes = _meta_shapes(CLIPVisionModel, vision_config, "vision_model.")
    generator = torch.Generator().manual_seed(seed + 1000)
    write_tensors(directory / "model.safetensors", _random_state(shapes, generator, torch.float32))
    return config


def _tokenizer_files(directory: Path, phi: bool, vocab_size: int) -> int:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json; returns the slow tokenizer's length."""
    from .tiny_sentencepiece import train_tiny_sentencepiece

    train_tiny_sentencepiece(directory / "tokenizer.model", vocab_size=vocab_size)
    import sentencepiece as spm

    sp_size = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()
    added = {
        "0": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
        "1": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
        "2": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
    }
    if phi:
        for offset, (content, rstrip) in enumerate(PHI3_ADDED_TOKENS):
            added[str(sp_size + offset)] = {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": rstrip,
                "single_word": False,
                "special": True,
            }
    pad = "<|endoftext|>" if phi else "<unk>"
    eos = "<|endoftext|>" if phi else "</s>"
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": pad,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": "<s>", "eos_token": eos, "pad_token": pad, "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return sp_size + (len(PHI3_ADDED_TOKENS) if phi else 0)


def build_synthetic_checkpoint(
    root: str | Path,
    text_model_type: str = "llama",
    hd: bool = False,
    sharded: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    num_crops: int = 4,
    projector_type: str = "mlp2x_gelu",
    unfreeze_vision_tower: bool = False,
    num_hidden_layers: int = 6,
    hidden_size: int = 32,
    seed: int = 0,
    extra_config: dict | None = None,
    tokenizer_vocab_size: int = 300,
    post_encoder_layers: int = 0,
) -> SyntheticCheckpoint:
    """Write a tiny original-format checkpoint and its CLIP tower under `root` (see the module docstring).

    `extra_config` entries are merged into config.json last (used by the tests to inject unsupported options, or
    DeepStack-V's `deepstack_args_for_ablation`). `post_encoder_layers` extra CLIP layers are written as
    `model.vision_tower.post_encoder.{j}.*` (DeepStack-V with a split layer at or past the tower's last layer).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    root = Path(root)
    tower_dir, ckpt_dir = root / "clip-tower", root / "checkpoint"
    vision = build_vision_tower(tower_dir, seed)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    phi = text_model_type in ("phi3", "deepstack_phi")
    tokenizer_len = _tokenizer_files(ckpt_dir, phi, tokenizer_vocab_size)
    vocab_size = tokenizer_len if not phi else 64 * math.ceil((tokenizer_len + 1) / 64)

    common = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
    }
    if phi:
        llm_config = Phi3Config(**common, eos_token_id=tokenizer_len - len(PHI3_ADDED_TOKENS), pad_token_id=tokenizer_len - len(PHI3_ADDED_TOKENS))
        shapes = _meta_shapes(Phi3ForCausalLM, llm_config)
        original = {
            **common,
            "architectures": ["DeepstackPhiForCausalLM"],
            "model_type": "deepstack_phi",
            "eos_token_id": tokenizer_len - len(PHI3_ADDED_TOKENS),
            "pad_token_id": tokenizer_len - len(PHI3_ADDED_TOKENS),
            "original_max_position_embeddings": 4096,
            "sliding_window": 2047,
            "attention_dropout": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "rope_scaling": None,
        }
    else:
        llm_config = LlamaConfig(**common)
        shapes = _meta_shapes(LlamaForCausalLM, llm_config)
        original = {
            **common,
            "architectures": ["DeepstackLlamaForCausalLM"],
            "model_type": "deepstack_llama",
            "eos_token_id": 2,
            "pad_token_id": 0,
            "attention_bias": False,
            "pretraining_tp": 1,
            "rope_scaling": None,
        }
    original.update(
        {
            "mm_vision_tower": str(tower_dir.resolve()),
            "mm_hidden_size": vision["hidden_size"],
            "mm_projector_type": projector_type,
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "mm_patch_merge_type": "spatial_unpad" if hd else "flat",
            "image_aspect_ratio": "deepstack",
            "num_crops": num_crops,
            "is_anyres_deepstack": hd,
            "deepstack_start_id": 1,
            "deepstack_interval": 1,
            "deepstack_args_for_ablation": "",
            "twoviews_unshare": False,
            "hires": False,
            "unfreeze_mm_vision_tower": unfreeze_vision_tower,
            "tokenizer_padding_side": "right",
            "tokenizer_model_max_length": 2048,
            "tune_mm_mlp_adapter": False,
            "freeze_mm_mlp_adapter": False,
            "use_mm_proj": True,
            "use_cache": True,
            "torch_dtype": {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype],
            "transformers_version": "4.37.2",
        }
    )
    original.update(extra_config or {})
    (ckpt_dir / "config.json").write_text(json.dumps(original, indent=2))
    if phi:
        generation = {"bos_token_id": 1, "eos_token_id": [original["eos_token_id"], original["eos_token_id"] + 7], "pad_token_id": original["pad_token_id"]}
        (ckpt_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))

    generator = torch.Generator().manual_seed(seed)
    state = _random_state(shapes, generator, dtype)
    projector_shapes = {}
    if projector_type == "linear":
        projector_shapes["model.mm_projector.weight"] = (hidden_size, vision["hidden_size"])
        projector_shapes["model.mm_projector.bias"] = (hidden_size,)
    else:
        depth = int(projector_type[3:].split("x")[0])
        for i in range(depth):
            fan_in = vision["hidden_size"] if i == 0 else hidden_size
            projector_shapes[f"model.mm_projector.{2 * i}.weight"] = (hidden_size, fan_in)
            projector_shapes[f"model.mm_projector.{2 * i}.bias"] = (hidden_size,)
    state.update(_random_state(projector_shapes, generator, dtype))
    if hd:
        state.update(_random_state({"model.image_newline": (hidden_size,)}, generator, dtype))
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip_config = CLIPVisionConfig(**{k: v for k, v in vision.items() if k not in ("model_type", "architectures")})
    clip_shapes = {f"model.vision_tower.vision_tower.{k}": v for k, v in _meta_shapes(CLIPVisionModel, clip_config, "vision_model.").items()}
    state.update(_random_state(clip_shapes, generator, dtype))
    state.update(_random_state(_post_encoder_shapes(clip_config, post_encoder_layers), generator, dtype))

    names = list(state)
    if sharded:
        groups = [names[i::3] for i in range(3)]
        files = [f"model-{i + 1:05d}-of-00003.safetensors" for i in range(3)]
        weight_map = {}
        for group, filename in zip(groups, files):
            write_tensors(ckpt_dir / filename, {name: state[name] for name in group})
            weight_map.update({name: filename for name in group})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    else:
        write_tensors(ckpt_dir / "model.safetensors", state)
    return SyntheticCheckpoint(ckpt_dir, tower_dir, original)


__all__ = ["PHI3_ADDED_TOKENS", "SyntheticCheckpoint", "build_synthetic_checkpoint", "build_vision_tower"]
