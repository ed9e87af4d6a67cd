"""Image processor for DeepStack-L and DeepStack-L-HD: the exact PIL / NumPy path (CPU).

For every image it emits the 336-pixel views of SPEC.md "Preprocessing", in the original order:

* plain: ``[image stretched to S x S] + crops (row-major) of the image stretched to the best canvas``;
* HD: the same ``1 + w*h`` views, then the ``u*u`` crops of the image stretched to ``uS x uS``, then, for every
  grid cell (row-major), its ``u*u`` sub-crops (row-major) of the image stretched to ``u`` times the canvas,
  with ``u = int(sqrt(num_crops))``.

``S`` is ``crop_size`` (336), the canvas is ``(w*S, h*S)`` for the grid ``(w, h)`` that
:meth:`DeepStackImageProcessingMixin.get_image_grid` picks from the image's size, and every resize is a plain
``PIL.Image.resize`` of the *original* image (stretch, no padding) with ``resample`` (Pillow's default,
bicubic). Each view is then rescaled and normalised exactly like the original's CLIP image processor did it
(its shortest-edge resize and centre crop are identities on an exact ``S x S`` crop): ``uint8 * (1/255)``
computed in float64 and cast to float32, then ``(x - mean) / std`` in float32.

The result is bit-identical to doing exactly that view by view, but cheaper: a resize two steps share (the
``uS x uS`` stretch is the canvas when the grid is ``(u, u)``) runs once, the crops of a stretch are cut by one
reshape straight into the output array, and the rescale / normalisation runs as float32 operations in place
that are checked once per setting against the reference arithmetic on all 256 byte values (the result depends
only on the channel and the byte), falling back to a lookup table where they would differ.

:class:`DeepStackImageProcessingMixin` holds what both backends share: settings, the crop grid (one method,
:meth:`~DeepStackImageProcessingMixin.get_image_grid`), the view plan, token counts and input handling (paths,
URLs, EXIF orientation, modes); ``image_processing_deepstack_fast`` is the torch backend.
"""

from __future__ import annotations

import base64
import binascii
import os
import warnings
from functools import lru_cache
from io import BytesIO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

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
    is_valid_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

from .grid_layout import hd_upsample_factor, image_grid, num_image_tokens, num_views
from .media_fetch import fetch_url, is_url


# PIL modes whose pixels ``convert("RGB")`` clips to [0, 255] (16- and 32-bit integers, 32-bit floats).
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


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


def channels_last(image, input_data_format: str | ChannelDimension | None = None):
    """``(H, W, C)`` view of an ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` array or tensor with ``C`` in 1..4."""
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim == 3:
        if input_data_format is None:
            try:
                input_data_format = infer_channel_dimension_format(image, num_channels=(1, 2, 3, 4))
            except ValueError as error:
                raise ValueError(f"Cannot tell the channel axis of an image of shape {tuple(image.shape)}.") from error
        if ChannelDimension(input_data_format) == ChannelDimension.FIRST:
            image = image.permute(1, 2, 0) if hasattr(image, "permute") else np.moveaxis(image, 0, -1)
    else:
        raise ValueError(f"An image array must have shape (H, W), (H, W, C) or (C, H, W), got {tuple(image.shape)}.")
    height, width, channels = image.shape
    if height < 1 or width < 1:
        raise ValueError(f"Image size must be at least 1x1 pixels, got shape {tuple(image.shape)}.")
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"An image must have 1, 2, 3 or 4 channels, got {channels}.")
    return image


