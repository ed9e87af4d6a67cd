"""Build a new DeepStack model from a CLIP vision checkpoint and a decoder checkpoint, ready to train.

    build_deepstack_model("openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5", "deepstack-l-vicuna-7b-init",
                          variant="L", dtype=torch.bfloat16)

or, from a shell, `python -m deepstack_hf.training.model_builder VISION DECODER OUTPUT_DIR --variant L-HD`.

The result is a repository like a converted one: weights (CLIP and the decoder as given; the projector, DeepStack-V's
extra vision layers and DeepStack-L-HD's `image_newline` newly initialised), config, generation config, processor
(tokenizer with `<image>` added, image processor with the CLIP preprocessing, chat template) and the package's
modules with `auto_map`, so it loads with plain Transformers and `trust_remote_code=True`.

* Tokenizer: a decoder with a SentencePiece `tokenizer.model` (Llama / Vicuna, Mistral, Phi-3) gets the tokenizer
  the converter builds (`conversion.tokenizer_conversion.convert_tokenizer`: the original slow tokenizer's ids);
  any other (Qwen2) its own fast tokenizer. `<image>` is added as a special token; the embeddings grow to cover it
  (to a multiple of 64) and every id from `<image>` on is suppressed in generation.
* Chat template: `vicuna_v1` for Llama / Vicuna and Mistral, `phi3_instruct` for Phi-3, `chatml` for Qwen2, or the
  one given (a name of `deepstack_hf.chat_templates.CHAT_TEMPLATES` or a Jinja string with `{% generation %}`
  blocks). The template's end-of-turn token joins the generation config's `eos_token_id`.
* Nothing is written unless the whole repository is: it is staged beside `output_dir` and renamed onto it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ..chat_templates import CHAT_TEMPLATES
from ..conversion.errors import ConversionError
from ..conversion.output_claim import OutputClaim
from ..conversion.remote_code import write_remote_code
from ..conversion.source_checkpoint import resolve_directory
from ..conversion.tokenizer_conversion import IMAGE_TOKEN, convert_tokenizer, padded_vocab_size
from ..modeling_deepstack_text import SUPPORTED_TEXT_MODELS

logger = logging.getLogger(__name__)

VARIANTS = ("L", "L-HD", "V")
FAMILY_TEMPLATES = {"llama": "vicuna_v1", "mistral": "vicuna_v1", "phi3": "phi3_instruct", "qwen2": "chatml"}
TEMPLATE_END_TOKENS = {"vicuna_v1": "</s>", "phi3_instruct": "<|end|>", "chatml": "<|im_end|>"}
TOKENIZER_FILES = ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]


def resolve_chat_template(chat_template: str | None, model_type: str) -> tuple[str, str | None]:
    """`(template, name)`: the family's default, a named template, or a Jinja string (name `None`)."""
    name = chat_template or FAMILY_TEMPLATES[model_type]
    if name in CHAT_TEMPLATES:
        if name == "plain":
            raise ValueError("'plain' is a pretraining data format, not a chat template for the model.")
        return CHAT_TEMPLATES[name], name
    if "{%" not in name and "{{" not in name:
        raise ValueError(f"Unknown chat template {name!r}; use one of {sorted(set(CHAT_TEMPLATES) - {'plain'})} or Jinja.")
    if "generation" not in name:
        raise ValueError("A custom chat template must mark the answers with {% generation %} blocks (for training).")
    return name, None


