"""DeepStackImageProcessor against an independent re-implementation of the original's preprocessing
(docs/design.md, "The crop grid" and "Views").

The reference below is written from that text only (candidate grids, LLaVA-NeXT best-fit rule, plain
``PIL.Image.resize`` stretches with Pillow's default filter, row-major crops, CLIP rescale/normalise) and does
not import anything from ``deepstack_hf``.
"""

import base64
import io
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import deepstack_hf
from deepstack_hf import DeepStackImageProcessor
from deepstack_hf.grid_layout import num_views, select_best_grid, view_plan
from deepstack_hf import image_inputs

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


# ----------------------------------------------------------------------------- independent reference
def ref_best_grid_at(width, height, num_crops, crop):
    candidates = [(w, h) for w in range(1, num_crops + 1) for h in range(1, num_crops // w + 1) if (w, h) != (1, 1)]
    best, best_eff, best_waste = None, -1, None
    for w, h in candidates:
        cw, ch = w * crop, h * crop
        s = min(cw / width, ch / height)
        eff = min(int(width * s) * int(height * s), width * height)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (w, h), eff, waste
    return best


def ref_cut(image, crop):
    """Row-major crops of a PIL image whose sides are multiples of ``crop``."""
    width, height = image.size
    return [
        image.crop((x, y, x + crop, y + crop)) for y in range(0, height, crop) for x in range(0, width, crop)
    ]


def ref_views(image, num_crops=4, hd=False, crop=336):
    image = image.convert("RGB")
    w, h = ref_best_grid_at(image.width, image.height, num_crops, crop)
    canvas = (w * crop, h * crop)
    views = [image.resize((crop, crop))] + ref_cut(image.resize(canvas), crop)
    if hd:
        u = int(math.sqrt(num_crops))
        views += ref_cut(image.resize((crop * u, crop * u)), crop)
        big = image.resize((canvas[0] * u, canvas[1] * u))
        for i in range(h):
            for j in range(w):
                for a in range(u):
                    for b in range(u):
                        x, y = (j * u + b) * crop, (i * u + a) * crop
                        views.append(big.crop((x, y, x + crop, y + crop)))
    return views


def ref_pixels(views, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, mean=CLIP_MEAN, std=CLIP_STD):
    """CLIP's rescale and normalisation of every view, as transformers 4.39 computed them."""
    out = []
    for view in views:
        x = np.asarray(view)
        x = (x * rescale_factor).astype(np.float32) if do_rescale else x.astype(np.float32)  # float64 product
        if do_normalize:
            x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        out.append(x.transpose(2, 0, 1))
    return np.stack(out)


def noise_image(width, height, seed=0, mode="RGB"):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


# ----------------------------------------------------------------------------- grids and counts
GRID_TABLE = [
    ((40, 25), (1, 2)),  # docs/design.md's example: every candidate keeps all 1000 pixels, (1,2) and (2,1) tie on waste
    ((336, 336), (1, 2)),  # tie between (1, 2) and (2, 1): candidate order wins
    ((100, 100), (1, 2)),
    ((1000, 500), (2, 1)),
    ((500, 1000), (1, 2)),
    ((2000, 2000), (2, 2)),
    ((672, 672), (2, 2)),
    ((1344, 336), (4, 1)),
    ((336, 1344), (1, 4)),
    ((1008, 336), (3, 1)),
    ((200, 1), (1, 2)),  # every candidate keeps all 200 pixels: tie on waste, candidate order -> tall canvas
    ((4000, 20), (4, 1)),
    ((20, 4000), (1, 4)),
]


@pytest.mark.parametrize("size, grid", GRID_TABLE)
def test_best_grid_table(size, grid):
    assert ref_best_grid_at(*size, 4, 336) == grid
    assert select_best_grid(*size, 4, 336) == grid
    processor = DeepStackImageProcessor()
    assert processor.get_image_grid(size[1], size[0]) == grid


@pytest.mark.parametrize(
    "grid, hd_tokens",
    [((1, 2), 576 + 48 * 25), ((2, 1), 576 + 24 * 49), ((2, 2), 576 + 48 * 49), ((4, 1), 576 + 24 * 97)],
)
def test_token_counts(grid, hd_tokens):
    w, h = grid
    size = {(1, 2): (500, 1000), (2, 1): (1000, 500), (2, 2): (2000, 2000), (4, 1): (1344, 336)}[grid]
    plain, hd = DeepStackImageProcessor(), DeepStackImageProcessor(hd_layout=True)
    width, height = size
    assert plain.get_number_of_image_tokens(height, width) == 576
    assert hd.get_number_of_image_tokens(height, width) == hd_tokens == 576 + 24 * h * (24 * w + 1)
    assert plain.get_num_views(height, width) == 1 + w * h
    assert hd.get_num_views(height, width) == (1 + w * h) * 5


# ----------------------------------------------------------------------------- pixels vs reference
@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("size", [(40, 25), (336, 336), (1, 1), (200, 1), (1, 200), (337, 500), (90, 31)])
def test_pixels_match_reference_small_crop(size, hd):
    image = noise_image(*size, seed=size[0] * 7 + size[1])
    processor = DeepStackImageProcessor(crop_size=56, hd_layout=hd)
    out = processor(image, return_tensors="np")
    expected = ref_pixels(ref_views(image, hd=hd, crop=56))
    assert out["pixel_values"].dtype == np.float32
    assert out["pixel_values"].shape == (1,) + expected.shape
    np.testing.assert_array_equal(out["pixel_values"][0], expected)
    assert out["image_sizes"].tolist() == [[size[1], size[0]]]


@pytest.mark.parametrize("hd, size", [(False, (500, 375)), (True, (640, 480)), (True, (40, 25))])
def test_pixels_match_reference_full_size(size, hd):
    image = noise_image(*size, seed=3)
    out = DeepStackImageProcessor(hd_layout=hd)(image, return_tensors="pt")
    expected = ref_pixels(ref_views(image, hd=hd))
    assert out["pixel_values"].dtype == torch.float32
    np.testing.assert_array_equal(out["pixel_values"][0].numpy(), expected)


def quadrant_image(colors, side=672):
    """A ``side x side`` image made of four solid quadrants (top-left, top-right, bottom-left, bottom-right)."""
    array = np.zeros((side, side, 3), dtype=np.uint8)
    half = side // 2
    array[:half, :half], array[:half, half:], array[half:, :half], array[half:, half:] = colors
    return Image.fromarray(array)


def normalised(color):
    return ((np.array(color, dtype=np.float64) / 255).astype(np.float32) - CLIP_MEAN) / CLIP_STD


@pytest.mark.parametrize("hd", [False, True])
def test_hand_computed_quadrants(hd):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image = quadrant_image(colors)  # 672x672 -> grid (2, 2), canvas = the image itself
    pixel_values = DeepStackImageProcessor(hd_layout=hd)(image, return_tensors="np")["pixel_values"][0]
    assert pixel_values.shape == ((25 if hd else 5), 3, 336, 336)
    # global view: each quadrant shrunk to 168x168, its interior keeps the colour
    for index, (ys, xs) in enumerate([(40, 40), (40, 300), (300, 40), (300, 300)]):
        np.testing.assert_allclose(pixel_values[0, :, ys, xs], normalised(colors[index]), atol=1e-6)
    # grid crops: exactly the four quadrants, row-major
    for index in range(4):
        expected = np.broadcast_to(normalised(colors[index])[:, None, None], (3, 336, 336))
        np.testing.assert_array_equal(pixel_values[1 + index], expected)
    if hd:
        # the 672x672 stretch is the image itself: its four crops are the quadrants again
        for index in range(4):
            np.testing.assert_array_equal(pixel_values[5 + index], pixel_values[1 + index])
        # then, per grid cell (row-major), its four sub-crops of the 1344x1344 stretch: all inside that cell,
        # so far from the cell's borders they have the cell's colour
        for cell in range(4):
            for sub in range(4):
                view = pixel_values[9 + 4 * cell + sub]
                # keep 296+ pixels away from the quadrant borders (at 672 in the 1344 stretch)
                cell_row, cell_col = divmod(cell, 2)
                ys = slice(0, 40) if cell_row == 0 else slice(296, 336)
                xs = slice(0, 40) if cell_col == 0 else slice(296, 336)
                patch = view[:, ys, xs]
                np.testing.assert_allclose(
                    patch, np.broadcast_to(normalised(colors[cell])[:, None, None], patch.shape), atol=1e-6
                )


def test_hd_sub_crop_order_on_grid_2_1():
    # 1000x500 -> grid (2, 1): views = global, 2 crops, 4 crops of 672x672, then 2 cells x 4 sub-crops
    image = noise_image(1000, 500, seed=5)
    pixel_values = DeepStackImageProcessor(hd_layout=True)(image, return_tensors="np")["pixel_values"][0]
    assert pixel_values.shape[0] == 3 * 5
    big = image.resize((2 * 672, 672))  # twice the (672, 336) canvas
    for cell in range(2):
        for sub in range(4):
            a, b = divmod(sub, 2)
            x, y = (cell * 2 + b) * 336, a * 336
            expected = ref_pixels([big.crop((x, y, x + 336, y + 336))])[0]
            np.testing.assert_array_equal(pixel_values[7 + 4 * cell + sub], expected)


# ----------------------------------------------------------------------------- batching and inputs
def test_batch_padding_and_image_sizes():
    images = [noise_image(40, 25, 1), noise_image(672, 672, 2), noise_image(1344, 336, 3)]
    out = DeepStackImageProcessor(crop_size=56)(images, return_tensors="pt")
    assert out["pixel_values"].shape == (3, 5, 3, 56, 56)
    assert out["image_sizes"].dtype == torch.int64
    assert out["image_sizes"].tolist() == [[25, 40], [672, 672], [336, 1344]]
    assert torch.count_nonzero(out["pixel_values"][0, 3:]) == 0  # (1, 2) grid: 3 views, then zeros
    np.testing.assert_array_equal(out["pixel_values"][0, :3].numpy(), ref_pixels(ref_views(images[0], crop=56)))
    unpadded = DeepStackImageProcessor(crop_size=56, do_pad=False)(images)["pixel_values"]
    assert [len(values) for values in unpadded] == [3, 5, 5]


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "RGBX", "YCbCr"])
def test_pil_modes_convert_like_the_original_within_8_bits_and_opaque(mode):
    """Opaque images whose values fit 8 bits: every mode gives the original's `convert("RGB")` pixels. (Alpha and
    wider values follow this port's rules: tests/test_image_inputs.py.)"""
    base = noise_image(50, 30, seed=11)
    image = base.convert("L").convert(mode) if mode in ("I", "F", "I;16") else base.convert(mode)
    out = DeepStackImageProcessor(crop_size=28)(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(out, ref_pixels(ref_views(image.convert("RGB"), crop=28)))


def test_array_and_tensor_inputs_match_pil():
    image = noise_image(45, 30, seed=4)
    array = np.array(image)
    processor = DeepStackImageProcessor(crop_size=28)
    expected = processor(image)["pixel_values"]
    np.testing.assert_array_equal(processor(array)["pixel_values"], expected)  # HWC uint8
    np.testing.assert_array_equal(processor(torch.from_numpy(array).permute(2, 0, 1))["pixel_values"], expected)
    floats = torch.from_numpy(array).permute(2, 0, 1).float() / 255  # ToTensor-style CHW floats in [0, 1]
    np.testing.assert_array_equal(processor(floats)["pixel_values"], expected)
    np.testing.assert_array_equal(processor(array.astype(np.float32))["pixel_values"], expected)  # [0, 255]
    grey = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(
        processor(grey)["pixel_values"], processor(Image.fromarray(grey))["pixel_values"]
    )
    rgba = np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(processor(rgba)["pixel_values"], expected)  # opaque alpha changes nothing
    batch = np.stack([array, array])
    assert processor(batch)["pixel_values"].shape[0] == 2


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_and_truncated_images_raise_value_error(tmp_path):
    data = png_bytes(noise_image(64, 64, seed=9))
    truncated = Image.open(io.BytesIO(data[: len(data) // 2]))
    processor = DeepStackImageProcessor(crop_size=28)
    with pytest.raises(ValueError, match="decode"):
        processor(truncated)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(ValueError):
        processor(str(garbage))
    good = tmp_path / "good.png"
    good.write_bytes(data)
    np.testing.assert_array_equal(
        processor(str(good))["pixel_values"], processor(Image.open(io.BytesIO(data)))["pixel_values"]
    )


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 5, 3), np.uint8),
        np.full((5, 5, 3), np.inf, np.float32),
        np.full((5, 5), -1, np.int32),
        np.zeros((5, 5, 3, 2, 2)),
        np.zeros((5, 5, 7), np.uint8),
        "not an image object",
    ],
)
def test_invalid_inputs_raise_value_error(bad):
    with pytest.raises(ValueError):
        DeepStackImageProcessor(crop_size=28)(bad)