def _open_image(source: str) -> Image.Image:
    """A lazily decoded PIL image from a local path, an http(s) URL or a base64 string / data URI.

    Adapted from ``transformers.image_utils.load_image``, minus its ``exif_transpose`` and ``convert("RGB")``:
    both happen later, in :meth:`DeepStackImageProcessingMixin.to_rgb_pil`, for every input alike.
    """
    if is_url(source):
        return Image.open(BytesIO(fetch_url(source)))  # bounded: deadline and byte limit (`media_fetch`)
    if os.path.isfile(source):
        return Image.open(source)
    data = source.split(",", 1)[1] if source.startswith("data:image/") else source
    try:
        return Image.open(BytesIO(base64.b64decode(data, validate=True)))
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            f"Incorrect image source {source[:80]!r}: not an existing file, an http(s) URL or a base64 string."
        ) from error


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: rotated / flipped by its EXIF orientation tag, if it has one.

    Transformers' ``load_image`` does this for paths and URLs (and so do pipelines and chat templates); this
    port does it for every input, opened images included, so one photo gives one set of pixels whatever the
    route. The original code (``Image.open(path).convert("RGB")``) ignores the tag: for a photo carrying an
    orientation other than 1 its pixels are the stored, un-rotated ones (docs/image_processing.md, "Inputs").
    """
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _warn_if_clipped(image: Image.Image) -> None:
    """Warn when ``convert("RGB")`` of a 16-bit, 32-bit or float PIL image changes what its values mean."""
    if image.mode not in _WIDE_MODES:
        return
    low, high = image.getextrema()
    if image.mode == "F" and 0.0 <= low and high <= 1.0 and high > 0.0:
        warnings.warn(
            f"Float image (mode F) with values in [{low:g}, {high:g}]: convert('RGB') reads them as 8-bit levels, "
            "so it becomes (almost) black. Multiply it by 255 (or pass an array) if it holds values in [0, 1].",
            UserWarning,
            stacklevel=4,
        )
    elif low < 0 or high > 255:
        warnings.warn(
            f"Image of mode {image.mode} with values in [{low:g}, {high:g}]: convert('RGB') clips them to "
            "[0, 255] (as the original's Image.open(...).convert('RGB') does), so everything above 255 becomes "
            "white. Scale it to 8 bits first (e.g. divide a 16-bit image by 257) to keep its contrast.",
            UserWarning,
            stacklevel=4,
        )


def view_plan(grid: tuple[int, int], num_crops: int, hd_layout: bool) -> list[tuple[int, int, int]]:
    """The stretches an image's views are cut from, in the views' order: ``(cols, rows, block)`` each.

    Each entry stretches the image to ``(cols * S, rows * S)`` pixels and cuts it into ``S x S`` crops, taken
    block by block (``block x block`` crops each, blocks row-major), row-major inside a block. Plain: the global
    view ``(1, 1, 1)`` and the canvas ``(w, h, 1)``; HD adds ``(u, u, 1)`` and ``(u*w, u*h, u)`` (every grid
    cell's ``u x u`` sub-crops together). ``sum(cols * rows)`` is :func:`~deepstack_hf.grid_layout.num_views`.
    """
    grid_w, grid_h = grid
    plan = [(1, 1, 1), (grid_w, grid_h, 1)]
    if hd_layout:
        up = hd_upsample_factor(num_crops)
        plan += [(up, up, 1), (grid_w * up, grid_h * up, up)]
    return plan


def block_order(pixels, crop: int, block: int):
    """Crops of channels-last stretches ``(..., rows*S, cols*S, C)`` as ``(..., rows/b, cols/b, b, b, C, S, S)``.

    Row-major blocks, row-major crops inside a block, channel-first crops: flattening the four axes after the
    leading ones lists the views in order. A view of ``pixels`` (NumPy array or torch tensor), nothing is copied.
    """
    *lead, height, width, channels = pixels.shape
    rows, cols = height // (crop * block), width // (crop * block)
    tiles = pixels.reshape(*lead, rows, block, crop, cols, block, crop, channels)
    order = tuple(range(len(lead))) + tuple(len(lead) + axis for axis in (0, 3, 1, 4, 6, 2, 5))
    return tiles.permute(order) if hasattr(tiles, "permute") else tiles.transpose(order)


def _reference_values(do_rescale: bool, rescale_factor: float, do_normalize: bool, mean, std) -> np.ndarray:
    """The original's float32 value of every (channel, byte): ``(3, 256)``."""
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 256))
    values = (levels * float(rescale_factor)).astype(np.float32) if do_rescale else levels.astype(np.float32)
    if do_normalize:
        values = (values - np.asarray(mean, np.float32).reshape(-1, 1)) / np.asarray(std, np.float32).reshape(-1, 1)
    return np.ascontiguousarray(values, dtype=np.float32)


