"""DeepStackImageProcessorFast (torch backend) against the exact PIL path.

Stated tolerance: every value within two 8-bit levels of the exact path (``2 / (255 * std_c)`` after CLIP's
normalisation, 0.030 at most) and at most 2 % of the values different at all; views, grids, token counts,
image sizes and zero padding identical. The exact path is itself tested bit for bit against an independent
reference (test_image_processing_deepstack.py).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from deepstack_hf import DeepStackImageProcessor, DeepStackImageProcessorFast
from deepstack_hf import image_processing_deepstack_fast as fast_module

CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
LEVELS = 2  # the stated tolerance, in 8-bit levels
MAX_DIFFERENT = 0.02  # share of values that may differ at all


def noise_image(width, height, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))


def smooth_image(width, height, seed=0):
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [128 + 90 * np.sin(x / (7.0 + c) + y / (11.0 + 2 * c)) + rng.normal(0, 10, (height, width)) for c in range(3)]
    return Image.fromarray(np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8))


def assert_within_tolerance(fast, exact, std=CLIP_STD):
    fast, exact = np.asarray(fast), np.asarray(exact)
    assert fast.shape == exact.shape and fast.dtype == exact.dtype == np.float32
    levels = np.abs(fast - exact) * 255 * std.reshape(3, 1, 1)
    assert levels.max() <= LEVELS + 1e-3, f"max difference {levels.max():.3f} levels"
    assert (levels > 1e-3).mean() <= MAX_DIFFERENT, f"{(levels > 1e-3).mean():.4f} of the values differ"


def both(images, **kwargs):
    exact = DeepStackImageProcessor(**kwargs)(images, return_tensors="pt")
    fast = DeepStackImageProcessorFast(**kwargs)(images, return_tensors="pt")
    return exact, fast


CASES = [
    ((1000, 667), 56, 4),
    ((320, 240), 56, 4),
    ((40, 25), 28, 4),
    ((3, 300), 28, 4),
    ((700, 2), 28, 4),
    ((1, 1), 28, 4),
    ((500, 90), 28, 9),
    ((90, 500), 42, 6),
]


@pytest.mark.parametrize("make", [noise_image, smooth_image])
@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("size, crop, num_crops", CASES)
def test_pixels_within_tolerance_and_layout_identical(size, crop, num_crops, hd, make):
    image = make(*size, seed=size[0] + size[1])
    exact, fast = both(image, crop_size=crop, num_crops=num_crops, hd_layout=hd)
    assert fast["image_sizes"].tolist() == exact["image_sizes"].tolist() == [[size[1], size[0]]]
    assert fast["image_sizes"].dtype == torch.int64
    processor = DeepStackImageProcessorFast(crop_size=crop, num_crops=num_crops, hd_layout=hd, patch_size=14)
    assert fast["pixel_values"].shape[1] == processor.get_num_views(size[1], size[0])
    assert_within_tolerance(fast["pixel_values"][0], exact["pixel_values"][0])


def test_full_size_photo_like_image_hd():
    exact, fast = both(smooth_image(1000, 667, seed=1), hd_layout=True)
    assert fast["pixel_values"].shape == (1, 25, 3, 336, 336)
    assert_within_tolerance(fast["pixel_values"][0], exact["pixel_values"][0])


def test_float_kernels_used_off_cpu_stay_within_tolerance(monkeypatch):
    """Off CPU (CUDA) the passes run in float32, rounded and clipped to uint8 after each: run that path here."""
    monkeypatch.setattr(fast_module, "uint8_kernels", lambda device: False)
    for size, crop, num_crops in CASES:
        image = noise_image(*size, seed=7)
        exact, fast = both(image, crop_size=crop, num_crops=num_crops, hd_layout=True)
        assert_within_tolerance(fast["pixel_values"][0], exact["pixel_values"][0])


def test_batch_padding_grids_and_token_counts_identical():
    images = [noise_image(40, 25, 1), noise_image(672, 672, 2), noise_image(1344, 336, 3), noise_image(40, 25, 4)]
    for hd in (False, True):
        exact, fast = both(images, crop_size=56, hd_layout=hd)
        assert fast["pixel_values"].shape == exact["pixel_values"].shape
        assert fast["image_sizes"].tolist() == exact["image_sizes"].tolist()
        slow, quick = DeepStackImageProcessor(crop_size=56, hd_layout=hd), DeepStackImageProcessorFast(crop_size=56, hd_layout=hd)
        for index, (height, width) in enumerate(exact["image_sizes"].tolist()):
            assert quick.get_image_grid(height, width) == slow.get_image_grid(height, width)
            assert quick.get_number_of_image_tokens(height, width) == slow.get_number_of_image_tokens(height, width)
            count = slow.get_num_views(height, width)
            assert torch.count_nonzero(fast["pixel_values"][index, count:]) == 0
            assert_within_tolerance(fast["pixel_values"][index, :count], exact["pixel_values"][index, :count])
        unpadded = DeepStackImageProcessorFast(crop_size=56, hd_layout=hd, do_pad=False)(images)["pixel_values"]
        assert [len(item) for item in unpadded] == [slow.get_num_views(h, w) for h, w in exact["image_sizes"].tolist()]


def test_grouped_batch_equals_one_by_one():
    """Batching images of one size (disable_grouping=False) changes nothing: same kernels, same order."""
    images = [smooth_image(300, 200, seed=index) for index in range(3)] + [smooth_image(120, 300, seed=9)]
    processor = DeepStackImageProcessorFast(crop_size=28, hd_layout=True)
    batched = processor(images, disable_grouping=False)["pixel_values"]
    for index, image in enumerate(images):
        alone = processor(image, disable_grouping=True)["pixel_values"][0]
        torch.testing.assert_close(batched[index, : len(alone)], alone, rtol=0, atol=0)


def test_tensor_and_array_inputs_convert_like_pil():
    image = noise_image(45, 30, seed=4)
    array = np.array(image)
    processor = DeepStackImageProcessorFast(crop_size=28)
    expected = processor(image)["pixel_values"]
    chw = torch.from_numpy(array).permute(2, 0, 1)
    inputs = {
        "uint8 CHW tensor": chw,
        "uint8 HWC array": array,
        "float CHW tensor in [0, 1]": chw.float() / 255,
        "float HWC array in [0, 255]": array.astype(np.float32),
        "opaque RGBA tensor": torch.cat([chw, torch.full((1, 30, 45), 255, dtype=torch.uint8)]),
    }
    for name, value in inputs.items():
        torch.testing.assert_close(processor(value)["pixel_values"], expected, rtol=0, atol=0, msg=name)
    grey = np.array(image.convert("L"))
    torch.testing.assert_close(
        processor(torch.from_numpy(grey))["pixel_values"], processor(Image.fromarray(grey))["pixel_values"]
    )
    # alpha is composited onto white (the transparency rule, tests/test_image_inputs.py): fully transparent is white
    grey_alpha = torch.stack([torch.from_numpy(grey), torch.zeros_like(torch.from_numpy(grey))])
    white = Image.new("RGB", image.size, (255, 255, 255))
    torch.testing.assert_close(processor(grey_alpha)["pixel_values"], processor(white)["pixel_values"])
    with pytest.raises(ValueError, match=r"Float image contains NaN"):
        processor(chw.float() * float("nan"))


def test_outputs_on_the_inputs_device_and_on_request():
    processor = DeepStackImageProcessorFast(crop_size=28)
    image = torch.from_numpy(np.array(noise_image(40, 30)))
    out = processor(image)
    assert out["pixel_values"].device == image.device and out["image_sizes"].device == image.device
    assert processor(noise_image(40, 30), device="cpu")["pixel_values"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_inputs_are_processed_on_cuda():
    image = noise_image(500, 300, seed=2)
    exact = DeepStackImageProcessor(crop_size=56, hd_layout=True)(image, return_tensors="pt")["pixel_values"]
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).cuda()
    out = DeepStackImageProcessorFast(crop_size=56, hd_layout=True)(tensor)
    assert out["pixel_values"].is_cuda and out["image_sizes"].is_cuda
    assert_within_tolerance(out["pixel_values"][0].cpu(), exact[0])


def test_torchvision_resize_is_used_when_installed(monkeypatch):
    """With torchvision present each pass goes through ``tvF.resize`` (stubbed here: it is not installable)."""
    calls = []

    class FakeTorchvision:
        @staticmethod
        def resize(images, size, interpolation, antialias):
            calls.append((tuple(size), interpolation, antialias))
            return torch.nn.functional.interpolate(images, size=size, mode="bicubic", antialias=True)

    monkeypatch.setattr(fast_module, "tvF", FakeTorchvision)
    monkeypatch.setattr(fast_module, "pil_torch_interpolation_mapping", {3: "bicubic"})
    DeepStackImageProcessorFast(crop_size=28)(noise_image(100, 60))
    assert calls and all(call[1:] == ("bicubic", True) for call in calls)


def test_unsupported_filter_is_refused_by_name():
    with pytest.raises(ValueError, match="resample=LANCZOS is not available in the torch backend"):
        DeepStackImageProcessorFast(crop_size=28, resample=Image.Resampling.LANCZOS)(noise_image(30, 20))


def test_auto_image_processor_use_fast_and_backends(tmp_path):
    from deepstack_hf._compat import AutoImageProcessor  # 5.17's top-level one is a placeholder without torchvision

    DeepStackImageProcessorFast(crop_size=56, num_crops=9, hd_layout=True).save_pretrained(tmp_path)
    saved = (tmp_path / "preprocessor_config.json").read_text()
    assert '"image_processor_type": "DeepStackImageProcessor"' in saved  # backend-neutral, as Transformers saves
    fast = AutoImageProcessor.from_pretrained(tmp_path, use_fast=True)
    assert type(fast) is DeepStackImageProcessorFast and fast.backend == "torch"
    assert (fast.num_crops, fast.hd_layout, fast.crop_size.height) == (9, True, 56)
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is DeepStackImageProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="torchvision")) is DeepStackImageProcessorFast
    image = noise_image(70, 20, seed=1)
    exact = AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)(image, return_tensors="pt")["pixel_values"]
    assert_within_tolerance(fast(image)["pixel_values"][0], exact[0])
