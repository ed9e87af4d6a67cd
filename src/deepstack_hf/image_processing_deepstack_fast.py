"""Image processor for DeepStack-L and DeepStack-L-HD: the torch backend (``use_fast=True``).

Same views, grids, token counts and output keys as the exact PIL path (:mod:`.image_processing_deepstack`),
computed with torch on the device the input tensors are on (or ``device=``), images of one size batched
together. Pixels are within two 8-bit levels of the exact path (tests/test_image_processing_deepstack_fast.py):
each stretch is two antialiased 1-D passes in the order Pillow runs them, rounded and clipped to uint8 after
each pass as Pillow does, so only the passes' arithmetic differs (Pillow's 22-bit fixed point against torch's
float or uint8 kernels). The rescale / normalisation is the exact path's, so equal uint8 views give equal
values. Torchvision is optional: its ``resize`` runs the passes when it is installed, torch's ``interpolate``
otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import group_images_by_shape
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack
from transformers.utils import TensorType, is_torchvision_available

from .grid_layout import num_views, view_plan
from .image_inputs import channels_last, is_rescaled_input, to_rgb
from .image_processing_deepstack import DeepStackImageProcessingMixin, DeepStackImageProcessorKwargs


if is_torchvision_available():
    from torchvision.transforms.v2 import functional as tvF

    from transformers.image_utils import pil_torch_interpolation_mapping
else:
    tvF = pil_torch_interpolation_mapping = None

# PIL filter -> torch interpolate mode (antialiased where torch can); others are refused by name.
_TORCH_MODES = {
    PILImageResampling.NEAREST: "nearest-exact",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}


def uint8_kernels(device: torch.device) -> bool:
    """Whether torch resizes uint8 directly on ``device`` (CPU: kernels modelled on Pillow's fixed point)."""
    return device.type == "cpu"


def resize_pass(images: torch.Tensor, size: tuple[int, int], resample: PILImageResampling) -> torch.Tensor:
    """One antialiased resize of uint8 ``(N, C, H, W)`` to ``size = (height, width)``, rounded to uint8."""
    if tvF is not None:
        interpolation = pil_torch_interpolation_mapping[resample]
        return tvF.resize(images, list(size), interpolation=interpolation, antialias=True)
    mode = _TORCH_MODES[resample]
    options = {} if mode == "nearest-exact" else {"antialias": True, "align_corners": False}
    if mode == "nearest-exact" or uint8_kernels(images.device):
        return F.interpolate(images, size=size, mode=mode, **options)
    values = F.interpolate(images.to(torch.float32), size=size, mode=mode, **options)
    return values.round_().clamp_(0, 255).to(torch.uint8)


def pil_like_resize(images: torch.Tensor, size: tuple[int, int], resample: PILImageResampling) -> torch.Tensor:
    """``Image.resize`` of uint8 ``(N, C, H, W)`` to ``(height, width)`` as two 1-D passes in Pillow's order.

    Pillow (13) runs the vertical pass first when the height shrinks by more than twice as many pixels as the
    width (``Resample.c``), the horizontal one otherwise, and stores the first pass in uint8. Torch's uint8
    kernels run the horizontal pass first and store it in uint8 too: one call does both passes then.
    """
    height, width = images.shape[-2:]
    new_height, new_width = size
    vertical_first = height - new_height > 0 and height - new_height > 2 * (width - new_width)
    if not vertical_first and uint8_kernels(images.device):
        return resize_pass(images, size, resample)
    steps = [(new_height, width), (new_height, new_width)] if vertical_first else [(height, new_width), size]
    for step in steps:
        if tuple(images.shape[-2:]) != tuple(step):
            images = resize_pass(images, step, resample)
    return images


class TorchBackend(BaseImageProcessor):
    """Tensors in and out, on the inputs' device; torchvision is used when installed, never required."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)

    @property
    def backend(self) -> str:
        return "torch"


class DeepStackImageProcessorFast(DeepStackImageProcessingMixin, TorchBackend):
    r"""
    Constructs a DeepStack image processor with the torch backend: what [`DeepStackImageProcessor`] computes,
    on torch tensors, batched, on CPU or GPU, without torchvision (used when installed).

    Returns a `BatchFeature` with torch tensors on the processing device:

    - `pixel_values`: float32 `(num_images, max_views, 3, S, S)`, zero views after each image's own up to the
      batch's largest view count, or the settings' largest with `pad_to_max_views=True` (a list of
      `(num_views, 3, S, S)` tensors with `do_pad=False`);
    - `image_sizes`: int64 `(num_images, 2)`, `(height, width)` per image;
    - `num_image_tokens`: int64 `(num_images,)`, the visual tokens of each image (as the PIL backend).

    The device is `device` if given, else that of the first tensor input, else CPU. Inputs are those of
    [`DeepStackImageProcessor`] (PIL images, arrays, tensors, paths, URLs), converted to RGB the same way; PIL
    images go through the same EXIF orientation and `convert("RGB")`. Views, grids and token counts equal the
    exact path's; pixels differ by at most two 8-bit levels (see the module docstring). `resample` may be
    nearest, bilinear or bicubic (the default); other PIL filters need the PIL backend.

    Args: those of [`DeepStackImageProcessor`], plus `disable_grouping` (`bool`, *optional*): process images
    one by one instead of batching those of one size (Transformers' default: batch on GPU, not on CPU).
    """

    def to_dict(self):
        processor_dict = super().to_dict()
        processor_dict["image_processor_type"] = "DeepStackImageProcessor"  # backend-neutral, as Transformers saves
        return processor_dict

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """One input image as an RGB uint8 tensor ``(3, H, W)`` on ``device`` (default: where it already is).

        A uint8 tensor with 1 or 3 channels stays on its device; every other input (PIL, NumPy, other dtypes, an
        alpha channel) goes through the exact path's rules ([`~deepstack_hf.image_inputs.to_rgb`]) on CPU."""
        if torch.is_tensor(image):
            pixels = channels_last(image.detach(), input_data_format)
            if pixels.dtype == torch.uint8 and pixels.shape[-1] in (1, 3):
                if pixels.shape[-1] != 3 and do_convert_rgb is False:
                    raise ValueError("Image has 1 channel but do_convert_rgb=False; the views must be RGB.")
                pixels = pixels.expand(-1, -1, 3).permute(2, 0, 1).contiguous()  # grey: the level three times
                return pixels if device is None else pixels.to(device)
            device = image.device if device is None else device
        rgb = to_rgb(image, input_data_format, do_convert_rgb is not False)
        pixels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
        return pixels if device is None else pixels.to(device)

    def _preprocess_image_like_inputs(self, images: ImageInput, *args, device=None, **kwargs) -> BatchFeature:
        flat = self._prepare_images_structure(images)
        if device is None:
            device = next((image.device for image in flat if torch.is_tensor(image)), torch.device("cpu"))
        input_data_format = kwargs.get("input_data_format")
        do_convert_rgb = kwargs.get("do_convert_rgb")
        rescaled_inputs = [is_rescaled_input(image) for image in flat]
        tensors = [self.process_image(image, do_convert_rgb, input_data_format, device) for image in flat]
        return self._preprocess(tensors, *args, rescaled_inputs=rescaled_inputs, **kwargs)

    def write_views(self, stack: torch.Tensor, outputs: list[torch.Tensor], plan, crop: int, resample) -> None:
        """Write the views of same-size images ``(N, 3, H, W)`` (uint8) into their float32 ``(num_views, 3, S, S)``
        outputs as levels, in the exact path's order; each stretch is resized once for the whole stack."""
        resized, start = {}, 0
        for cols, rows, block in plan:
            if (cols, rows) not in resized:
                resized[(cols, rows)] = pil_like_resize(stack, (rows * crop, cols * crop), resample)
            tiles = self.block_order(resized[(cols, rows)].permute(0, 2, 3, 1), crop, block)
            for image_tiles, out in zip(tiles, outputs):
                out[start : start + cols * rows].view(image_tiles.shape).copy_(image_tiles)
            start += cols * rows

    def _preprocess(
        self,
        images: list[torch.Tensor],
        crop_size: SizeDict,
        resample: PILImageResampling | int | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...] | None,
        image_std: float | tuple[float, ...] | None,
        do_pad: bool | None,
        return_tensors: str | TensorType | None,
        num_crops: int,
        hd_layout: bool,
        square_grid: bool | None = None,
        patch_size: int | None = None,
        pad_to_max_views: bool | None = None,
        disable_grouping: bool | None = None,
        rescaled_inputs: list[bool] | None = None,
        **kwargs,
    ) -> BatchFeature:
        crop = self._check_settings(crop_size, num_crops)
        mean, std = self._check_normalisation(do_normalize, image_mean, image_std)
        rescaled_inputs = rescaled_inputs or [False] * len(images)
        normalisers = self.normalisers(rescaled_inputs, do_rescale, rescale_factor, do_normalize, mean, std)
        resample = PILImageResampling(resample) if resample is not None else PILImageResampling.BICUBIC
        if resample not in _TORCH_MODES:
            raise ValueError(
                f"resample={resample.name} is not available in the torch backend (nearest, bilinear, bicubic); "
                "use the PIL backend (DeepStackImageProcessor) for it."
            )

        sizes = [tuple(image.shape[-2:]) for image in images]
        grids = self.image_grids(sizes, num_crops, square_grid, crop)
        counts = [num_views(grids[size], int(num_crops), bool(hd_layout)) for size in sizes]
        device = images[0].device
        if do_pad is not False:
            padded = self.padded_view_count(counts, num_crops, hd_layout, pad_to_max_views)
            pixel_values = torch.empty((len(images), padded, 3, crop, crop), dtype=torch.float32, device=device)
            outputs = [pixel_values[index, :count] for index, count in enumerate(counts)]
            for index, count in enumerate(counts):
                pixel_values[index, count:] = 0
        else:
            pixel_values = outputs = [torch.empty((n, 3, crop, crop), dtype=torch.float32, device=device) for n in counts]

        grouped, order = group_images_by_shape(images, disable_grouping=disable_grouping)
        members = {shape: [] for shape in grouped}
        for index, (shape, _) in sorted(order.items(), key=lambda item: item[1][1]):
            members[shape].append(outputs[index])
        for shape, stack in grouped.items():
            plan = view_plan(grids[tuple(stack.shape[-2:])], int(num_crops), bool(hd_layout))
            self.write_views(stack, members[shape], plan, crop, resample)
        for out, normaliser in zip(outputs, normalisers, strict=True):
            normaliser.on_tensor(out)

        image_sizes = torch.tensor(sizes, dtype=torch.int64, device=device)
        tokens = self.token_counts(sizes, grids, hd_layout, crop, patch_size or self.patch_size)
        data = {"pixel_values": pixel_values, "image_sizes": image_sizes, "num_image_tokens": torch.from_numpy(tokens)}
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["DeepStackImageProcessorFast", "DeepStackImageProcessorKwargs"]