class _ExactNormaliser:
    """Turns uint8 levels held in a float32 ``(..., 3, S, S)`` array or tensor into the original's values.

    In place, with the cheapest float32 arithmetic that gives the reference's bits for all 256 levels of every
    channel (checked here, once per setting: a multiplication or a division for the rescale, then
    ``(x - mean) / std``); a ``(3, 256)`` lookup table otherwise.
    """

    def __init__(self, do_rescale: bool, rescale_factor: float, do_normalize: bool, mean: tuple, std: tuple):
        self.table = _reference_values(do_rescale, rescale_factor, do_normalize, mean, std)
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1) if do_normalize else None
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1) if do_normalize else None
        candidates = [(None, None)]
        if do_rescale:
            candidates = [("mul", np.float32(rescale_factor))]
            if rescale_factor != 0:
                candidates.append(("div", np.float32(1.0 / float(rescale_factor))))
        self.scale_op, self.scale = next((c for c in candidates if self._exact(*c)), (None, None))
        self.use_table = not self._exact(self.scale_op, self.scale)

    @staticmethod
    def _apply(values, scale_op, scale, mean, std):
        if scale_op == "mul":
            values *= scale
        elif scale_op == "div":
            values /= scale
        if mean is not None:
            values -= mean
            values /= std
        return values

    def _exact(self, scale_op, scale) -> bool:
        levels = np.broadcast_to(np.arange(256, dtype=np.float32), (3, 256)).copy()[:, None, :]
        with np.errstate(all="ignore"):
            values = self._apply(levels, scale_op, scale, self.mean, self.std)[:, 0, :]
        return np.array_equal(values.view(np.uint32), self.table.view(np.uint32))

    def __call__(self, values: np.ndarray) -> None:
        """In place on a float32 NumPy array of levels ``(..., 3, S, S)``."""
        if self.use_table:
            for channel in range(3):
                plane = values[..., channel, :, :]
                plane[...] = self.table[channel][plane.astype(np.uint8)]
            return
        with np.errstate(all="ignore"):
            self._apply(values, self.scale_op, self.scale, self.mean, self.std)

    def on_tensor(self, values: torch.Tensor) -> None:
        """In place on a float32 tensor of levels ``(..., 3, S, S)``, on its device."""
        device = values.device
        if self.use_table:
            table = torch.from_numpy(self.table).to(device)
            for channel in range(3):
                plane = values[..., channel, :, :]
                plane.copy_(table[channel][plane.long()])
            return

        def constant(value):  # device tensors: a CPU scalar divisor becomes a reciprocal product on CUDA
            return None if value is None else torch.as_tensor(value, dtype=torch.float32, device=device)

        self._apply(values, self.scale_op, constant(self.scale), constant(self.mean), constant(self.std))


@lru_cache(maxsize=16)
def _normaliser(do_rescale: bool, rescale_factor: float, do_normalize: bool, mean: tuple, std: tuple):
    return _ExactNormaliser(do_rescale, rescale_factor, do_normalize, mean, std)


