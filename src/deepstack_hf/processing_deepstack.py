"""Processor for DeepStack: image processor + Llama-family tokenizer + chat template.

Token ids follow the original ``tokenizer_image_token``: the prompt is split at every ``<image>``, every chunk is
tokenized on its own (so the text after an image starts with SentencePiece's word-boundary piece ``▁``, e.g.
the chunk ``"\\nWhat"`` gives ``▁``, ``\\n``, ``What``...), BOS is kept only at the start of the prompt, and each
``<image>`` becomes as many copies of the image token id as the model puts visual tokens for that image
(:func:`~deepstack_hf.grid_layout.num_image_tokens` on the grid of the image's size). Images are matched to
``<image>`` markers in reading order, prompt by prompt.
"""

from __future__ import annotations

import numpy as np

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin

from .grid_layout import num_image_tokens, num_views
from .image_processing_deepstack import _flatten_images
from .tokenization import slow_compatible_text


# Tokenizer keyword arguments that only act after the ids are built (handled by ``tokenizer.pad``).
_PAD_KWARGS = ("padding", "max_length", "pad_to_multiple_of", "padding_side", "return_attention_mask")


class DeepStackProcessor(ProcessorMixin):
    r"""
    DeepStack processor: a [`DeepStackImageProcessor`] and a Llama-family tokenizer (fast `LlamaTokenizer`,
    `legacy=False`), plus the chat template (`deepstack_hf.chat_templates`).

    `__call__(images=None, text=None, **kwargs)` returns a `BatchFeature` with `input_ids` and `attention_mask`
    (when `text` is given) and `pixel_values` and `image_sizes` (when `images` are given). Supported text keyword
    arguments: `padding` (`True`/`"longest"`, `"max_length"`, `False`), `max_length`, `pad_to_multiple_of`,
    `padding_side` (defaults to the tokenizer's, `"left"` from `tokenizer_from_sentencepiece`, which batched
    generation needs), `return_attention_mask`, `add_special_tokens` (BOS), `return_tensors`. Truncation is refused:
    it could cut an image's visual tokens. Image keyword arguments go to the image processor (`num_crops`,
    `hd_layout`...).

    Args:
        image_processor ([`DeepStackImageProcessor`]): the image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the tokenizer; it must know `image_token` as a token.
        chat_template (`str`, *optional*): Jinja chat template (`VICUNA_V1_TEMPLATE` or `PHI3_INSTRUCT_TEMPLATE`).
        image_token (`str`, *optional*, defaults to `"<image>"`): the placeholder in prompts.
    """

    valid_processor_kwargs = ProcessingKwargs

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no token {self.image_token!r}; add it as a special token "
                "(deepstack_hf.tokenization.tokenizer_from_sentencepiece does)."
            )
        self.image_token_id = int(image_token_id)

    # ------------------------------------------------------------------ token counting
    def _image_settings(self, images_kwargs: dict | None = None) -> tuple[int, bool, int, int]:
        images_kwargs = images_kwargs or {}
        image_processor = self.image_processor
        num_crops = int(images_kwargs.get("num_crops") or image_processor.num_crops)
        hd_layout = images_kwargs.get("hd_layout")
        hd_layout = bool(image_processor.hd_layout if hd_layout is None else hd_layout)
        crop_size = images_kwargs.get("crop_size") or image_processor.crop_size
        if isinstance(crop_size, int):
            crop = crop_size
        elif isinstance(crop_size, dict):
            crop = crop_size["height"]
        else:
            crop = crop_size.height
        patch_size = int(images_kwargs.get("patch_size") or image_processor.patch_size)
        return num_crops, hd_layout, int(crop), patch_size

    def _image_grid(self, height: int, width: int, num_crops: int, crop: int, images_kwargs: dict) -> tuple[int, int]:
        """The image processor's grid rule, with the call's `square_grid` / `num_crops` / crop size."""
        square_grid = images_kwargs.get("square_grid")
        return self.image_processor.get_image_grid(height, width, num_crops, square_grid, crop)

    def get_number_of_image_tokens(self, height: int, width: int, **images_kwargs) -> int:
        """Visual tokens one image of this original size occupies in the prompt."""
        num_crops, hd_layout, crop, patch_size = self._image_settings(images_kwargs)
        grid = self._image_grid(height, width, num_crops, crop, images_kwargs)
        return num_image_tokens(grid, hd_layout, crop // patch_size)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Visual tokens and views per image for ``image_sizes`` given as ``(height, width)`` pairs."""
        vision_data = {}
        if image_sizes is not None:
            images_kwargs = self._merge_kwargs(self.valid_processor_kwargs, **kwargs)["images_kwargs"]
            num_crops, hd_layout, crop, patch_size = self._image_settings(images_kwargs)
            tokens, patches = [], []
            for height, width in image_sizes:
                grid = self._image_grid(height, width, num_crops, crop, images_kwargs)
                tokens.append(num_image_tokens(grid, hd_layout, crop // patch_size))
                patches.append(num_views(grid, num_crops, hd_layout))
            vision_data.update({"num_image_tokens": tokens, "num_image_patches": patches})
        return MultiModalData(**vision_data)

    # ------------------------------------------------------------------ main call
    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        if videos is not None or audio is not None:
            raise ValueError("DeepStack takes images and text only.")
        if images is None and text is None:
            raise ValueError("DeepStackProcessor needs `images`, `text` or both.")
        kwargs.pop("sanitize_control_tokens", None)
        merged = self._merge_kwargs(
            self.valid_processor_kwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None) or images_kwargs.get("return_tensors")
        images_kwargs.pop("return_tensors", None)

        if text is not None:
            if isinstance(text, str):
                text = [text]
            elif not (isinstance(text, (list, tuple)) and all(isinstance(sample, str) for sample in text)):
                raise ValueError("`text` must be a string or a list of strings.")
            text = list(text)

        flat_images = []
        if images is not None:
            images = self.image_processor.fetch_images(images)
            flat_images = _flatten_images(images)
        if text is not None:
            self._check_image_counts(text, images, flat_images)

        data = {}
        tokens_per_image = []
        if flat_images:
            image_inputs = self.image_processor(flat_images, **images_kwargs)
            data.update(image_inputs)
            tokens_per_image = [
                self.get_number_of_image_tokens(height, width, **images_kwargs)
                for height, width in np.asarray(image_inputs["image_sizes"]).reshape(-1, 2).tolist()
            ]

        if text is not None:
            data.update(self._encode_prompts(text, tokens_per_image, text_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_image_counts(self, text: list[str], images, flat_images: list) -> None:
        markers = [sample.count(self.image_token) for sample in text]
        if sum(markers) != len(flat_images):
            raise ValueError(
                f"The prompts contain {sum(markers)} {self.image_token} marker(s) but {len(flat_images)} image(s) "
                "were given; pass exactly one image per marker."
            )
        # Images given one list per prompt must also match prompt by prompt.
        if (
            isinstance(images, (list, tuple))
            and len(images) == len(text)
            and len(text) > 1
            and all(isinstance(item, (list, tuple)) for item in images)
        ):
            for index, (count, item) in enumerate(zip(markers, images)):
                given = len(_flatten_images(item)) if item else 0
                if given != count:
                    raise ValueError(
                        f"Prompt {index} contains {count} {self.image_token} marker(s) but {given} image(s) were "
                        "given for it."
                    )

    def _encode_prompts(self, text: list[str], tokens_per_image: list[int], text_kwargs: dict) -> dict:
        if text_kwargs.get("truncation") not in (None, False, "do_not_truncate"):
            raise ValueError(
                "DeepStackProcessor does not truncate: truncation could cut an image's visual tokens. Shorten the "
                "prompt instead."
            )
        add_special_tokens = text_kwargs.get("add_special_tokens", True)
        add_special_tokens = True if add_special_tokens is None else bool(add_special_tokens)

        chunks_per_prompt = [sample.split(self.image_token) for sample in text]
        flat_chunks = [slow_compatible_text(chunk, self.tokenizer) for chunks in chunks_per_prompt for chunk in chunks]
        encoded = self.tokenizer(flat_chunks, add_special_tokens=add_special_tokens)["input_ids"]

        bos_id = self.tokenizer.bos_token_id
        input_ids, position, image_index = [], 0, 0
        for chunks in chunks_per_prompt:
            chunk_ids = encoded[position : position + len(chunks)]
            position += len(chunks)
            first = list(chunk_ids[0])
            # as the original: BOS kept once, when the first chunk starts with it; dropped from every later chunk
            offset = 1 if first and bos_id is not None and first[0] == bos_id else 0
            ids = first
            for later in chunk_ids[1:]:
                ids.extend([self.image_token_id] * tokens_per_image[image_index])
                image_index += 1
                ids.extend(later[offset:])
            input_ids.append(ids)

        pad_kwargs = {key: text_kwargs[key] for key in _PAD_KWARGS if text_kwargs.get(key) is not None}
        padded = self.tokenizer.pad({"input_ids": input_ids}, **pad_kwargs)
        return dict(padded)

    # ------------------------------------------------------------------ decoding
    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Decode generated ids (``(batch, length)`` or ``(length,)``) into a list of strings."""
        if hasattr(generated_outputs, "tolist"):
            generated_outputs = generated_outputs.tolist()
        if generated_outputs and isinstance(generated_outputs[0], int):
            generated_outputs = [generated_outputs]
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)
        return list(dict.fromkeys(names))


__all__ = ["DeepStackProcessor"]
