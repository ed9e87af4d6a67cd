"""Processor for DeepStack: image processor + Llama-family tokenizer + chat template, on `ProcessorMixin`'s call path.

As in Transformers' LLaVA / LLaVA-NeXT / Qwen3-VL processors, every ``<image>`` marker is replaced by as many
``<image>`` tokens as the model puts visual tokens for that image (the ``num_image_tokens`` the image processor
returns for it) and the expanded text is tokenized in one go. The ids are those of the original's chunk-wise
``tokenizer_image_token`` (each ``<image>``-separated chunk tokenized on its own by the slow tokenizer, BOS kept
at the start only): the tokenizer built by :func:`~deepstack_hf.tokenization.tokenizer_from_sentencepiece` (and
the converter) carries the original's word-boundary rules, the start of a chunk after an image included
(:func:`~deepstack_hf.tokenization.match_slow_word_boundaries`). Images are matched to ``<image>`` markers in
reading order, prompt by prompt.
"""

from __future__ import annotations

import numpy as np

from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin
from transformers.utils import is_torch_available

from .grid_layout import candidate_grids, num_views
from .image_processing_deepstack import _flatten_images


if is_torch_available():
    import torch


def _is_empty(value) -> bool:
    """`None`, or lists / tuples (nested or not) holding nothing: `images=[[], []]` is a text-only batch."""
    return value is None or (isinstance(value, (list, tuple)) and all(_is_empty(item) for item in value))


