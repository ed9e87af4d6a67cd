"""How any image input becomes an upright 8-bit RGB image: the rules both image-processor backends share.

docs/image_processing.md ("Inputs") states them for users; in short:

* **Sources**: paths, http(s) URLs (downloaded by [`~deepstack_hf.media_fetch.fetch_url`]: total deadline, byte
  limit), base64 strings / data URIs ([`open_image`]).
* **Orientation**: the EXIF orientation tag is applied to every PIL image ([`apply_exif_orientation`]).
* **Transparency** (one rule with vLLM's image loading, `vllm.multimodal.image.convert_image_mode`): an image
  with an alpha channel (`RGBA`, `LA`, `PA`) or a transparency key (`transparency` in `image.info`, a `P` or `L`
  PNG's tRNS) is composited onto white; an `RGB` image is kept as it is; every other mode is
  `convert("RGB")` ([`flatten_to_rgb`]). The original drops alpha (`convert("RGB")`): a transparent pixel takes
  its stored colour, often black; vLLM composites before the model sees the image, so compositing here makes the
  Transformers path and the vLLM plugin see the same pixels.
* **Values** ([`to_uint8_levels`]), for NumPy arrays, torch tensors (any dtype, bfloat16 and float16 included)
  and the PIL modes `I`, `I;16*` and `F`: booleans are 0 / 255; integers within [0, 255] are 8-bit levels as
  they are, within [0, 65535] 16-bit levels and within [0, 2**32 - 1] 32-bit levels, rescaled to 8 bits
  (`round(v * 255 / (2**bits - 1))`; the original's `convert("RGB")` clips them at 255, which turns a 16-bit
  photo 99 % white); negative integers are refused. Floats whose maximum is at most 1 are rescaled values
  ([0, 1], multiplied by 255), other floats are levels ([0, 255]); values outside that range are clipped to it
  with a warning naming the range seen; NaN and infinity are refused.

Any number of images may come single, in a list, nested one list per prompt or as a 4-D batch array
([`flatten_images`] lists them one by one).
"""

from __future__ import annotations

import base64
import binascii
import os
import warnings
from io import BytesIO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

from .media_fetch import fetch_url, is_url


# PIL modes whose values are read like arrays (16- and 32-bit integers, 32-bit floats), not by convert("RGB").
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
# Modes vLLM composites onto the background (plus any image whose `info` carries a transparency key).
ALPHA_MODES = ("RGBA", "LA", "PA")
BACKGROUND = (255, 255, 255)  # white, as vLLM's default `rgba_background_color`


def flatten_images(images) -> list:
    """The single images of `images`, in order: a single image, a list, nested lists (one per prompt, empty ones
    included) or a 4-D batch array or tensor ``(N, ...)``. Paths and URLs must have been opened first."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in flatten_images(item)]
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


def open_image(source: str) -> Image.Image:
    """A lazily decoded PIL image from a local path, an http(s) URL or a base64 string / data URI.

    Adapted from ``transformers.image_utils.load_image``, minus its ``exif_transpose`` and ``convert("RGB")``:
    both happen later, in [`to_rgb`], for every input alike. URLs are downloaded with the limits of
    [`~deepstack_hf.media_fetch.fetch_url`] (`media_fetch.DEFAULT_LIMITS`).
    """
    if is_url(source):
        return Image.open(BytesIO(fetch_url(source)))
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

    Transformers' ``load_image`` does this for paths and URLs (and so do pipelines, chat templates and vLLM); this
    port does it for every input, opened images included, so one photo gives one set of pixels whatever the
    route. The original code (``Image.open(path).convert("RGB")``) ignores the tag: for a photo carrying an
    orientation other than 1 its pixels are the stored, un-rotated ones (docs/image_processing.md, "Inputs").
    """
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


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


