"""Image processor for DeepStack-L and DeepStack-L-HD (PIL / NumPy, CPU).

For every image it emits the 336-pixel views of SPEC.md "Preprocessing", in the original order:

* plain: ``[image stretched to S x S] + crops (row-major) of the image stretched to the best canvas``;
* HD: the same ``1 + w*h`` views, then the ``u*u`` crops of the image stretched to ``uS x uS``, then, for every
  grid cell (row-major), its ``u*u`` sub-crops (row-major) of the image stretched to ``u`` times the canvas,
  with ``u = int(sqrt(num_crops))``.

``S`` is ``crop_size`` (336), the canvas is ``(w*S, h*S)`` for the grid ``(w, h)`` that
:func:`~deepstack_hf.grid_layout.select_best_grid` picks from the image's size, and every resize is a plain
``PIL.Image.resize`` of the *original* image (stretch, no padding) with ``resample`` (Pillow's default,
bicubic). Each view is then rescaled and normalised exactly like the original's CLIP image processor did it
(its shortest-edge resize and centre crop are identities on an exact ``S x S`` crop): ``uint8 * (1/255)``
computed in float64 and cast to float32, then ``(x - mean) / std`` in float32.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    infer_channel_dimension_format,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

from .grid_layout import hd_upsample_factor, image_grid, num_image_tokens, num_views


class DeepStackImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    num_crops (`int`, *optional*, defaults to `self.num_crops`):
        Upper bound on the crops of the high-resolution grid; the candidate grids are every `(w, h)` with
        `w * h <= num_crops` except `(1, 1)`.
    hd_layout (`bool`, *optional*, defaults to `self.hd_layout`):
        Emit the DeepStack-L-HD views (sequence views, then 2x-upsampled sub-crops) instead of the plain ones.
    patch_size (`int`, *optional*, defaults to `self.patch_size`):
        Vision-tower patch size; only used to count visual tokens.
    square_grid (`bool`, *optional*, defaults to `self.square_grid`):
        Give every image the square grid `(sqrt(num_crops), sqrt(num_crops))` instead of the best-fitting one
        (the original's `2xsample`; DeepStack-V needs it). Must match the model config's `square_grid`.
    """

    num_crops: int
    hd_layout: bool
    patch_size: int
    square_grid: bool


