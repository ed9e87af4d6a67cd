"""Image processor for DeepStack-L and DeepStack-L-HD: the exact PIL / NumPy path (CPU).

For every image it emits the 336-pixel views of docs/design.md ("Views"), in the original order:

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
:meth:`~DeepStackImageProcessingMixin.get_image_grid`), the view plan, token counts and input handling (the rules
that turn any input into 8-bit RGB live in :mod:`.image_inputs`); ``image_processing_deepstack_fast`` is the torch
backend.
"""

from functools import lru_cache

import numpy as np
import torch
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
    is_valid_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

from .grid_layout import image_grid, max_num_views, num_image_tokens, num_views, view_plan
from .image_inputs import flatten_images, is_rescaled_input, open_image, to_rgb


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
    pad_to_max_views (`bool`, *optional*, defaults to `self.pad_to_max_views`, `False`):
        With `do_pad`, zero-pad the view axis of `pixel_values` to the most views any image can get under the
        call's `num_crops` and `hd_layout` ([`~deepstack_hf.grid_layout.max_num_views`]: 5 plain and 25 HD for
        `num_crops=4`) instead of to the batch's largest view count, so that inputs processed separately (a
        pipeline's or a data loader's samples) stack into one batch whatever their crop grids.
        [`DeepStackProcessor`] asks for it; the image processor alone pads to the batch, as LLaVA-NeXT's does.
    """

    num_crops: int | None
    hd_layout: bool | None
    patch_size: int | None
    square_grid: bool | None
    pad_to_max_views: bool | None


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
    """What the PIL and torch backends share: defaults, settings checks, the crop grid, token counts, the cutting
    of views out of stretches (:meth:`block_order`), the padded view count and input handling. The grid of an image
    is chosen in :meth:`get_image_grid` only; its views follow :func:`~deepstack_hf.grid_layout.view_plan`."""

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
    pad_to_max_views = False

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
        """Crop grid ``(grid_width, grid_height)`` for an image of this size: LLaVA-NeXT's best-fit rule, or the
        square grid with ``square_grid`` (:func:`~deepstack_hf.grid_layout.image_grid`; docs/design.md, "The crop
        grid")."""
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

    @staticmethod
    def padded_view_count(view_counts: list[int], num_crops: int, hd_layout: bool, pad_to_max_views: bool) -> int:
        """Length of the view axis of padded ``pixel_values``: the batch's largest view count, or with
        ``pad_to_max_views`` the most views any image can get under these settings
        ([`~deepstack_hf.grid_layout.max_num_views`])."""
        if pad_to_max_views:
            return max_num_views(int(num_crops), bool(hd_layout))
        return max(view_counts)

    @staticmethod
    def block_order(pixels, crop: int, block: int):
        """Crops of channels-last stretches ``(..., rows*S, cols*S, C)`` as ``(..., rows/b, cols/b, b, b, C, S, S)``.

        Row-major blocks, row-major crops inside a block, channel-first crops: flattening the four axes after the
        leading ones lists the views in order. A view of ``pixels`` (NumPy array or torch tensor), nothing is
        copied.
        """
        *lead, height, width, channels = pixels.shape
        rows, cols = height // (crop * block), width // (crop * block)
        tiles = pixels.reshape(*lead, rows, block, crop, cols, block, crop, channels)
        order = tuple(range(len(lead))) + tuple(len(lead) + axis for axis in (0, 3, 1, 4, 6, 2, 5))
        return tiles.permute(order) if hasattr(tiles, "permute") else tiles.transpose(order)

    # ------------------------------------------------------------------ input handling
    def fetch_images(self, image_url_or_urls):
        """Open paths, URLs and base64 strings (lazily, orientation and mode untouched); other inputs pass."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str):
            try:
                return open_image(image_url_or_urls)
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
        flat = flatten_images(images)
        if not flat:
            raise ValueError("No images were given.")
        return flat

    @staticmethod
    def normalisers(rescaled_inputs, do_rescale, rescale_factor, do_normalize, mean, std) -> list:
        """Each image's normaliser: ``do_rescale`` / ``rescale_factor`` as given, except that with
        ``do_rescale=False`` an input that already holds rescaled values ([`is_rescaled_input`]: floats in
        [0, 1], read as levels ``round(255 x)``) gets its levels divided by 255 back to the values given, as
        Transformers' CLIP processor keeps them."""
        given = _normaliser(bool(do_rescale), float(rescale_factor or 0.0), bool(do_normalize), mean, std)
        rescaled = given if do_rescale else _normaliser(True, 1 / 255, bool(do_normalize), mean, std)
        return [rescaled if flag else given for flag in rescaled_inputs]

    def _preprocess_image_like_inputs(self, images: ImageInput, *args, **kwargs) -> BatchFeature:
        images = self._prepare_images_structure(images)
        return self._preprocess(images, *args, rescaled_inputs=[is_rescaled_input(image) for image in images], **kwargs)


class DeepStackImageProcessor(DeepStackImageProcessingMixin, PilBackend):
    r"""
    Constructs a DeepStack image processor (PIL / NumPy backend, the exact one; `use_fast=True` gives the torch
    backend, [`DeepStackImageProcessorFast`]).

    Returns a `BatchFeature` with:

    - `pixel_values`: float32 `(num_images, max_views, 3, S, S)`; each image's views in the original order
      (see the module docstring), then zero views up to the batch's largest view count (with
      `pad_to_max_views=True`: up to the most views any image can get under these settings). With `do_pad=False`
      a list of `(num_views, 3, S, S)` arrays instead.
    - `image_sizes`: int64 `(num_images, 2)`, each image's `(height, width)` (after EXIF orientation).
    - `num_image_tokens`: int64 `(num_images,)`, the visual tokens each image occupies in the prompt, from the
      crop grid its views were cut with (what the processor expands each `<image>` marker to).

    Inputs may be PIL images of any mode, NumPy arrays or torch tensors of any real dtype (`(H, W)`, `(H, W, C)`
    or `(C, H, W)` with `C` in 1, 2, 3, 4), paths, URLs (bounded downloads, `media_fetch`) or base64 strings,
    single, in a list or nested one list per prompt. Each becomes an upright 8-bit RGB image by the rules of
    [`deepstack_hf.image_inputs`] (docs/image_processing.md, "Inputs"): EXIF orientation applied; alpha and
    transparency keys composited onto white (vLLM's rule; the original drops alpha); 16- and 32-bit integers
    rescaled to 8 bits (the original clips them); floats with a maximum of at most 1 read as [0, 1] values
    (never rescaled twice: with `do_rescale=False` their views hold the values given), other floats as [0, 255]
    levels, out-of-range floats clipped with a warning. Unreadable, corrupt or unacceptable inputs raise
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
        patch_size (`int`, *optional*, defaults to 14), square_grid (`bool`, *optional*, defaults to `False`),
        pad_to_max_views (`bool`, *optional*, defaults to `False`):
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
            tiles = self.block_order(pixels, crop, block)
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
        pad_to_max_views: bool | None = None,
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        rescaled_inputs: list[bool] | None = None,
        **kwargs,
    ) -> BatchFeature:
        crop = self._check_settings(crop_size, num_crops)
        mean, std = self._check_normalisation(do_normalize, image_mean, image_std)
        rescaled_inputs = rescaled_inputs or [False] * len(images)
        normalisers = self.normalisers(rescaled_inputs, do_rescale, rescale_factor, do_normalize, mean, std)
        resample = PILImageResampling(resample) if resample is not None else PILImageResampling.BICUBIC

        rgb_images = [to_rgb(image, input_data_format, do_convert_rgb is not False) for image in images]
        sizes = [(rgb.height, rgb.width) for rgb in rgb_images]
        grids = self.image_grids(sizes, num_crops, square_grid, crop)
        plans = [view_plan(grids[size], int(num_crops), bool(hd_layout)) for size in sizes]
        counts = [sum(cols * rows for cols, rows, _ in plan) for plan in plans]
        if do_pad is not False:
            padded = self.padded_view_count(counts, num_crops, hd_layout, pad_to_max_views)
            pixel_values = np.zeros((len(rgb_images), padded, 3, crop, crop), dtype=np.float32)
            outputs = [pixel_values[index, :count] for index, count in enumerate(counts)]
        else:
            pixel_values = outputs = [np.empty((count, 3, crop, crop), dtype=np.float32) for count in counts]
        for rgb, plan, out, normalise in zip(rgb_images, plans, outputs, normalisers, strict=True):
            self.write_views(rgb, out, plan, crop, resample, normalise)

        data = {
            "pixel_values": pixel_values,
            "image_sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
            "num_image_tokens": self.token_counts(sizes, grids, hd_layout, crop, patch_size or self.patch_size),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["DeepStackImageProcessor", "DeepStackImageProcessorKwargs", "DeepStackImageProcessingMixin"]