def as_numpy(image) -> np.ndarray:
    """A NumPy array of an array or tensor; bfloat16 (which NumPy lacks) becomes float32."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return (image.float() if image.dtype == torch.bfloat16 else image).numpy()
    return np.asarray(image)


def is_rescaled_input(image) -> bool:
    """Whether `image` holds rescaled values: a float array / tensor or a PIL `F` image whose maximum is at most 1.

    Such an input is already in the range `do_rescale` would give, so it is never rescaled twice: with
    `do_rescale=False` its views hold the values given (as Transformers' CLIP processor gives them), not 255 times.
    """
    if isinstance(image, Image.Image):
        return image.mode == "F" and image.getextrema()[1] <= 1.0
    if isinstance(image, torch.Tensor):
        return bool(image.is_floating_point() and image.numel() and image.detach().max() <= 1.0)
    array = np.asarray(image)
    return bool(np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0)


def to_uint8_levels(array: np.ndarray) -> np.ndarray:
    """8-bit levels of pixel values of any dtype, by the rules of the module docstring ("Values")."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if not array.size:
            return array.astype(np.uint8)
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise ValueError(
                f"Integer image values must not be negative, got [{low}, {high}] ({array.dtype}); shift or convert "
                "the image to unsigned levels first."
            )
        if high <= 255:
            return array.astype(np.uint8)
        if high > 2**32 - 1:
            raise ValueError(f"Integer image values beyond 32 bits ({high}, {array.dtype}) are not pixel levels.")
        top = 2**16 - 1 if high <= 2**16 - 1 else 2**32 - 1  # 16- or 32-bit levels -> round(v * 255 / top)
        return ((array.astype(np.uint64) * 255 + top // 2) // top).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("Float image contains NaN or infinite values.")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        top = 1.0 if high <= 1.0 else 255.0
        if low < 0.0 or high > top:
            warnings.warn(
                f"Float image values lie in [{low:g}, {high:g}], outside [0, {top:g}] (floats with a maximum of at "
                "most 1 are read as rescaled [0, 1] values, others as [0, 255] levels); they are clipped to "
                f"[0, {top:g}].",
                UserWarning,
                stacklevel=2,
            )
            values = np.clip(values, 0.0, top)
        return np.round(values * (255.0 / top)).astype(np.uint8)
    raise ValueError(f"Unsupported image dtype {array.dtype}: pass booleans, integers or floats.")


def array_to_pil(image, input_data_format: str | ChannelDimension | None = None) -> Image.Image:
    """An array or tensor as a PIL image of its channels (`L`, `LA`, `RGB`, `RGBA`), values as 8-bit levels."""
    array = np.ascontiguousarray(to_uint8_levels(channels_last(as_numpy(image), input_data_format)))
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """`RGB` by the transparency rule of the module docstring: alpha or a transparency key composited onto white,
    `RGB` kept, every other mode `convert("RGB")`; wide modes (`I`, `I;16*`, `F`) by the value rules first."""
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_MODES:
        image = Image.fromarray(to_uint8_levels(np.asarray(image)))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, BACKGROUND)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return image.convert("RGB")


def to_rgb(image, input_data_format: str | ChannelDimension | None = None, do_convert_rgb: bool = True) -> Image.Image:
    """One input image (PIL, array or tensor) as an upright `RGB` PIL image: EXIF orientation, then
    [`flatten_to_rgb`]. Unreadable or corrupt data, and values no rule accepts, raise `ValueError`."""
    if not isinstance(image, Image.Image):
        image = array_to_pil(image, input_data_format)
    if image.mode != "RGB" and not do_convert_rgb:
        raise ValueError(f"Image mode is {image.mode!r} but do_convert_rgb=False; the views must be RGB.")
    try:
        image = flatten_to_rgb(apply_exif_orientation(image))
        image.load()  # a lazy PIL image is decoded here: corrupt data fails now
    except (OSError, SyntaxError, ValueError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"Could not decode the image ({image.mode} {image.size}): {error}") from error
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"Image size must be at least 1x1 pixels, got {width}x{height}.")
    return image


__all__ = [
    "ALPHA_MODES",
    "BACKGROUND",
    "WIDE_MODES",
    "apply_exif_orientation",
    "array_to_pil",
    "as_numpy",
    "channels_last",
    "flatten_images",
    "flatten_to_rgb",
    "is_rescaled_input",
    "open_image",
    "to_rgb",
    "to_uint8_levels",
]
