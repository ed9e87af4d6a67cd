"""`DeepStackDataCollator`: conversational rows -> a padded training batch whose labels follow the original's rule.

Each row (`load_llava_dataset`'s, or any TRL-style `{"messages", "images"}` row) is rendered with the chat
template and tokenized by the processor, which expands every image to its image tokens. The supervised tokens are
the template's `{% generation %}` spans (`ProcessorMixin.apply_chat_template(return_assistant_tokens_mask=True)`):
with `VICUNA_V1_TEMPLATE` every token after the `:` of `ASSISTANT:` up to and including the turn's `</s>`; with
`PHI3_INSTRUCT_TEMPLATE` each answer and its `<|end|>`; with `PLAIN_TEMPLATE` (pretraining) the caption and its
newline. This is the original's rule (`llava/train/train.py`) on every sample, including those the original drops
(see docs/training.md). Image tokens, the prompt and padding get -100.

`max_length` counts image tokens. A longer row loses text from its end (a warning gives the counts); an image is
never cut: a row whose images do not fit is a bad sample.
"""

from __future__ import annotations

import io
import logging

import torch
import transformers
from packaging import version
from PIL import Image

from .llava_data import BadSampleError

IGNORE_INDEX = -100
# From this release on, the processor's assistant masks follow the expansion of `<image>` into its image tokens;
# before it, they are computed on the unexpanded text and land on the wrong tokens.
MIN_TRANSFORMERS = "5.18"

logger = logging.getLogger(__name__)


