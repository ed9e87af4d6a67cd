"""vLLM's multimodal processing for DeepStack: prompt ids, pixel views and placeholder runs per image.

vLLM tokenizes the prompt text itself, then asks this processor for (1) the pixel views of each image, (2) the
run of placeholder ids that replaces each `<image>` id. [`DeepStackProcessor`] makes the views; they are kept
unpadded, flat along the first axis, so every image's item is independent of the others in its batch (vLLM caches
each image on its own). The grid and token counts come from [`deepstack_hf.grid_layout`], the same functions the
Transformers processor and model use.

Videos are refused by name ([`VIDEOS_REFUSED`]): vLLM hands a model frames its own video loader sampled, not the
video, so IG-VLM's frame rule (`k * floor(T / 6)` of all `T` frames) cannot be applied here. A client sends the
video's grid as an image instead (`DeepStackVideoProcessor`, docs/vllm.md).
"""

from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature

from vllm.config.multimodal import MultiModalDummyOptions
from vllm.exceptions import VLLMValidationError
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from ...configuration_deepstack import DeepStackConfig
from ... import grid_layout
from ...grid_layout import candidate_grids, num_image_tokens, num_views
from ...processing_deepstack import DeepStackProcessor


VIDEOS_REFUSED = (
    "DeepStack's vLLM plugin takes images, not videos: turn the video into its IG-VLM grid image with "
    "deepstack_hf.DeepStackVideoProcessor (what the Transformers processor does with a video) and send that image "
    "(docs/vllm.md)."
)


def image_grid(config: DeepStackConfig, width: int, height: int) -> tuple[int, int]:
    """The crop grid `(w, h)` of an image of this size: the rule shared by processor and model."""
    return grid_layout.image_grid(width, height, config.num_crops, config.vision_config.image_size, config.square_grid)


def original_prompt_ids(token_ids: list[int], bos_token_id: int | None) -> list[int]:
    """vLLM's ids of an image prompt -> the original's: BOS in front when vLLM left it out.

    The converted tokenizer carries the original's word-boundary rules (`match_slow_word_boundaries`: the text after
    an image starts with SentencePiece's `▁`, as the original's chunk-wise tokenization gives), so vLLM's one-piece
    tokenization already gives the processor's ids. The original always starts a prompt with BOS, which the chat
    templates leave to the tokenizer and vLLM's chat path does not add.
    """
    if bos_token_id is None or token_ids[:1] == [bos_token_id]:
        return list(token_ids)
    return [bos_token_id, *token_ids]


class DeepStackProcessingInfo(BaseProcessingInfo):
    """Config, processor and per-image token counts of a converted DeepStack repo."""

    def get_hf_config(self) -> DeepStackConfig:
        return self.ctx.get_hf_config(DeepStackConfig)

    def get_hf_processor(self, **kwargs: object) -> DeepStackProcessor:
        return self.ctx.get_hf_processor(DeepStackProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def validate_num_items(self, modality: str, num_items: int) -> None:
        """vLLM's count check, with videos refused by name ([`VIDEOS_REFUSED`]) instead of "at most 0"."""
        if modality.startswith("video") and num_items:
            raise VLLMValidationError(VIDEOS_REFUSED, parameter=modality)
        super().validate_num_items(modality, num_items)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        """Placeholder tokens (= embedding rows) of one image: 576 (plain) or 576 + 24h(24w + 1) (HD)."""
        config = self.get_hf_config()
        grid = image_grid(config, image_width, image_height)
        return num_image_tokens(grid, config.hd_layout, config.patches_per_side)

    def get_image_size_with_most_features(self) -> ImageSize:
        """The canvas of the grid with the most tokens (HD) or views (plain): vLLM profiles memory with it."""
        config = self.get_hf_config()
        crop = config.vision_config.image_size

        def cost(grid: tuple[int, int]) -> tuple[int, int]:
            tokens = num_image_tokens(grid, config.hd_layout, config.patches_per_side)
            return tokens, num_views(grid, config.num_crops, config.hd_layout)

        grid_w, grid_h = max(candidate_grids(config.num_crops), key=cost)
        return ImageSize(width=crop * grid_w, height=crop * grid_h)


class DeepStackDummyInputsBuilder(BaseDummyInputsBuilder[DeepStackProcessingInfo]):
    """Profiling inputs: one `<image>` per image, each image of the size with the most features."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        size = self.info.get_image_size_with_most_features()
        images = self._get_dummy_images(
            width=size.width,
            height=size.height,
            num_images=mm_counts.get("image", 0),
            overrides=mm_options.get("image"),
        )
        return {"image": images}


class DeepStackMultiModalProcessor(BaseMultiModalProcessor[DeepStackProcessingInfo]):
    """Pixel views per image (flat, unpadded), one placeholder run per `<image>`, the original's prompt ids."""

    def _postprocess_hf_mm_data(
        self,
        mm_inputs: Mapping[str, object],
        hf_processor_mm_kwargs: Mapping[str, object],
        processed_data: BatchFeature,
    ) -> BatchFeature:
        """`pixel_values` `(num_images, max_views, 3, S, S)` -> `(total_views, 3, S, S)` plus `num_views` per image."""
        if "pixel_values" not in processed_data:
            return processed_data
        config = self.info.get_hf_config()
        sizes = torch.as_tensor(processed_data["image_sizes"]).reshape(-1, 2)
        counts = [
            num_views(image_grid(config, width, height), config.num_crops, config.hd_layout)
            for height, width in sizes.tolist()
        ]
        pixel_values = torch.as_tensor(processed_data["pixel_values"])
        processed_data["pixel_values"] = torch.cat([views[:count] for views, count in zip(pixel_values, counts)])
        processed_data["image_sizes"] = sizes
        processed_data["num_views"] = torch.tensor(counts)
        return processed_data

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        num_views_per_image = hf_inputs.get("num_views", torch.empty(0, dtype=torch.long))
        return {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", num_views_per_image),
            "image_sizes": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "num_views": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        image_token_id = self.info.get_hf_config().image_token_id

        def placeholder_run(item_idx: int) -> list[int]:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item_idx)
            return [image_token_id] * self.info.get_num_image_tokens(image_width=size.width, image_height=size.height)

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=placeholder_run)]

    def _postprocess_prompt(self, prompt: list[int]) -> list[int]:
        return original_prompt_ids(prompt, self.info.get_tokenizer().bos_token_id)


__all__ = [
    "VIDEOS_REFUSED",
    "DeepStackDummyInputsBuilder",
    "DeepStackMultiModalProcessor",
    "DeepStackProcessingInfo",
    "image_grid",
    "original_prompt_ids",
]
