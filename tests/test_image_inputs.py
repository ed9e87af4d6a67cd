"""Every PIL mode and every array / tensor dtype: the right pixels or a clear error, on both backends.

Each case is a 14x14 image, so the first view (the global one, an identity resize on both backends) holds the
input's RGB levels, normalised. The expected levels are derived here by hand from the rules of
docs/image_processing.md ("Inputs"), with NumPy or with Pillow directly (palettes, CMYK, YCbCr...), never with
`deepstack_hf`; the exact (PIL) and torch backends must both give them.
"""

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deepstack_hf import DeepStackImageProcessor, DeepStackImageProcessorFast
from deepstack_hf.image_inputs import flatten_images, to_rgb

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SIDE = 14
BACKENDS = {"exact": DeepStackImageProcessor, "torch": DeepStackImageProcessorFast}


def normalised(levels: np.ndarray) -> np.ndarray:
    """CLIP's values of 8-bit RGB levels (H, W, 3): (x / 255 in float64 -> float32 - mean) / std, as (3, H, W)."""
    values = (levels.astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((values - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def first_view(backend: str, image, **kwargs) -> np.ndarray:
    processor = BACKENDS[backend](crop_size=SIDE, patch_size=SIDE, num_crops=2)
    return np.asarray(processor(image, return_tensors="np", **kwargs)["pixel_values"][0, 0])


def grey(levels: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(levels, np.uint8)[..., None], 3, axis=-1)


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`colour` (H, W, 3) with `alpha` (H, W) over white, rounded: 255 - a + round(c * a / 255) (never a tie)."""
    a = alpha.astype(np.int64)[..., None]
    return (255 - a + np.floor(colour.astype(np.int64) * a / 255 + 0.5)).astype(np.uint8)


RNG = np.random.RandomState(0)
RGB = RNG.randint(0, 256, (SIDE, SIDE, 3)).astype(np.uint8)
ALPHA = RNG.randint(0, 256, (SIDE, SIDE)).astype(np.uint8)
ALPHA[0, :4] = [0, 255, 1, 254]
LEVELS = RNG.randint(0, 256, (SIDE, SIDE)).astype(np.uint8)
WIDE = RNG.randint(0, 65536, (SIDE, SIDE)).astype(np.int64)
WIDE[0, :2] = [0, 65535]
HUGE = RNG.randint(0, 2**31 - 1, (SIDE, SIDE)).astype(np.int64)
UNIT = RNG.rand(SIDE, SIDE, 3)
PALETTE_IMAGE = Image.fromarray(RGB).quantize(16)
PALETTE = np.asarray(PALETTE_IMAGE.getpalette(), np.uint8).reshape(-1, 3)
INDICES = np.asarray(PALETTE_IMAGE)


def _with_info(image: Image.Image, **info) -> Image.Image:
    image.info.update(info)
    return image


def _pil_reference(mode: str):
    """A mode Pillow converts itself (colour spaces, padding bytes): Pillow's own convert("RGB") is the truth."""
    image = Image.fromarray(RGB).convert(mode)
    return image, np.asarray(image.convert("RGB"))


# (input, expected RGB levels) for every PIL mode; the rule each one follows is named in its id.
PIL_CASES = {
    "1-black-white": (Image.fromarray(LEVELS > 127), grey(np.where(LEVELS > 127, 255, 0))),
    "L": (Image.fromarray(LEVELS), grey(LEVELS)),
    "P-palette": (PALETTE_IMAGE, PALETTE[INDICES]),
    "RGB": (Image.fromarray(RGB), RGB),
    "RGBA-on-white": (Image.fromarray(np.dstack([RGB, ALPHA])), on_white(RGB, ALPHA)),
    "LA-on-white": (Image.fromarray(np.dstack([LEVELS, ALPHA])), on_white(grey(LEVELS), ALPHA)),
    "P-transparency-key-on-white": (
        _with_info(PALETTE_IMAGE.copy(), transparency=int(INDICES[0, 0])),
        np.where((INDICES == INDICES[0, 0])[..., None], 255, PALETTE[INDICES]).astype(np.uint8),
    ),
    "L-transparency-key-on-white": (
        _with_info(Image.fromarray(LEVELS), transparency=int(LEVELS[0, 0])),
        grey(np.where(LEVELS == LEVELS[0, 0], 255, LEVELS)),
    ),
    "I;16-16-bit-rescaled": (Image.fromarray(WIDE.astype(np.uint16)), grey(np.floor(WIDE / 257 + 0.5))),
    "I;16-8-bit-levels-kept": (Image.fromarray(LEVELS.astype(np.uint16)), grey(LEVELS)),
    "I-16-bit-rescaled": (Image.fromarray(WIDE.astype(np.int32)), grey(np.floor(WIDE / 257 + 0.5))),
    "I-32-bit-rescaled": (Image.fromarray(HUGE.astype(np.int32)), grey(np.floor(HUGE * 255 / (2**32 - 1) + 0.5))),
    "F-unit-range-times-255": (Image.fromarray(UNIT[..., 0].astype(np.float32)),
                               grey(np.round(UNIT[..., 0].astype(np.float32).astype(np.float64) * 255))),
    "F-levels": (Image.fromarray((UNIT[..., 0] * 255).astype(np.float32)),
                 grey(np.round((UNIT[..., 0] * 255).astype(np.float32)))),
}
for _mode in ("CMYK", "YCbCr", "HSV", "LAB", "RGBX", "RGBa"):
    PIL_CASES[f"{_mode}-pillow-convert"] = _pil_reference(_mode)


def _pa_image():
    """A `PA` image: palette indices plus alpha (Pillow builds it from `P` + putalpha)."""
    image = PALETTE_IMAGE.copy().convert("PA")
    image.putalpha(Image.fromarray(ALPHA))
    return image, on_white(PALETTE[INDICES], ALPHA)


def _i16b_image():
    image = Image.frombytes("I;16B", (SIDE, SIDE), WIDE.astype(">u2").tobytes())
    return image, grey(np.floor(WIDE / 257 + 0.5))


PIL_CASES["PA-on-white"] = _pa_image()
PIL_CASES["I;16B-16-bit-rescaled"] = _i16b_image()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PIL_CASES))
def test_every_pil_mode_gives_the_rule_s_pixels(backend, name):
    image, expected = PIL_CASES[name]
    assert expected.shape == (SIDE, SIDE, 3) and expected.dtype == np.uint8
    np.testing.assert_array_equal(first_view(backend, image), normalised(expected))


def test_the_transparency_rule_on_every_colour_and_alpha():
    """All 65536 (level, alpha) pairs: alpha composited onto white exactly as the hand formula says."""
    level, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgba = np.dstack([level, 255 - level, level // 2, alpha])
    out = np.asarray(to_rgb(Image.fromarray(rgba)))
    np.testing.assert_array_equal(out, on_white(rgba[..., :3], alpha))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mode_pillow_cannot_convert_is_a_clear_error(backend):
    image = Image.fromarray(np.dstack([LEVELS, ALPHA])).convert("La")  # premultiplied LA
    with pytest.raises(ValueError, match=r"Could not decode the image \(La \(14, 14\)\): conversion from La"):
        first_view(backend, image)


# ----------------------------------------------------------------------------- arrays and tensors
def _channels_first(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


ARRAY_CASES = {
    "uint8-hwc": (RGB, RGB),
    "uint8-chw": (_channels_first(RGB), RGB),
    "uint8-grey-2d": (LEVELS, grey(LEVELS)),
    "bool": (LEVELS > 127, grey(np.where(LEVELS > 127, 255, 0))),
    "int8-levels": ((LEVELS // 2).astype(np.int8), grey(LEVELS // 2)),
    "int64-levels": (RGB.astype(np.int64), RGB),
    "uint16-16-bit": (WIDE.astype(np.uint16), grey(np.floor(WIDE / 257 + 0.5))),
    "uint16-8-bit-levels": (RGB.astype(np.uint16), RGB),
    "int32-16-bit": (WIDE.astype(np.int32), grey(np.floor(WIDE / 257 + 0.5))),
    "uint32-32-bit": (HUGE.astype(np.uint32), grey(np.floor(HUGE * 255 / (2**32 - 1) + 0.5))),
    "float16-unit": (UNIT.astype(np.float16), np.round(UNIT.astype(np.float16).astype(np.float64) * 255)),
    "float32-unit-chw": (_channels_first(UNIT.astype(np.float32)),
                         np.round(UNIT.astype(np.float32).astype(np.float64) * 255)),
    "float64-levels": (UNIT * 255, np.round(UNIT * 255)),
    "rgba-uint8-on-white": (np.dstack([RGB, ALPHA]), on_white(RGB, ALPHA)),
    "la-uint8-on-white": (np.dstack([LEVELS, ALPHA]), on_white(grey(LEVELS), ALPHA)),
    "rgba-float-unit-on-white": (
        np.dstack([RGB, ALPHA]).astype(np.float32) / 255, on_white(RGB, ALPHA)),
}


def _as(kind: str, array: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(array)) if kind == "tensor" else array


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
@pytest.mark.parametrize("name", sorted(ARRAY_CASES))
def test_every_array_dtype_gives_the_rule_s_pixels(backend, kind, name):
    array, expected = ARRAY_CASES[name]
    expected = np.asarray(expected, np.uint8)
    np.testing.assert_array_equal(first_view(backend, _as(kind, array)), normalised(expected))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors_work(backend, dtype):
    tensor = torch.from_numpy(_channels_first(UNIT)).to(dtype)  # (3, H, W) in [0, 1]
    expected = np.round(tensor.float().numpy().astype(np.float64).transpose(1, 2, 0) * 255).astype(np.uint8)
    np.testing.assert_array_equal(first_view(backend, tensor), normalised(expected))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("values, top", [(UNIT - 0.25, 1), (UNIT * 300.0, 255), (UNIT * 255.0 - 40.0, 255)],
                         ids=["unit-below-0", "levels-above-255", "levels-below-0"])
def test_floats_out_of_range_warn_with_the_range_seen_and_are_clipped(backend, values, top):
    values = values.astype(np.float32)
    seen = re.escape(f"[{values.min():g}, {values.max():g}], outside [0, {top}]")
    expected = np.round(np.clip(values.astype(np.float64), 0, top) * (255 / top)).astype(np.uint8)
    with pytest.warns(UserWarning, match=rf"Float image values lie in {seen} .*clipped to \[0, {top}\]"):
        out = first_view(backend, values)
    np.testing.assert_array_equal(out, normalised(expected))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("array, message", [
    (-RGB.astype(np.int16), r"Integer image values must not be negative, got \[-255, 0\] \(int16\)"),
    (np.full((SIDE, SIDE), 2**40, np.int64), r"Integer image values beyond 32 bits"),
    (np.full((SIDE, SIDE), np.nan, np.float32), r"Float image contains NaN or infinite values"),
    (RGB.astype(np.complex64), r"Unsupported image dtype complex64"),
    (np.zeros((SIDE, SIDE, 5), np.uint8), r"Cannot tell the channel axis|1, 2, 3 or 4 channels"),
])
def test_values_no_rule_accepts_are_clear_errors(backend, array, message):
    with pytest.raises(ValueError, match=message):
        first_view(backend, array)
    with pytest.raises(ValueError, match=message):
        first_view(backend, torch.from_numpy(array) if array.dtype != np.complex64 else array)


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(["uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool"]),
    channels=st.sampled_from([None, 1, 2, 3, 4]),
    high=st.sampled_from([1, 255, 65535]),
    seed=st.integers(0, 1000),
    tensor=st.booleans(),
    size=st.sampled_from([(SIDE, SIDE), (9, 23)]),
)
def test_property_both_backends_agree_on_any_dtype_and_channels(dtype, channels, high, seed, tensor, size):
    """Same levels for the same input whatever the dtype or channels: identical where the global view is an
    identity resize (a 14x14 image), within the resize tolerance (2 levels) elsewhere."""
    rng = np.random.RandomState(seed)
    shape = size if channels is None else (*size, channels)
    values = rng.rand(*shape) * high
    if dtype == "float16":  # 16-bit levels overflow float16 (largest finite value 65504) to infinity: refused
        values = np.minimum(values, np.finfo(np.float16).max)
    array = values > high / 2 if dtype == "bool" else values.astype(dtype)
    if tensor:
        array = torch.from_numpy(array)
    outputs = {}
    for backend, cls in BACKENDS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            outputs[backend] = np.asarray(cls(crop_size=SIDE, num_crops=4)(array, return_tensors="np")["pixel_values"])
    if size == (SIDE, SIDE):
        np.testing.assert_array_equal(outputs["exact"][:, 0], outputs["torch"][:, 0])
    assert np.abs(outputs["exact"] - outputs["torch"]).max() <= 2 / 255 / CLIP_STD.min() + 1e-6


# ----------------------------------------------------------------------------- do_rescale=False
@pytest.mark.parametrize("backend", BACKENDS)
def test_rescaled_floats_with_do_rescale_false_keep_the_normal_range_like_clip(backend):
    from transformers import CLIPImageProcessor

    floats = UNIT.astype(np.float32)  # (H, W, 3) in [0, 1]
    clip = CLIPImageProcessor(do_resize=False, do_center_crop=False, do_rescale=False, do_convert_rgb=False)
    expected = clip(floats, return_tensors="np", input_data_format="channels_last")["pixel_values"][0]
    ours = first_view(backend, floats, do_rescale=False)
    assert -2.0 < ours.min() and ours.max() < 2.2  # the normal range, not levels (up to 974)
    # ours quantises the input to 8-bit levels first: half a level apart at most
    np.testing.assert_allclose(ours, expected, atol=0.5 / 255 / CLIP_STD.min() + 1e-6)
    np.testing.assert_array_equal(ours, first_view(backend, floats))  # do_rescale makes no difference for them
    # 8-bit inputs with do_rescale=False keep their levels, as CLIP does
    levels = clip(RGB, return_tensors="np", input_data_format="channels_last")["pixel_values"][0]
    np.testing.assert_allclose(first_view(backend, RGB, do_rescale=False), levels, rtol=1e-6)


# ----------------------------------------------------------------------------- structure
def test_flatten_images_lists_single_images_in_order():
    a, b, c = (Image.new("RGB", (2, 2), (value, 0, 0)) for value in (1, 2, 3))
    batch = np.zeros((2, 5, 6, 3), np.uint8)
    assert flatten_images(a) == [a]
    assert flatten_images([[a, b], [], [c]]) == [a, b, c]  # one list per prompt, an empty one included
    assert flatten_images(([], [[]])) == []
    flat = flatten_images([a, batch, torch.zeros(4, 4)])
    assert flat[0] is a and [item.shape for item in flat[1:]] == [(5, 6, 3), (5, 6, 3), (4, 4)]
    with pytest.raises(ValueError, match=r"2, 3 or 4 \(batch\) dimensions, got shape \(1, 1, 1, 1, 1\)"):
        flatten_images([np.zeros((1, 1, 1, 1, 1))])
    with pytest.raises(ValueError, match="Unsupported image type int"):
        flatten_images([a, 3])