def _flatten_images(images) -> list:
    """Flat list of single images from a single image, a list, a nested list or a 4-D batch array."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flatten_images(item)]
    if isinstance(images, Image.Image):
        return [images]
    if hasattr(images, "ndim") and hasattr(images, "shape"):
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"An image array must have 2, 3 or 4 (batch) dimensions, got shape {tuple(images.shape)}.")
    raise ValueError(
        f"Unsupported image type {type(images).__name__}: pass PIL images, NumPy arrays, torch tensors, paths or URLs."
    )


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Cast pixel values to uint8: floats in [0, 1] are scaled by 255, floats or integers in [0, 255] are kept."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"Integer image values must lie in [0, 255], got [{array.min()}, {array.max()}] ({array.dtype}); "
                "convert the image to uint8 (or to a PIL image) first."
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError("Float image contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            array = array * 255.0
        elif low < 0.0 or high > 255.0:
            raise ValueError(
                f"Float image values must lie in [0, 1] (rescaled) or [0, 255], got [{low}, {high}]."
            )
        return np.round(array).astype(np.uint8)
    raise ValueError(f"Unsupported image dtype {array.dtype}.")


class DeepStackImageProcessor(PilBackend):
    r"""
    Constructs a DeepStack image processor (PIL / NumPy backend).

    Returns a `BatchFeature` with:

    - `pixel_values`: float32 `(num_images, max_views, 3, S, S)`; each image's views in the original order
      (see the module docstring), then zero views up to the batch's largest view count. With `do_pad=False` a
      list of `(num_views, 3, S, S)` arrays instead.
    - `image_sizes`: int64 `(num_images, 2)`, each image's original `(height, width)`.
    - `num_image_tokens`: int64 `(num_images,)`, the visual tokens each image occupies in the prompt, from the
      crop grid its views were cut with (what the processor expands each `<image>` marker to).

    Inputs may be PIL images of any mode, NumPy arrays or torch tensors (`(H, W)`, `(H, W, C)` or `(C, H, W)`
    with `C` in 1, 2, 3, 4; uint8, integer values in [0, 255], floats in [0, 1] or [0, 255]), paths or URLs,
    single, in a list or nested one list per prompt. Every image is converted with `PIL.Image.convert("RGB")`,
    as the original does (`Image.open(...).convert("RGB")`): alpha is dropped, not composited; 16-bit and
    32-bit grey levels are clipped to 255 by Pillow. Array inputs are turned into PIL images first (2 channels:
    `LA`; 4 channels: `RGBA`). Unreadable, truncated or corrupt images raise `ValueError`.

    Args:
        crop_size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 336, "width": 336}`):
            Side `S` of every view (square); also the unit of the crop grid.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Filter of every stretch; bicubic is Pillow's default filter of `Image.resize`, which the original
            uses.
        do_rescale (`bool`, *optional*, defaults to `True`), rescale_factor (`float`, *optional*, defaults to `1/255`),
        do_normalize (`bool`, *optional*, defaults to `True`), image_mean, image_std (defaults to CLIP's):
            Per-view rescale and normalisation, as CLIP's image processor.
        do_pad (`bool`, *optional*, defaults to `True`):
            Zero-pad the view dimension so that the batch stacks into one array.
        num_crops (`int`, *optional*, defaults to 4), hd_layout (`bool`, *optional*, defaults to `False`),
        patch_size (`int`, *optional*, defaults to 14):
            See `DeepStackImageProcessorKwargs`.
    """

    model_input_names = ["pixel_values", "image_sizes"]
    valid_kwargs = DeepStackImageProcessorKwargs

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    crop_size = {"height": 336, "width": 336}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_pad = True
    num_crops = 4
    hd_layout = False
    patch_size = 14
    square_grid = False

    def __init__(self, **kwargs: Unpack[DeepStackImageProcessorKwargs]):
        super().__init__(**kwargs)
        self._check_settings(self.crop_size, self.num_crops, self.patch_size)

    # ------------------------------------------------------------------ public helpers
    @staticmethod
    def _check_settings(crop_size: SizeDict, num_crops: int, patch_size: int | None = None) -> int:
        if crop_size is None or crop_size.height is None or crop_size.height != crop_size.width:
            raise ValueError(f"crop_size must be square (height == width), got {crop_size}.")
        if crop_size.height < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}.")
        if int(num_crops) < 2:
            raise ValueError(f"num_crops must be at least 2 (no crop grid exists otherwise), got {num_crops}.")
        if patch_size is not None and (patch_size < 1 or crop_size.height % patch_size):
            raise ValueError(f"crop_size {crop_size.height} must be a multiple of patch_size {patch_size}.")
        return int(crop_size.height)

    def get_image_grid(
        self,
        height: int,
        width: int,
        num_crops: int | None = None,
        square_grid: bool | None = None,
        crop: int | None = None,
    ) -> tuple[int, int]:
        """Crop grid ``(grid_width, grid_height)`` for an image of this size: SPEC's LLaVA-NeXT rule, or the square
        grid with ``square_grid`` (see :func:`~deepstack_hf.grid_layout.image_grid`)."""
        num_crops = self.num_crops if num_crops is None else num_crops
        square_grid = self.square_grid if square_grid is None else square_grid
        crop = self.crop_size.height if crop is None else crop
        return image_grid(int(width), int(height), num_crops, crop, bool(square_grid))

    def get_num_views(
        self,
        height: int,
        width: int,
        num_crops: int | None = None,
        hd_layout: bool | None = None,
        square_grid: bool | None = None,
    ) -> int:
        """Views (``S x S`` crops) this processor emits for one image of this size."""
        num_crops = self.num_crops if num_crops is None else num_crops
        hd_layout = self.hd_layout if hd_layout is None else hd_layout
        return num_views(self.get_image_grid(height, width, num_crops, square_grid), num_crops, hd_layout)

    def get_number_of_image_tokens(
        self,
        height: int,
        width: int,
        num_crops: int | None = None,
        hd_layout: bool | None = None,
        square_grid: bool | None = None,
    ) -> int:
        """Visual tokens the model puts in the sequence for one image of this size (576 plain at 336/14)."""
        num_crops = self.num_crops if num_crops is None else num_crops
        hd_layout = self.hd_layout if hd_layout is None else hd_layout
        grid = self.get_image_grid(height, width, num_crops, square_grid)
        return num_image_tokens(grid, hd_layout, self.crop_size.height // self.patch_size)

    # ------------------------------------------------------------------ input handling
    def fetch_images(self, image_url_or_urls):
        try:
            return super().fetch_images(image_url_or_urls)
        except (OSError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(f"Could not read the image: {error}") from error

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        images = self.fetch_images(images)
        flat = _flatten_images(images)
        if not flat:
            raise ValueError("No images were given.")
        return flat

    def to_rgb_pil(
        self,
        image,
        input_data_format: str | ChannelDimension | None = None,
        do_convert_rgb: bool = True,
    ) -> Image.Image:
        """One input image as an ``RGB`` PIL image (``convert("RGB")``, like the original)."""
        if not isinstance(image, Image.Image):
            image = self._array_to_pil(image, input_data_format)
        if image.mode != "RGB":
            if not do_convert_rgb:
                raise ValueError(f"Image mode is {image.mode!r} but do_convert_rgb=False; the views must be RGB.")
        try:
            image = image.convert("RGB")  # also forces a lazy PIL image to load: corrupt data fails here
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"Could not decode the image ({image.mode} {image.size}): {error}") from error
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"Image size must be at least 1x1 pixels, got {width}x{height}.")
        return image

    @staticmethod
    def _array_to_pil(image, input_data_format: str | ChannelDimension | None) -> Image.Image:
        if hasattr(image, "detach"):  # torch.Tensor
            image = image.detach().cpu().numpy()
        array = np.asarray(image)
        if array.ndim == 3:
            if input_data_format is None:
                try:
                    input_data_format = infer_channel_dimension_format(array, num_channels=(1, 2, 3, 4))
                except ValueError as error:
                    raise ValueError(f"Cannot tell the channel axis of an image of shape {array.shape}.") from error
            if ChannelDimension(input_data_format) == ChannelDimension.FIRST:
                array = np.moveaxis(array, 0, -1)
            if array.shape[-1] == 1:
                array = array[..., 0]
        elif array.ndim != 2:
            raise ValueError(f"An image array must have shape (H, W), (H, W, C) or (C, H, W), got {array.shape}.")
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"Image size must be at least 1x1 pixels, got shape {array.shape}.")
        array = np.ascontiguousarray(_array_to_uint8(array))
        if array.ndim == 2:
            return Image.fromarray(array)
        channels = array.shape[-1]
        if channels not in (2, 3, 4):
            raise ValueError(f"An image must have 1, 2, 3 or 4 channels, got {channels}.")
        return Image.fromarray(array)

    def _preprocess_image_like_inputs(self, images: ImageInput, *args, **kwargs) -> BatchFeature:
        images = self._prepare_images_structure(images)
        return self._preprocess(images, *args, **kwargs)

    # ------------------------------------------------------------------ views
    def image_views(
        self,
        image: Image.Image,
        crop: int,
        num_crops: int,
        hd_layout: bool,
        resample: PILImageResampling | int,
        grid: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """The uint8 views ``(num_views, S, S, 3)`` of one RGB image, in the original order.

        ``grid`` is the image's crop grid ``(w, h)`` when the caller has already chosen it.
        """
        width, height = image.size
        grid_w, grid_h = grid or self.get_image_grid(height, width, num_crops, crop=crop)
        resample = PILImageResampling(resample) if resample is not None else PILImageResampling.BICUBIC

        def stretched(cols: int, rows: int) -> np.ndarray:
            return np.asarray(image.resize((cols * crop, rows * crop), resample=resample))

        def tiles(array: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
            return [array[r * crop : (r + 1) * crop, c * crop : (c + 1) * crop] for r in range(rows) for c in range(cols)]

        views = [stretched(1, 1)]
        views += tiles(stretched(grid_w, grid_h), grid_h, grid_w)
        if hd_layout:
            up = hd_upsample_factor(num_crops)
            views += tiles(stretched(up, up), up, up)
            upsampled = stretched(grid_w * up, grid_h * up)
            for row in range(grid_h):
                for col in range(grid_w):
                    for sub_row in range(up):
                        for sub_col in range(up):
                            r, c = row * up + sub_row, col * up + sub_col
                            views.append(upsampled[r * crop : (r + 1) * crop, c * crop : (c + 1) * crop])
        return np.stack(views)

    def _preprocess(
        self,
        images: list,
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
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> BatchFeature:
        crop = self._check_settings(crop_size, num_crops)
        num_crops = int(num_crops)
        if do_normalize:
            mean = np.array(image_mean, dtype=np.float32).reshape(-1)
            std = np.array(image_std, dtype=np.float32).reshape(-1)
            if mean.size not in (1, 3) or std.size not in (1, 3):
                raise ValueError("image_mean and image_std must have 1 or 3 values.")

        patch_size = int(kwargs.get("patch_size") or self.patch_size)
        pixel_values, image_sizes, token_counts = [], [], []
        for image in images:
            rgb = self.to_rgb_pil(image, input_data_format, do_convert_rgb is not False)
            grid = self.get_image_grid(rgb.height, rgb.width, num_crops, square_grid, crop)
            token_counts.append(num_image_tokens(grid, bool(hd_layout), crop // patch_size))
            views = self.image_views(rgb, crop, num_crops, bool(hd_layout), resample, grid=grid)
            if do_rescale:
                # the original's rescale: uint8 * scale in float64, then cast to float32
                values = (views * rescale_factor).astype(np.float32)
            else:
                values = views.astype(np.float32)
            if do_normalize:
                values = (values - mean) / std
            pixel_values.append(np.ascontiguousarray(values.transpose(0, 3, 1, 2), dtype=np.float32))
            width, height = rgb.size
            image_sizes.append((height, width))

        if do_pad is not False:
            max_views = max(len(values) for values in pixel_values)
            batch = np.zeros((len(pixel_values), max_views, 3, crop, crop), dtype=np.float32)
            for index, values in enumerate(pixel_values):
                batch[index, : len(values)] = values
            pixel_values = batch
        data = {
            "pixel_values": pixel_values,
            "image_sizes": np.array(image_sizes, dtype=np.int64).reshape(-1, 2),
            "num_image_tokens": np.array(token_counts, dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["DeepStackImageProcessor", "DeepStackImageProcessorKwargs"]