def build_tokenizer(decoder: str | Path):
    """The decoder's tokenizer with `<image>` added, left padding; the converter's when it has a `tokenizer.model`."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    directory = resolve_directory(decoder, TOKENIZER_FILES, "Decoder")
    if (directory / "tokenizer.model").is_file():
        return convert_tokenizer(directory).tokenizer
    tokenizer = AutoTokenizer.from_pretrained(decoder, padding_side="left")
    if IMAGE_TOKEN in tokenizer.get_vocab():
        raise ConversionError(f"The decoder's tokenizer already has {IMAGE_TOKEN!r}; cannot add the placeholder.")
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def build_image_processor(vision_tower: str | Path, vision_config, variant: str, num_crops: int):
    """`DeepStackImageProcessor` with the tower's CLIP preprocessing (its defaults when the tower has none)."""
    from transformers import CLIPImageProcessor

    from ..image_processing_deepstack import DeepStackImageProcessor

    settings = {}
    try:
        clip = CLIPImageProcessor.from_pretrained(vision_tower)
    except OSError:
        logger.info(f"{vision_tower} has no preprocessor_config.json; using CLIP's mean and std.")
    else:
        settings = {
            "image_mean": clip.image_mean,
            "image_std": clip.image_std,
            "resample": clip.resample,
            "rescale_factor": clip.rescale_factor,
        }
        crop = clip.crop_size["height"] if isinstance(clip.crop_size, dict) else clip.crop_size.height
        if crop != vision_config.image_size:
            raise ValueError(f"{vision_tower}: crop size {crop} differs from the tower's image_size {vision_config.image_size}.")
    size = vision_config.image_size
    return DeepStackImageProcessor(
        crop_size={"height": size, "width": size},
        num_crops=num_crops,
        hd_layout=variant == "L-HD",
        square_grid=variant == "V",
        patch_size=vision_config.patch_size,
        **settings,
    )