def test_invalid_settings():
    with pytest.raises(ValueError):
        DeepStackImageProcessor(num_crops=1)
    with pytest.raises(ValueError):
        DeepStackImageProcessor(crop_size={"height": 336, "width": 224})


def test_save_load_and_auto(tmp_path):
    from deepstack_hf._compat import AutoImageProcessor  # 5.17's top-level one is a placeholder without torchvision

    processor = DeepStackImageProcessor(crop_size=56, num_crops=9, hd_layout=True, patch_size=14)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DeepStackImageProcessor
    assert (loaded.num_crops, loaded.hd_layout, loaded.patch_size, loaded.crop_size.height) == (9, True, 14, 56)
    assert loaded.resample == 3
    image = noise_image(70, 20, seed=1)
    np.testing.assert_array_equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])
    np.testing.assert_array_equal(
        loaded(image)["pixel_values"][0], ref_pixels(ref_views(image, num_crops=9, hd=True, crop=56))
    )
    assert deepstack_hf.DeepStackImageProcessor is DeepStackImageProcessor


# ----------------------------------------------------------------------------- properties
MODES = ["RGB", "L", "LA", "P", "RGBA", "CMYK", "1", "I;16"]


@st.composite
def sizes(draw):
    short = draw(st.integers(1, 12))
    ratio = draw(st.floats(1.0, 200.0))
    long_side = max(1, min(2400, int(short * ratio)))
    return (long_side, short) if draw(st.booleans()) else (short, long_side)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes(), mode=st.sampled_from(MODES), hd=st.booleans(), num_crops=st.sampled_from([2, 4, 6, 9]))