class DeepStackImageProcessingMixin:
    """What the PIL and torch backends share: defaults, settings checks, the crop grid, the view plan, token
    counts and input handling. The grid of an image is chosen in :meth:`get_image_grid` only."""

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

    @staticmethod
    def _check_normalisation(do_normalize: bool, image_mean, image_std) -> tuple[tuple, tuple]:
        if not do_normalize:
            return (), ()
        mean = tuple(float(v) for v in np.asarray(image_mean, dtype=np.float64).reshape(-1))
        std = tuple(float(v) for v in np.asarray(image_std, dtype=np.float64).reshape(-1))
        if len(mean) not in (1, 3) or len(std) not in (1, 3):
            raise ValueError("image_mean and image_std must have 1 or 3 values.")
        return mean, std

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
        return image_grid(int(width), int(height), int(num_crops), crop, bool(square_grid))

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

    def image_grids(self, sizes, num_crops: int, square_grid: bool | None, crop: int) -> dict:
        """``{(height, width): grid}`` for the distinct sizes of a batch: each grid is chosen once, in
        :meth:`get_image_grid`, and both the views and the token counts are derived from it."""
        return {size: self.get_image_grid(*size, num_crops, square_grid, crop) for size in set(sizes)}

    @staticmethod
    def token_counts(sizes, grids: dict, hd_layout: bool, crop: int, patch_size: int) -> np.ndarray:
        """int64 ``(num_images,)``: the visual tokens of each image of ``sizes`` on its grid from ``grids``."""
        counts = [num_image_tokens(grids[size], bool(hd_layout), crop // int(patch_size)) for size in sizes]
        return np.array(counts, dtype=np.int64)

    # ------------------------------------------------------------------ input handling
    def fetch_images(self, image_url_or_urls):
        """Open paths, URLs and base64 strings (lazily, orientation and mode untouched); other inputs pass."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str):
            try:
                return _open_image(image_url_or_urls)
            except (OSError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
                raise ValueError(f"Could not read the image: {error}") from error
        if is_valid_image(image_url_or_urls):
            return image_url_or_urls
        raise ValueError(
            f"Unsupported image type {type(image_url_or_urls).__name__}: pass PIL images, NumPy arrays, torch "
            "tensors, paths or URLs."
        )

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
        """One input image as an upright ``RGB`` PIL image (EXIF orientation applied, then ``convert("RGB")``)."""
        if not isinstance(image, Image.Image):
            image = self._array_to_pil(image, input_data_format)
        if image.mode != "RGB" and not do_convert_rgb:
            raise ValueError(f"Image mode is {image.mode!r} but do_convert_rgb=False; the views must be RGB.")
        try:
            image = apply_exif_orientation(image)
            _warn_if_clipped(image)
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
        array = np.ascontiguousarray(_array_to_uint8(channels_last(np.asarray(image), input_data_format)))
        return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

    def _preprocess_image_like_inputs(self, images: ImageInput, *args, **kwargs) -> BatchFeature:
        images = self._prepare_images_structure(images)
        return self._preprocess(images, *args, **kwargs)


class DeepStackImageProcessor(DeepStackImageProcessingMixin, PilBackend):
    r"""
    Constructs a DeepStack image processor (PIL / NumPy backend, the exact one; `use_fast=True` gives the torch
    backend, [`DeepStackImageProcessorFast`]).

    Returns a `BatchFeature` with:

    - `pixel_values`: float32 `(num_images, max_views, 3, S, S)`; each image's views in the original order
      (see the module docstring), then zero views up to the batch's largest view count. With `do_pad=False` a
      list of `(num_views, 3, S, S)` arrays instead.
    - `image_sizes`: int64 `(num_images, 2)`, each image's `(height, width)` (after EXIF orientation).
    - `num_image_tokens`: int64 `(num_images,)`, the visual tokens each image occupies in the prompt, from the
      crop grid its views were cut with (what the processor expands each `<image>` marker to).

    Inputs may be PIL images of any mode, NumPy arrays or torch tensors (`(H, W)`, `(H, W, C)` or `(C, H, W)`
    with `C` in 1, 2, 3, 4; uint8, integer values in [0, 255], floats in [0, 1] or [0, 255]), paths, URLs or
    base64 strings, single, in a list or nested one list per prompt. A PIL image is first turned upright by its
    EXIF orientation tag (as Transformers' `load_image` does for paths; the original does not, see
    [`apply_exif_orientation`]), then converted with `PIL.Image.convert("RGB")`, as the original does
    (`Image.open(...).convert("RGB")`): alpha is dropped, not composited; 16-bit, 32-bit and float levels are
    clipped to [0, 255] by Pillow, with a warning when that changes the image. Array inputs are turned into
    PIL images first (2 channels: `LA`; 4 channels: `RGBA`). Unreadable, truncated or corrupt images raise
    `ValueError`.

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
        patch_size (`int`, *optional*, defaults to 14), square_grid (`bool`, *optional*, defaults to `False`):
            See `DeepStackImageProcessorKwargs`.
    """

    def stretches(self, image: Image.Image, plan: list[tuple[int, int, int]], crop: int, resample) -> list:
        """The uint8 stretches ``(rows*S, cols*S, 3)`` of ``plan``; a size two entries share is resized once."""
        resized = {}
        for cols, rows, _ in plan:
            if (cols, rows) not in resized:
                resized[(cols, rows)] = np.asarray(image.resize((cols * crop, rows * crop), resample=resample))
        return [resized[(cols, rows)] for cols, rows, _ in plan]

    def write_views(self, image: Image.Image, out: np.ndarray, plan, crop: int, resample, normalise) -> None:
        """Write one RGB image's views, normalised, into ``out`` (float32 ``(num_views, 3, S, S)``)."""
        start = 0
        for (cols, rows, block), pixels in zip(plan, self.stretches(image, plan, crop, resample)):
            tiles = block_order(pixels, crop, block)
            np.copyto(out[start : start + cols * rows].reshape(tiles.shape), tiles, casting="unsafe")
            start += cols * rows
        normalise(out)

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
        patch_size: int | None = None,
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> BatchFeature:
        crop = self._check_settings(crop_size, num_crops)
        mean, std = self._check_normalisation(do_normalize, image_mean, image_std)
        normalise = _normaliser(bool(do_rescale), float(rescale_factor or 0.0), bool(do_normalize), mean, std)
        resample = PILImageResampling(resample) if resample is not None else PILImageResampling.BICUBIC

        rgb_images = [self.to_rgb_pil(image, input_data_format, do_convert_rgb is not False) for image in images]
        sizes = [(rgb.height, rgb.width) for rgb in rgb_images]
        grids = self.image_grids(sizes, num_crops, square_grid, crop)
        plans = [view_plan(grids[size], int(num_crops), bool(hd_layout)) for size in sizes]
        counts = [sum(cols * rows for cols, rows, _ in plan) for plan in plans]
        if do_pad is not False:
            pixel_values = np.zeros((len(rgb_images), max(counts), 3, crop, crop), dtype=np.float32)
            outputs = [pixel_values[index, :count] for index, count in enumerate(counts)]
        else:
            pixel_values = outputs = [np.empty((count, 3, crop, crop), dtype=np.float32) for count in counts]
        for rgb, plan, out in zip(rgb_images, plans, outputs):
            self.write_views(rgb, out, plan, crop, resample, normalise)

        data = {
            "pixel_values": pixel_values,
            "image_sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
            "num_image_tokens": self.token_counts(sizes, grids, hd_layout, crop, patch_size or self.patch_size),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["DeepStackImageProcessor", "DeepStackImageProcessorKwargs", "DeepStackImageProcessingMixin"]