class DeepStackProcessor(ProcessorMixin):
    r"""
    DeepStack processor: a [`DeepStackImageProcessor`] and a Llama-family fast tokenizer, plus the chat template
    (`deepstack_hf.chat_templates`).

    `__call__(images=None, text=None, videos=None, audio=None, **kwargs)` is `ProcessorMixin.__call__`: it returns
    a `BatchFeature` with `input_ids` and `attention_mask` (when `text` is given) and `pixel_values` and
    `image_sizes` (when `images` are given), and takes every standard tokenizer keyword (`padding`,
    `truncation`, `max_length`, `padding_side`, `return_offsets_mapping`, `return_length`...) and
    `return_mm_token_type_ids` / `return_text_replacement_offsets`. Truncation is allowed as long as it cuts no
    image token; otherwise a `ValueError` names the image. `videos` and `audio` may be `None` or empty. Image
    keyword arguments go to the image processor (`num_crops`, `hd_layout`...).

    Args:
        image_processor ([`DeepStackImageProcessor`]): the image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the tokenizer; it must know `image_token` as a token.
        chat_template (`str`, *optional*): Jinja chat template (`VICUNA_V1_TEMPLATE` or `PHI3_INSTRUCT_TEMPLATE`).
        image_token (`str`, *optional*, defaults to `"<image>"`): the placeholder in prompts.
    """

    valid_processor_kwargs = ProcessingKwargs

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no token {self.image_token!r}; add it as a special token "
                "(deepstack_hf.tokenization.tokenizer_from_sentencepiece does)."
            )
        self.image_token_id = int(image_token_id)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    # ------------------------------------------------------------------ attributes llava-hf users look up
    @property
    def patch_size(self) -> int:
        """Vision-tower patch size (pixels)."""
        return self.image_processor.patch_size

    @property
    def image_seq_length(self) -> int | None:
        """Visual tokens per image when that number is fixed (plain layout: `(S / patch_size)**2`), else `None`."""
        if self.image_processor.hd_layout:
            return None
        return (self.image_processor.crop_size.height // self.patch_size) ** 2

    # ------------------------------------------------------------------ inputs
    def __call__(self, images=None, text=None, **kwargs):
        """`ProcessorMixin.__call__` for images and text. Generic callers pass `videos` / `audio` too: `None` or
        empty is accepted, anything else refused. (They are not in the signature, so that callers that inspect it
        offer none.)"""
        for name in ("videos", "audio"):
            value = kwargs.pop(name, None)
            if not _is_empty(value):
                raise ValueError(f"DeepStack takes images and text only; got `{name}` ({type(value).__name__}).")
        return super().__call__(images=images, text=text, **kwargs)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Text as a list; images fetched, checked prompt by prompt when given one list per prompt, and flattened
        (`None` when they hold no image at all, e.g. `[[], []]`: a text-only batch)."""
        empty, given = _is_empty(images), images
        images, text, _, _ = super().prepare_inputs_layout(images=None if empty else images, text=text, **kwargs)
        if text is not None and given is not None:  # empty lists per prompt still meet that prompt's markers
            self._check_images_per_prompt(text, given if empty else images)
        if images is not None:
            images = _flatten_images(images)
        return images, text, None, None

    def _check_images_per_prompt(self, text, images) -> None:
        """Images given one list per prompt must match that prompt's `<image>` markers."""
        if not (
            isinstance(images, (list, tuple))
            and isinstance(text, list)
            and len(text) > 1
            and len(images) == len(text)
            and all(isinstance(item, (list, tuple)) for item in images)
        ):
            return
        for index, (sample, item) in enumerate(zip(text, images, strict=True)):
            count, given = sample.count(self.image_token), len(_flatten_images(item)) if item else 0
            if given != count:
                raise ValueError(
                    f"Prompt {index} contains {count} {self.image_token} marker(s) but {given} image(s) were given "
                    "for it."
                )

    # ------------------------------------------------------------------ multimodal hooks
    def _process_images(self, images, **kwargs):
        """The image processor's outputs and the `<image>` replacements, with `pixel_values` padded to the most
        views any image can get under these settings, so that separately processed inputs (a pipeline's or a data
        loader's samples) stack into one batch whatever their crop grids."""
        processed, replacements = super()._process_images(images, **kwargs)
        pixel_values = processed["pixel_values"]
        if not isinstance(pixel_values, list):  # `do_pad=False` keeps a list of per-image arrays
            num_crops = kwargs.get("num_crops") or self.image_processor.num_crops
            hd = self.image_processor.hd_layout if kwargs.get("hd_layout") is None else kwargs["hd_layout"]
            most = max(num_views(grid, num_crops, hd) for grid in candidate_grids(num_crops))
            missing = most - pixel_values.shape[1]
            if missing > 0:  # zero views after each image's own, as the image processor pads
                if isinstance(pixel_values, np.ndarray):
                    padding = [(0, 0), (0, missing)] + [(0, 0)] * (pixel_values.ndim - 2)
                    processed["pixel_values"] = np.pad(pixel_values, padding)
                else:
                    padding = [0, 0] * (pixel_values.ndim - 2) + [0, missing]
                    processed["pixel_values"] = torch.nn.functional.pad(pixel_values, padding)
        return processed, replacements

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The `<image>` tokens of image `image_idx`: as many as the image processor counted for it."""
        return self.image_token * int(image_inputs["num_image_tokens"][image_idx])

    @property
    def unused_input_names(self) -> list[str]:
        return ["num_image_tokens"]

    def get_text_with_replacements(self, text, images_replacements=(), videos_replacements=(), audio_replacements=()):
        """`ProcessorMixin`'s replacement, remembering each prompt's image token counts for the truncation check
        that follows in the same call (adjacent images form one run of tokens, so they cannot be told apart
        afterwards)."""
        text, offsets = super().get_text_with_replacements(
            text, list(images_replacements), list(videos_replacements), list(audio_replacements)
        )
        self._image_tokens_per_prompt = [
            [entry["replacement"].count(self.image_token) for entry in row if entry["type"] == "image"]
            for row in offsets
        ]
        return text, offsets

    def _check_special_mm_tokens(self, text: list[str], text_inputs, modalities: list[str]):
        """Every image keeps all its tokens; truncation that cuts one raises a `ValueError` naming the image."""
        per_prompt = getattr(self, "_image_tokens_per_prompt", None) or [[] for _ in text]
        for prompt_index, (counts, ids) in enumerate(zip(per_prompt, text_inputs["input_ids"], strict=True)):
            kept = list(ids).count(self.image_token_id)
            if kept == sum(counts):
                continue
            # truncation keeps the images at the start (right side cut) or at the end (left side cut)
            order = range(len(counts)) if self.tokenizer.truncation_side == "right" else range(len(counts))[::-1]
            for image_index in order:
                if counts[image_index] > kept:
                    raise ValueError(
                        f"Truncation cuts image {image_index} of prompt {prompt_index}: it needs "
                        f"{counts[image_index]} image tokens but only {kept} fit. Raise `max_length` or shorten "
                        "the text."
                    )
                kept -= counts[image_index]

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Visual tokens and views per image for `image_sizes` given as `(height, width)` pairs."""
        vision_data = {}
        if image_sizes is not None:
            images_kwargs = self._merge_kwargs(self.valid_processor_kwargs, **kwargs)["images_kwargs"]
            settings = {key: images_kwargs.get(key) for key in ("num_crops", "hd_layout", "square_grid")}
            tokens = [self.image_processor.get_number_of_image_tokens(h, w, **settings) for h, w in image_sizes]
            views = [self.image_processor.get_num_views(h, w, **settings) for h, w in image_sizes]
            vision_data.update({"num_image_tokens": tokens, "num_image_patches": views})
        return MultiModalData(**vision_data)


__all__ = ["DeepStackProcessor"]