def test_property_shapes_follow_grid_layout(size, mode, hd, num_crops):
    width, height = size
    image = Image.new("RGB", size, (width % 256, height % 256, 77)).convert(mode)
    processor = DeepStackImageProcessor(crop_size=14, patch_size=14, num_crops=num_crops, hd_layout=hd)
    try:
        out = processor([image, image.transpose(Image.Transpose.TRANSPOSE)], return_tensors="np")
    except ValueError:
        return
    grid_a = select_best_grid(width, height, num_crops, 14)
    grid_b = select_best_grid(height, width, num_crops, 14)
    assert grid_a == ref_best_grid_at(width, height, num_crops, 14)
    views = [num_views(grid_a, num_crops, hd), num_views(grid_b, num_crops, hd)]
    assert out["pixel_values"].shape == (2, max(views), 3, 14, 14)
    assert out["image_sizes"].tolist() == [[height, width], [width, height]]
    assert np.isfinite(out["pixel_values"]).all()
    for index, count in enumerate(views):
        assert not np.any(out["pixel_values"][index, count:])


def smooth_image(width, height, seed=0, mode="RGB"):
    """Gradients plus mild noise: photo-like content, where resize filters behave as on real images."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [128 + 90 * np.sin(x / (7.0 + c) + y / (11.0 + 2 * c)) + rng.normal(0, 10, (height, width)) for c in range(3)]
    return Image.fromarray(np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)).convert(mode)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=sizes(),
    mode=st.sampled_from(MODES + ["RGBX", "YCbCr", "F", "I"]),
    hd=st.booleans(),
    num_crops=st.sampled_from([2, 4, 5, 9]),
    seed=st.integers(0, 10),
)
def test_property_pixels_match_reference(size, mode, hd, num_crops, seed):
    """Bit-exact against the view-by-view reference, on any size, mode, layout and crop count (14-pixel views)."""
    image = noise_image(*size, seed=seed).convert("L" if mode in ("F", "I") else "RGB").convert(mode)
    out = DeepStackImageProcessor(crop_size=14, num_crops=num_crops, hd_layout=hd)(image, return_tensors="np")
    expected = ref_pixels(ref_views(image, num_crops=num_crops, hd=hd, crop=14))
    np.testing.assert_array_equal(out["pixel_values"][0], expected)


@pytest.mark.parametrize("size", [(2000, 1), (1, 2000), (3, 700), (1500, 7), (4000, 3)])
@pytest.mark.parametrize("hd", [False, True])
def test_extreme_aspect_ratios_match_reference(size, hd):
    image = smooth_image(*size, seed=sum(size))
    out = DeepStackImageProcessor(crop_size=28, hd_layout=hd)(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(out, ref_pixels(ref_views(image, hd=hd, crop=28)))


@pytest.mark.parametrize(
    "settings_",
    [
        {"do_rescale": False},
        {"do_normalize": False},
        {"do_rescale": False, "do_normalize": False},
        {"image_mean": [0.5], "image_std": [0.25]},
        {"rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]},
        {"rescale_factor": 0.003},  # no float32 product or quotient gives the float64 result: lookup table
        {"rescale_factor": 0.5, "image_mean": [0.1, 0.2, 0.3], "image_std": [3.0, 0.7, 0.9]},
    ],
)
def test_normalisation_settings_match_reference(settings_):
    image = smooth_image(90, 50, seed=3)
    reference = {
        "do_rescale": settings_.get("do_rescale", True),
        "rescale_factor": settings_.get("rescale_factor", 1 / 255),
        "do_normalize": settings_.get("do_normalize", True),
        "mean": settings_.get("image_mean", CLIP_MEAN),
        "std": settings_.get("image_std", CLIP_STD),
    }
    for hd in (False, True):
        out = DeepStackImageProcessor(crop_size=28, hd_layout=hd, **settings_)(image)["pixel_values"][0]
        np.testing.assert_array_equal(out, ref_pixels(ref_views(image, hd=hd, crop=28), **reference))
        # and per call, on a processor built with the defaults
        out = DeepStackImageProcessor(crop_size=28, hd_layout=hd)(image, **settings_)["pixel_values"][0]
        np.testing.assert_array_equal(out, ref_pixels(ref_views(image, hd=hd, crop=28), **reference))


def test_every_level_of_every_channel_matches_reference():
    """The rescale/normalisation depends on (channel, byte) only: one image holding all 256 levels per channel."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    block = np.stack([levels, levels.T, levels[::-1]], axis=-1)
    image = Image.fromarray(np.concatenate([block, block[::-1, ::-1]]))  # 16x32: grid (1, 2), canvas = the image
    out = DeepStackImageProcessor(crop_size=16, patch_size=16, num_crops=2)(image)["pixel_values"][0]
    for channel in range(3):  # the two crops hold every level of every channel
        recovered = np.rint((out[1:, channel] * CLIP_STD[channel] + CLIP_MEAN[channel]) * 255)
        assert set(recovered.ravel().tolist()) == set(range(256))
    np.testing.assert_array_equal(out, ref_pixels(ref_views(image, num_crops=2, crop=16)))


