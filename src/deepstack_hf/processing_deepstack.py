"""Processor for DeepStack: image processor + Llama-family tokenizer + chat template, on `ProcessorMixin`'s call path.

As in Transformers' LLaVA / LLaVA-NeXT / Qwen3-VL processors, every ``<image>`` marker is replaced by as many
``<image>`` tokens as the model puts visual tokens for that image (the ``num_image_tokens`` the image processor
returns for it) and the expanded text is tokenized in one go. The ids are those of the original's chunk-wise
``tokenizer_image_token`` (each ``<image>``-separated chunk tokenized on its own by the slow tokenizer, BOS kept
at the start only): the tokenizer built by :func:`~deepstack_hf.tokenization.tokenizer_from_sentencepiece` (and
the converter) carries the original's word-boundary rules, the start of a chunk after an image included
(:func:`~deepstack_hf.tokenization.match_slow_word_boundaries`). Images are matched to ``<image>`` markers in
reading order, prompt by prompt.

Control tokens typed in message text stay text (`deepstack_hf.chat_escaping`): `apply_chat_template(...,
tokenize=True)` escapes them before rendering, and `__call__` tokenizes escaped runs as plain text.

A video becomes one image (IG-VLM's grid of its frames, [`DeepStackVideoProcessor`], docs/video.md): each ``<video>``
marker is rewritten to ``<image>`` and the video's grid takes its place among the images, in reading order, before
anything else happens. So a video in the text gives exactly the ids and ``pixel_values`` of its grid given as an
image: the model needs no new token and never sees a video.
"""

import re

from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.video_processing_utils import BaseVideoProcessor

from ._compat import ASSISTANT_MASKS_FOLLOW_IMAGE_EXPANSION
from .chat_escaping import ESCAPED_RUN, control_token_pattern, escape_control_tokens, unescape
from .image_inputs import flatten_images
from .image_processing_deepstack import DeepStackImageProcessorKwargs
from .video_processing_deepstack import (
    DeepStackVideoProcessor,
    DeepStackVideoProcessorKwargs,
    is_frame_list,
    make_video_list,
)


class DeepStackProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of [`DeepStackProcessor`]: Transformers' text and processor ones, the image processor's
    ([`DeepStackImageProcessorKwargs`]: `num_crops`, `hd_layout`, `square_grid`, `pad_to_max_views`...) and the
    video processor's ([`DeepStackVideoProcessorKwargs`]: `num_frames`, `frames_per_row`...), flat or in
    `images_kwargs` / `videos_kwargs`.

    By default the image processor pads the view axis to the most views any image can get under the call's settings
    (`pad_to_max_views=True`), so that samples processed one by one (a pipeline's, a data loader's) stack into one
    batch whatever their crop grids.
    """

    images_kwargs: DeepStackImageProcessorKwargs
    videos_kwargs: DeepStackVideoProcessorKwargs
    _defaults = {"images_kwargs": {"pad_to_max_views": True}}


class ExpandedPrompts(list):
    """The prompts with every `<image>` marker expanded to its image tokens (the `list[str]` the tokenizer gets),
    carrying `image_token_counts`: for each prompt, the image tokens of each of its images, in order.

    [`DeepStackProcessor.get_text_with_replacements`] returns it, and `ProcessorMixin.__call__` hands that same
    value to the truncation check after tokenization: the counts travel with the call, not on the processor (which
    a server's threads or a data loader's workers share). They are needed because adjacent images form one run of
    tokens in the expanded text.
    """

    def __init__(self, prompts: list[str], image_token_counts: list[list[int]]):
        super().__init__(prompts)
        self.image_token_counts = image_token_counts


def _as_list(text) -> list:
    return list(text) if isinstance(text, (list, tuple)) else [text]


def _is_empty(value) -> bool:
    """`None`, or lists / tuples (nested or not) holding nothing: `images=[[], []]` is a text-only batch."""
    return value is None or (isinstance(value, (list, tuple)) and all(_is_empty(item) for item in value))


class DeepStackProcessor(ProcessorMixin):
    r"""
    DeepStack processor: a [`DeepStackImageProcessor`], a Llama-family fast tokenizer and a
    [`DeepStackVideoProcessor`], plus the chat template (`deepstack_hf.chat_templates`).

    `__call__(images=None, text=None, videos=None, audio=None, **kwargs)` is `ProcessorMixin.__call__` on the hooks
    below (docs/design.md, "The processor"). It returns a `BatchFeature` with:

    - `input_ids`, `attention_mask`: `(batch, seq)` (lists of lists, or arrays / tensors with `return_tensors`),
      each `<image>` marker expanded to its image's tokens (when `text` is given);
    - `pixel_values`: float32 `(num_images, max_views, 3, S, S)`, each image's views then zero views up to the most
      views any image can get under the call's settings (`pad_to_max_views`; 5 plain and 25 HD for `num_crops=4`),
      or a list of `(num_views, 3, S, S)` with `do_pad=False`; `image_sizes`: int64 `(num_images, 2)`, each
      image's `(height, width)` (when `images` or `videos` are given; images in reading order of their markers).

    It takes every standard tokenizer keyword (`padding`, `truncation`, `max_length`, `padding_side`,
    `return_offsets_mapping`, `return_length`...) and `return_mm_token_type_ids` / `return_text_replacement_offsets`,
    typed in [`DeepStackProcessorKwargs`]: image keywords go to the image processor (`num_crops`, `hd_layout`...),
    video ones to the video processor (`num_frames`, `frames_per_row`). Truncation is allowed as long as it cuts no
    image token; otherwise a `ValueError` names the image. The processor keeps no state between calls: threads may
    share it.

    Each video (a path, an http(s) URL, the encoded bytes, a binary file object, a `(T, H, W, 3)` array or tensor,
    or a list of PIL frames) becomes the image grid of its frames, and its `<video>` marker an `<image>` marker, in
    place: the result is that of the grids given as images (`mm_token_type_ids` and replacement offsets call them
    images). `audio` may be `None` or empty.

    Args:
        image_processor ([`DeepStackImageProcessor`]): the image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the tokenizer; it must know `image_token` as a token.
        video_processor ([`DeepStackVideoProcessor`], *optional*): the video processor; default
            `DeepStackVideoProcessor()` (6 frames, IG-VLM's grid).
        chat_template (`str`, *optional*): Jinja chat template (`VICUNA_V1_TEMPLATE` or `PHI3_INSTRUCT_TEMPLATE`).
        image_token (`str`, *optional*, defaults to `"<image>"`): the image placeholder in prompts.
        video_token (`str`, *optional*, defaults to `"<video>"`): the video placeholder in prompts (plain text,
            not a token: it is rewritten to `image_token` before tokenization).
    """

    valid_processor_kwargs = DeepStackProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        **kwargs,
    ):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no token {self.image_token!r}; add it as a special token "
                "(deepstack_hf.tokenization.tokenizer_from_sentencepiece does)."
            )
        self.image_token_id = int(image_token_id)
        self.video_token = video_token
        if video_processor is None:
            video_processor = DeepStackVideoProcessor()
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template)

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        """`ProcessorMixin.get_processor_dict`, with the default video processor for a repo saved before DeepStack
        had one (its `processor_config.json` has no `video_processor` entry)."""
        processor_dict, kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        processor_dict.setdefault("video_processor", {"video_processor_type": DeepStackVideoProcessor.__name__})
        return processor_dict, kwargs

    def check_argument_for_proper_class(self, argument_name, argument):
        """`ProcessorMixin`'s class check, with the video processor checked against `BaseVideoProcessor` itself:
        Transformers looks the expected class up in its top-level namespace, which lacks the video classes when
        torchvision is not installed (this video processor needs no torchvision)."""
        if argument_name == "video_processor":
            if not isinstance(argument, BaseVideoProcessor):
                raise TypeError(f"Received a {type(argument).__name__} for argument video_processor, but a "
                                "BaseVideoProcessor was expected.")
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)

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
    def __call__(self, images=None, text=None, videos=None, **kwargs: Unpack[DeepStackProcessorKwargs]):
        """`ProcessorMixin.__call__` for images, videos and text. Generic callers pass `audio` too: `None` or empty
        is accepted, anything else refused. (It is not in the signature, so that callers that inspect it offer
        none.)"""
        audio = kwargs.pop("audio", None)
        if not _is_empty(audio):
            raise ValueError(f"DeepStack takes images, videos and text; got `audio` ({type(audio).__name__}).")
        text, typed = self._stand_in_for_typed_tokens(text)
        outputs = super().__call__(images=images, text=text, videos=None if _is_empty(videos) else videos, **kwargs)
        return self._spell_out_typed_tokens(outputs, typed)

    # ------------------------------------------------------------------ chat: typed control tokens stay text
    @property
    def control_tokens(self) -> tuple[str, ...]:
        """The strings the tokenizer turns into a token of their own (its added tokens, `<image>` included)."""
        return tuple(token.content for token in self.tokenizer.added_tokens_decoder.values())

    def escape_control_tokens(self, conversation):
        """A copy of `conversation` (messages, or a batch of them) whose message text has its control tokens
        escaped (`deepstack_hf.chat_escaping`). Render it with `apply_chat_template(..., tokenize=False)` and pass
        the text to this processor: what the messages said is tokenized as plain text, so `"</s>"` typed by a
        user does not end the turn and `"<image>"` claims no image."""
        return escape_control_tokens(conversation, control_token_pattern(self.control_tokens))

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """`ProcessorMixin.apply_chat_template`; with `tokenize=True`, control tokens typed in message text are
        tokenized as plain text ([`escape_control_tokens`]): only the template writes control tokens.

        Not escaped: a rendered string (`tokenize=False`, the default: the plain prompt cannot tell typed tokens
        apart) and training encodings (`return_assistant_tokens_mask=True`: trusted data, tokenized as the original
        does, with masks that follow the rendered text). Transformers' `sanitize_control_tokens=True` (newer
        releases) is accepted on every release: in effect with `tokenize=True`, refused with assistant masks, as
        Transformers does."""
        sanitize = kwargs.pop("sanitize_control_tokens", False)
        masks = kwargs.get("return_assistant_tokens_mask")
        if sanitize and (not kwargs.get("tokenize") or masks):
            raise ValueError(
                "`sanitize_control_tokens=True` requires `tokenize=True` and is not compatible with "
                "`return_assistant_tokens_mask=True`."
            )
        if masks and not ASSISTANT_MASKS_FOLLOW_IMAGE_EXPANSION:
            raise ValueError(
                "return_assistant_tokens_mask=True needs Transformers >= 5.18: this release computes the masks before "
                "each <image> is expanded into its image tokens, so they would miss the answers."
            )
        if kwargs.get("tokenize") and not masks:
            conversation = self.escape_control_tokens(conversation)
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    def _stand_in_for_typed_tokens(self, text):
        """`text` with each escaped run replaced by as many unknown tokens as its plain text has pieces, and those
        pieces' ids per sample (`None` when no sample has a run: nothing to do).

        The pieces are the BPE pieces of the run's characters, in a piece of their own, so the text around the run
        is tokenized as around any special token; the usual call then runs (images, padding, truncation, tensors)
        on final lengths, and [`_spell_out_typed_tokens`] puts the pieces in place of the stand-ins.
        """
        samples = _as_list(text) if text is not None else []
        if not any(ESCAPED_RUN.search(sample) for sample in samples if isinstance(sample, str)):
            return text, None
        unk = self.tokenizer.unk_token
        if unk is None:
            raise ValueError("Escaped control tokens need a tokenizer with an unknown token to stand in for them.")
        typed = [[self._plain_text_ids(unescape(run)) for run in ESCAPED_RUN.findall(s)] for s in samples]
        runs = iter(ids for sample in typed for ids in sample)
        marked = [ESCAPED_RUN.sub(lambda _: unk * len(next(runs)), sample) for sample in samples]
        return (marked if isinstance(text, (list, tuple)) else marked[0]), typed

    def _spell_out_typed_tokens(self, outputs, typed):
        """`outputs` with the stand-ins of [`_stand_in_for_typed_tokens`] replaced by the runs' pieces."""
        if typed is None:
            return outputs
        unk_id, masks = self.tokenizer.unk_token_id, outputs.get("attention_mask")
        for row, runs in enumerate(typed):
            ids = outputs["input_ids"][row]
            mask = masks[row] if masks is not None else [1] * len(ids)
            positions = [i for i, (token, attended) in enumerate(zip(ids, mask)) if int(token) == unk_id and attended]
            pieces = [piece for run in runs for piece in run]
            kept = len(positions)
            if kept < len(pieces):  # truncation cut some of them: keep those at the kept end of the text
                pieces = pieces[:kept] if self.tokenizer.truncation_side == "right" else pieces[len(pieces) - kept :]
            if kept != len(pieces):
                raise ValueError(
                    "The tokenizer gives unknown tokens for this text; escaped control tokens need byte fallback."
                )
            for index, piece in zip(positions, pieces):
                ids[index] = piece
        return outputs

    def _plain_text_ids(self, text: str) -> list[int]:
        """Ids of `text` as plain text in a piece of its own: the tokenizer model's pieces, no added tokens."""
        return [token.id for token in self.tokenizer.backend_tokenizer.model.tokenize(text)]

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Text as a list; images fetched, checked prompt by prompt when given one list per prompt, and flattened
        (`None` when they hold no image at all, e.g. `[[], []]`: a text-only batch); videos turned into grid images
        in their markers' places ([`videos_as_images`]), so that only images go on."""
        empty, given = _is_empty(images), images
        images, text, _, _ = super().prepare_inputs_layout(images=None if empty else images, text=text, **kwargs)
        if text is not None and given is not None:  # empty lists per prompt still meet that prompt's markers
            self._check_per_prompt(text, given if empty else images, self.image_token, "image", flatten_images)
        if images is not None:
            images = flatten_images(images)
        if videos is not None or (text is not None and any(self.video_token in sample for sample in text)):
            images, text = self.videos_as_images(images, text, videos, **kwargs)
        elif text is not None:  # older releases (5.17, 5.19) do not compare the markers with the images themselves
            self._check_marker_count(text, self.image_token, "image", images)
        return images, text, None, None

    def videos_as_images(self, images, text, videos, **kwargs) -> tuple[list | None, list[str] | None]:
        """The images with each video's grid in its `<video>` marker's place, and the text with those markers
        rewritten to `<image>` (the default markers have the same length: offsets into the text stay valid).

        Args:
            images: the flat list of images, or `None`.
            text: the prompts, or `None` (then the grids follow the images).
            videos: one video, a list, or one list per prompt; `None` when there is none.
            kwargs: the call's keyword arguments; the video ones (`num_frames`, `frames_per_row`,
                `videos_kwargs`...) go to the video processor.

        Raises:
            ValueError: the number of `<video>` markers (per prompt, when videos are given one list per prompt)
                differs from the number of videos, or that of `<image>` markers from the number of images.
        """
        video_list = [] if videos is None else make_video_list(videos)
        if text is not None:
            if isinstance(videos, (list, tuple)) and not any(is_frame_list(item) for item in videos):
                self._check_per_prompt(text, videos, self.video_token, "video", make_video_list)
            for token, noun, given in ((self.video_token, "video", video_list), (self.image_token, "image", images)):
                self._check_marker_count(text, token, noun, given)
        grids = []
        if video_list:
            videos_kwargs = self._merge_kwargs(self.valid_processor_kwargs, **kwargs)["videos_kwargs"]
            grids = list(self.video_processor(video_list, **videos_kwargs)["video_grids"])
        if text is None:
            return (list(images or []) + grids) or None, None
        remaining = {self.image_token: iter(images or []), self.video_token: iter(grids)}
        marker = re.compile(f"{re.escape(self.image_token)}|{re.escape(self.video_token)}")
        in_order = [next(remaining[found]) for sample in text for found in marker.findall(sample)]
        return in_order or None, [sample.replace(self.video_token, self.image_token) for sample in text]

    @staticmethod
    def _check_marker_count(text: list[str], token: str, noun: str, given: list | None) -> None:
        """`ValueError` unless the prompts hold one `token` marker per item of `given` (`None`: no items)."""
        markers, count = sum(sample.count(token) for sample in text), len(given or [])
        if markers != count:
            raise ValueError(f"The text contains {markers} {token} marker(s) but {count} {noun}(s) were given.")

    @staticmethod
    def _check_per_prompt(text, items, token: str, noun: str, flatten) -> None:
        """Images or videos given one list per prompt must match that prompt's markers."""
        if not (
            isinstance(items, (list, tuple))
            and isinstance(text, list)
            and len(text) > 1
            and len(items) == len(text)
            and all(isinstance(item, (list, tuple)) for item in items)
        ):
            return
        for index, (sample, item) in enumerate(zip(text, items, strict=True)):
            count, given = sample.count(token), len(flatten(item)) if item else 0
            if given != count:
                raise ValueError(
                    f"Prompt {index} contains {count} {token} marker(s) but {given} {noun}(s) were given for it."
                )

    # ------------------------------------------------------------------ multimodal hooks
    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The `<image>` tokens of image `image_idx`: as many as the image processor counted for it."""
        return self.image_token * int(image_inputs["num_image_tokens"][image_idx])

    @property
    def unused_input_names(self) -> list[str]:
        """Outputs of the sub-processors that are not model inputs: the image token counts, the video grids (they
        reach the model as images)."""
        return ["num_image_tokens", "video_grids"]

    def get_text_with_replacements(
        self, text, images_replacements=(), videos_replacements=(), audio_replacements=()
    ) -> tuple[ExpandedPrompts, list[list[dict]]]:
        """`ProcessorMixin`'s replacement; the expanded prompts come as [`ExpandedPrompts`], with each prompt's
        image token counts for the truncation check that follows in the same call."""
        text, offsets = super().get_text_with_replacements(
            text, list(images_replacements), list(videos_replacements), list(audio_replacements)
        )
        counts = [[entry["replacement"].count(self.image_token) for entry in row if entry["type"] == "image"]
                  for row in offsets]
        return ExpandedPrompts(text, counts or [[] for _ in text]), offsets

    def _check_special_mm_tokens(self, text: list[str], text_inputs, modalities: list[str]):
        """Every image keeps all its tokens; truncation that cuts one raises a `ValueError` naming the image.

        `text` is what [`get_text_with_replacements`] returned; other prompts get `ProcessorMixin`'s count check."""
        if not isinstance(text, ExpandedPrompts):
            return super()._check_special_mm_tokens(text, text_inputs, modalities)
        per_prompt = zip(text.image_token_counts, text_inputs["input_ids"], strict=True)
        for prompt_index, (counts, ids) in enumerate(per_prompt):
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


__all__ = ["DeepStackProcessor", "DeepStackProcessorKwargs", "ExpandedPrompts"]