def decode_image(image, sample_id: str) -> Image.Image:
    """A PIL image (RGB) from a PIL image, a path, or a `datasets.Image(decode=False)` value `{"path", "bytes"}`;
    a file that does not decode completely is a `BadSampleError`."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    source = image
    if isinstance(image, dict):
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
    if source is None:
        raise BadSampleError(sample_id, f"image {image!r} has neither a path nor bytes.")
    try:
        with Image.open(source) as opened:
            return opened.convert("RGB")  # decodes the whole file
    except (OSError, ValueError) as error:  # missing, unreadable, truncated or corrupt
        where = image.get("path") if isinstance(image, dict) else image
        raise BadSampleError(sample_id, f"image {where!r} does not decode ({error}).") from None


def with_images(messages: list[dict], images: list[Image.Image], sample_id: str) -> list[dict]:
    """The messages with the i-th image item carrying the i-th image (`{"type": "image", "image": ...}`)."""
    items = [
        item for message in messages if isinstance(message["content"], list)
        for item in message["content"] if item.get("type") == "image"
    ]
    if len(items) != len(images):
        raise BadSampleError(sample_id, f"has {len(items)} image item(s) in its messages but {len(images)} image(s).")
    remaining = iter(images)
    return [
        {
            **message,
            "content": [
                {"type": "image", "image": next(remaining)} if item.get("type") == "image" else item
                for item in message["content"]
            ]
            if isinstance(message["content"], list)
            else message["content"],
        }
        for message in messages
    ]


class DeepStackDataCollator:
    """Batches conversational rows for `DeepStackForConditionalGeneration` training.

    Args:
        processor ([`DeepStackProcessor`]): the model's processor.
        max_length (`int`, *optional*): the longest row, image tokens included; longer rows lose text from the end.
        chat_template (`str`, *optional*): the template to render with (e.g. `PLAIN_TEMPLATE` for pretraining);
            defaults to the processor's. It must mark the supervised text with `{% generation %}` blocks.
        padding_side (`str`, *optional*): `"right"` (the original's) or `"left"`; defaults to the tokenizer's.
        skip_bad_samples (`bool`): leave out a row whose image does not decode or does not fit `max_length`
            (logged with a running count) instead of raising `BadSampleError`.

    `__call__(rows)` takes rows with `messages` (role + content: a string or a list of `{"type": "image"}` /
    `{"type": "text", "text": ...}` items), `images` (PIL images, paths or `datasets.Image` values, one per image
    item in order) and optionally `id` (named in errors). It returns a dict of tensors: `input_ids`,
    `attention_mask` and `labels` `(batch, longest)`, and, when the batch has images, `pixel_values`
    `(num_images, max_views, 3, S, S)` and `image_sizes` `(num_images, 2)`.
    """

    def __init__(
        self,
        processor,
        max_length: int | None = None,
        chat_template: str | None = None,
        padding_side: str | None = None,
        skip_bad_samples: bool = False,
    ):
        if version.parse(transformers.__version__) < version.parse(MIN_TRANSFORMERS):
            raise ImportError(
                f"DeepStackDataCollator needs transformers >= {MIN_TRANSFORMERS} (assistant masks that follow the "
                f"image-token expansion), found {transformers.__version__}: pip install -U 'deepstack-hf[train]'."
            )
        template = chat_template or processor.chat_template
        if not template or "generation" not in template:
            raise ValueError(
                "The chat template must mark the supervised text with {% generation %} ... {% endgeneration %} "
                "blocks (the templates in deepstack_hf.chat_templates do)."
            )
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}.")
        self.processor = processor
        self.max_length = max_length
        self.chat_template = template
        self.padding_side = padding_side or processor.tokenizer.padding_side
        self.skip_bad_samples = skip_bad_samples
        self.skipped = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        encoded = []
        for index, row in enumerate(rows):
            try:
                encoded.append(self.encode(row, str(row.get("id", f"#{index} of the batch"))))
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                self.skipped += 1
                logger.warning(f"Skipping bad sample ({self.skipped} skipped so far by this collator): {error}")
        if not encoded:
            raise BadSampleError(
                ", ".join(str(row.get("id")) for row in rows), "every sample of this batch is bad; clean the data."
            )
        return self.pad(encoded)

    def encode(self, row: dict, sample_id: str) -> dict[str, torch.Tensor]:
        """One row -> `input_ids`, `labels` `(length,)` and, with images, `pixel_values`, `image_sizes`."""
        images = [decode_image(image, sample_id) for image in row.get("images") or []]
        messages = with_images(row["messages"], images, sample_id)
        try:
            out = self.processor.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                return_tensors="pt",
            )
        except ValueError as error:  # e.g. markers and images that do not match
            raise BadSampleError(sample_id, str(error)) from None
        input_ids = out["input_ids"][0]
        supervised = out["assistant_masks"][0].bool() & (input_ids != self.processor.image_token_id)
        labels = input_ids.masked_fill(~supervised, IGNORE_INDEX)
        sample = {"input_ids": input_ids, "labels": labels}
        if images:
            sample["pixel_values"], sample["image_sizes"] = out["pixel_values"], out["image_sizes"]
        return self.truncate(sample, sample_id)

    def truncate(self, sample: dict, sample_id: str) -> dict:
        """Cuts text from the end of a row longer than `max_length`; a row whose images do not fit is bad."""
        input_ids, length = sample["input_ids"], sample["input_ids"].shape[0]
        if self.max_length is None or length <= self.max_length:
            return sample
        image_positions = (input_ids == self.processor.image_token_id).nonzero()
        if len(image_positions) and int(image_positions[-1]) >= self.max_length:
            raise BadSampleError(
                sample_id,
                f"its images end at token {int(image_positions[-1]) + 1}, past max_length={self.max_length} "
                f"({length} tokens with {len(image_positions)} image tokens); an image is never cut.",
            )
        cut = sample["labels"][self.max_length :]
        logger.warning(
            f"Sample {sample_id}: {length} tokens ({len(image_positions)} of them image tokens) exceed "
            f"max_length={self.max_length}; the last {length - self.max_length} text tokens are cut, "
            f"{int((cut != IGNORE_INDEX).sum())} of them supervised."
        )
        return {**sample, "input_ids": input_ids[: self.max_length], "labels": sample["labels"][: self.max_length]}

    def pad(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """Pads `input_ids` (pad id), `labels` (-100) and the attention mask to the longest row."""
        longest = max(sample["input_ids"].shape[0] for sample in samples)
        pad_id = self.processor.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.full((len(samples), longest), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(samples), longest, dtype=torch.long),
            "labels": torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long),
        }
        for index, sample in enumerate(samples):
            length = sample["input_ids"].shape[0]
            span = slice(longest - length, longest) if self.padding_side == "left" else slice(0, length)
            batch["input_ids"][index, span] = sample["input_ids"]
            batch["labels"][index, span] = sample["labels"]
            batch["attention_mask"][index, span] = 1
        with_images = [sample for sample in samples if "pixel_values" in sample]
        if with_images:
            batch["pixel_values"] = torch.cat([sample["pixel_values"] for sample in with_images])
            batch["image_sizes"] = torch.cat([sample["image_sizes"] for sample in with_images])
        return batch


__all__ = ["IGNORE_INDEX", "MIN_TRANSFORMERS", "DeepStackDataCollator", "decode_image"]