def test_view_plan_counts_views():
    for grid in [(1, 2), (2, 1), (2, 2), (3, 1), (1, 4), (3, 3)]:
        for num_crops in (4, 9):
            for hd in (False, True):
                plan = view_plan(grid, num_crops, hd)
                assert sum(cols * rows for cols, rows, _ in plan) == num_views(grid, num_crops, hd)


# ----------------------------------------------------------------------------- view padding
# The most views an image can get, by hand (docs/design.md, "Views"): the largest grid has num_crops crops, so
# 1 + num_crops plain views, and HD (u = isqrt(num_crops)) each of those with its u*u sub-crops.
MOST_VIEWS = {(4, False): 1 + 4, (4, True): (1 + 4) * (1 + 4), (9, False): 1 + 9, (9, True): (1 + 9) * (1 + 9)}


def as_float32_bits(values) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32)).view(np.uint32)


@pytest.mark.parametrize("backend", ["exact", "torch"])
@pytest.mark.parametrize("return_tensors", ["np", "pt"])
@pytest.mark.parametrize("num_crops, hd", sorted(MOST_VIEWS))
def test_pad_to_max_views_appends_zero_views_up_to_the_settings_most(backend, return_tensors, num_crops, hd):
    from deepstack_hf import DeepStackImageProcessorFast

    cls = DeepStackImageProcessor if backend == "exact" else DeepStackImageProcessorFast
    processor = cls(crop_size=14, patch_size=14, num_crops=num_crops, hd_layout=hd)
    images = [Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))
              for seed, (w, h) in enumerate([(20, 12), (12, 20), (40, 9)])]
    own = [np.asarray(views) for views in processor(images, do_pad=False)["pixel_values"]]  # each image's views
    most = MOST_VIEWS[num_crops, hd]
    assert max(len(views) for views in own) < most  # small images: small grids, so the padding shows
    expected = np.stack([np.concatenate([views, np.zeros((most - len(views), *views.shape[1:]), np.float32)])
                         for views in own])

    padded = processor(images, pad_to_max_views=True, return_tensors=return_tensors)["pixel_values"]
    assert isinstance(padded, np.ndarray if return_tensors == "np" else torch.Tensor)
    np.testing.assert_array_equal(as_float32_bits(padded), as_float32_bits(expected))
    # by default, as LLaVA-NeXT's image processor: up to the batch's largest view count
    batch = processor(images, return_tensors=return_tensors)["pixel_values"]
    np.testing.assert_array_equal(as_float32_bits(batch), as_float32_bits(expected[:, : max(map(len, own))]))
    # do_pad=False pads nothing
    unpadded = processor(images, do_pad=False, pad_to_max_views=True)["pixel_values"]
    assert [np.asarray(views).shape for views in unpadded] == [views.shape for views in own]