def build_deepstack_model(
    vision_tower: str | Path,
    decoder: str | Path,
    output_dir: str | Path,
    variant: str = "L",
    chat_template: str | None = None,
    num_crops: int = 4,
    vision_split_layer: int | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Make a DeepStack-L, -L-HD or -V model from a CLIP vision checkpoint and a decoder checkpoint and save it.

    Args:
        vision_tower: CLIP checkpoint (Hub id or directory; a `CLIPModel` or `CLIPVisionModel`).
        decoder: causal LM checkpoint of a supported family (`deepstack_hf.SUPPORTED_TEXT_MODELS`: Llama / Vicuna,
            Mistral, Phi-3, Qwen2).
        output_dir: the repository to write (empty or new; `overwrite` replaces it).
        variant: `"L"` (stacks into the decoder), `"L-HD"` (LLaVA-NeXT-style sequence + stacks) or `"V"` (stacks
            into the vision tower, from `vision_split_layer` on).
        chat_template: a name in `CHAT_TEMPLATES` or a Jinja template; defaults to the decoder family's.
        num_crops: high-resolution crops per image (4 in the paper).
        vision_split_layer: DeepStack-V only; defaults to half the CLIP layers. At or past the last CLIP layer, five
            extra CLIP layers are added (newly initialised) and the projector reads the last one.
        dtype: weights dtype of the saved model.
        overwrite: replace a non-empty `output_dir`.

    Returns:
        The output directory.

    Raises:
        ValueError: an unknown variant or template, an unsupported decoder, a tower whose weights do not fit.
        ConversionError: an output that cannot be claimed, a tokenizer that cannot be converted.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, CLIPVisionModel

    from ..configuration_deepstack import DeepStackConfig
    from ..processing_deepstack import DeepStackProcessor

    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose one of {VARIANTS}.")
    if vision_split_layer is not None and variant != "V":
        raise ValueError("vision_split_layer is a DeepStack-V option (variant='V').")
    output_dir = Path(output_dir).expanduser().absolute()
    OutputClaim.check_output(output_dir, overwrite)

    llm = AutoModelForCausalLM.from_pretrained(decoder, dtype=dtype)
    model_type = llm.config.model_type
    if model_type not in SUPPORTED_TEXT_MODELS:
        raise ValueError(f"Decoder {decoder} is a {model_type!r} model; supported: {sorted(SUPPORTED_TEXT_MODELS)}.")
    template, template_name = resolve_chat_template(chat_template, model_type)
    vision = CLIPVisionModel.from_pretrained(vision_tower, dtype=dtype)
    tokenizer = build_tokenizer(decoder)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    processor = DeepStackProcessor(
        build_image_processor(vision_tower, vision.config, variant, num_crops), tokenizer, chat_template=template
    )

    llm.config.pad_token_id = tokenizer.pad_token_id
    tower_layers = vision.config.num_hidden_layers
    split = (tower_layers // 2 if vision_split_layer is None else vision_split_layer) if variant == "V" else None
    config = DeepStackConfig(
        vision_config=vision.config,
        text_config=llm.config,
        image_token_id=image_token_id,
        num_crops=num_crops,
        hd_layout=variant == "L-HD",
        deepstack_variant="V" if variant == "V" else "L",
        vision_split_layer=split,
        vision_feature_layer=-1 if split is not None and split >= tower_layers else -2,
        image_seq_length=(vision.config.image_size // vision.config.patch_size) ** 2,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    loaded = model.model.vision_tower.load_state_dict(vision.state_dict(), strict=False)
    if loaded.unexpected_keys or any(".post_encoder." not in f".{name}" for name in loaded.missing_keys):
        raise ValueError(
            f"{vision_tower} does not fit the CLIP tower: missing {loaded.missing_keys[:5]}, unexpected "
            f"{loaded.unexpected_keys[:5]}."
        )
    model.model.language_model.load_state_dict(llm.get_decoder().state_dict())
    model.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    rows = padded_vocab_size(llm.get_input_embeddings().weight.shape[0], len(tokenizer))
    if rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)

    model.generation_config = generation_config(llm.generation_config, tokenizer, template_name, image_token_id, rows)
    del llm, vision
    protected = {name: Path(path) for name, path in (("the vision tower", vision_tower), ("the decoder", decoder))
                 if Path(path).is_dir()}
    with OutputClaim.acquire(output_dir, overwrite, protected) as claim:
        model.save_pretrained(claim.staging)
        write_remote_code(claim.staging, model.config, processor)
        claim.publish()
    return output_dir


def generation_config(base, tokenizer, template_name: str | None, image_token_id: int, rows: int):
    """The decoder's generation config, ending turns at the template's end token too, never emitting `<image>` or
    the padding rows of the embedding matrix."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    end = TEMPLATE_END_TOKENS.get(template_name)
    if end is not None and tokenizer.convert_tokens_to_ids(end) not in (None, tokenizer.unk_token_id):
        eos.append(tokenizer.convert_tokens_to_ids(end))
    config.eos_token_id = sorted(set(eos)) if len(set(eos)) > 1 else (eos[0] if eos else None)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.suppress_tokens = sorted({image_token_id, *range(len(tokenizer), rows)})
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deepstack_hf.training.model_builder",
        description="Build a DeepStack model from a CLIP vision checkpoint and a decoder checkpoint.",
    )
    parser.add_argument("vision_tower", help="CLIP checkpoint (Hub id or directory)")
    parser.add_argument("decoder", help="decoder checkpoint: Llama / Vicuna, Mistral, Phi-3 or Qwen2 (Hub id or directory)")
    parser.add_argument("output_dir")
    parser.add_argument("--variant", choices=VARIANTS, default="L")
    parser.add_argument("--chat-template", help=f"one of {sorted(set(CHAT_TEMPLATES) - {'plain'})} (default: the family's)")
    parser.add_argument("--num-crops", type=int, default=4)
    parser.add_argument("--vision-split-layer", type=int, help="DeepStack-V: first vision layer that receives a stack")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        output = build_deepstack_model(
            args.vision_tower, args.decoder, args.output_dir, variant=args.variant, chat_template=args.chat_template,
            num_crops=args.num_crops, vision_split_layer=args.vision_split_layer, dtype=getattr(torch, args.dtype),
            overwrite=args.overwrite,
        )
    except (ValueError, ConversionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"DeepStack-{args.variant} model written to {output}")
    return 0


__all__ = ["FAMILY_TEMPLATES", "VARIANTS", "build_deepstack_model"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