# ----------------------------------------------------------------------------- EXIF orientation and wide modes
def exif_jpeg(path, orientation):
    """A 60x30 JPEG whose left half is red and right half blue, tagged with an EXIF orientation."""
    array = np.zeros((30, 60, 3), np.uint8)
    array[:, :30] = (255, 0, 0)
    array[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_applied_alike_to_paths_urls_base64_and_opened_images(tmp_path, monkeypatch):
    """Orientation 6 (stored sideways, shown rotated 90 degrees clockwise): every route sees the upright 30x60."""
    path = exif_jpeg(tmp_path / "rotated.jpg", orientation=6)
    processor = DeepStackImageProcessor(crop_size=14)
    upright = Image.open(path).transpose(Image.Transpose.ROTATE_270)  # what orientation 6 means, by hand
    assert upright.size == (30, 60)
    expected = ref_pixels(ref_views(upright, crop=14))

    monkeypatch.setattr(image_inputs, "fetch_url", lambda url: path.read_bytes())
    routes = {
        "path": str(path),
        "opened": Image.open(path),
        "url": "https://example.com/rotated.jpg",
        "base64": base64.b64encode(path.read_bytes()).decode(),
    }
    for route, image in routes.items():
        out = processor(image)
        assert out["image_sizes"].tolist() == [[60, 30]], route
        np.testing.assert_array_equal(out["pixel_values"][0], expected, err_msg=route)
    # an image already turned upright is not turned again
    np.testing.assert_array_equal(processor(ImageOps.exif_transpose(Image.open(path)))["pixel_values"][0], expected)
    # orientation 1 leaves the stored pixels alone
    plain = exif_jpeg(tmp_path / "plain.jpg", orientation=1)
    assert processor(str(plain))["image_sizes"].tolist() == [[30, 60]]


def test_unreachable_url_is_a_value_error():
    with pytest.raises(ValueError, match="Could not download"):
        DeepStackImageProcessor(crop_size=14)("http://127.0.0.1:1/x.jpg")  # nothing listens on port 1


def test_wide_images_within_8_bit_range_do_not_warn():
    images = [
        Image.fromarray(np.arange(200, dtype=np.uint16).reshape(10, 20)),  # I;16 holding 8-bit levels
        Image.fromarray(np.linspace(0, 255, 200, dtype=np.float32).reshape(10, 20)),
        noise_image(20, 10).convert("L").convert("I"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepStackImageProcessor(crop_size=14)(images)
