"""The square-grid option (`square_grid`, the original's `2xsample`): every image gets the `(sqrt N, sqrt N)` grid.

Expectations are hand-derived (docs/design.md: a 672x672 canvas, 4 crops, 5 views for N = 4) or come from
`original_reference`, the independent plain-torch implementation of the original code.
"""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import TINY_IMAGE_SIZE, TINY_PATCH_SIZE
from deepstack_hf import DeepStackImageProcessor
from deepstack_hf.conversion import ConversionError, convert_checkpoint, verify_conversion
from deepstack_hf.testing_utils.original_reference import ClipPreprocessing, original_views
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint
from deepstack_hf.grid_layout import image_grid

STRIPS = [(400, 60), (60, 400), (100, 100), (41, 40), (3, 700)]


def strip(width, height):
    picture = Image.new("RGB", (width, height), (200, 210, 190))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((width // 5, height // 5, width // 2, height - 2), fill=(190, 30, 60))
    draw.ellipse((width // 2, 0, width - 1, height // 2), fill=(30, 80, 210))
    return picture


@pytest.mark.parametrize("size", STRIPS)
@pytest.mark.parametrize("num_crops, side", [(4, 2), (9, 3), (16, 4)])
def test_square_grid_ignores_the_aspect_ratio(size, num_crops, side):
    assert image_grid(*size, num_crops, 336, square_grid=True) == (side, side)


def test_best_grid_is_kept_without_the_option():
    # docs/design.md: a 40x25 image gets grid (1, 2) with N = 4; with 56-pixel crops a 400x60 strip gets (4, 1)
    assert image_grid(40, 25, 4, 336) == (1, 2)
    assert image_grid(400, 60, 4, 56) == (4, 1) and image_grid(60, 400, 4, 56) == (1, 4)


@pytest.mark.parametrize("num_crops", [2, 3, 5, 6, 8])
def test_square_grid_needs_a_square_num_crops(num_crops, tiny_config_factory):
    with pytest.raises(ValueError, match="square number"):
        image_grid(100, 100, num_crops, 336, square_grid=True)
    with pytest.raises(ValueError, match="square number"):
        tiny_config_factory(num_crops=num_crops, square_grid=True, deepstack_layers=list(range(num_crops)), text_config={"num_hidden_layers": 8})


@pytest.mark.parametrize("hd", [False, True])
@pytest.mark.parametrize("size", STRIPS[:3])
def test_image_processor_views_match_the_original_2xsample(size, hd):
    processor = DeepStackImageProcessor(crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, square_grid=True, hd_layout=hd)
    prep = ClipPreprocessing(
        crop=TINY_IMAGE_SIZE,
        edge=TINY_IMAGE_SIZE,
        mean=np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32),
        std=np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32),
        scale=1 / 255,
        resample=3,
    )
    expected, grid = original_views(strip(*size), 4, hd, prep, square=True)
    assert grid == (2, 2)
    pixels = processor(strip(*size), return_tensors="pt")["pixel_values"][0]
    assert pixels.shape[0] == (25 if hd else 5)  # HD: 5 sequence views, each with 4 sub-crops
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hd, tokens", [(False, 16), (True, 16 + 8 * (8 + 1))])
def test_token_counts_follow_the_square_grid(hd, tokens):
    # p = 4 patches per side: HD is the base view (16) + an 8x8 map with a newline after each of its 8 rows
    processor = DeepStackImageProcessor(crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, square_grid=True, hd_layout=hd)
    for size in STRIPS:
        assert processor.get_number_of_image_tokens(size[1], size[0]) == tokens
        assert processor.get_num_views(size[1], size[0]) == (25 if hd else 5)


def test_model_lays_out_a_strip_as_a_square_grid(tiny_config_factory):
    from deepstack_hf import DeepStackModel

    config = tiny_config_factory(square_grid=True)
    model = DeepStackModel(config).eval()
    pixel_values = torch.randn(1, 5, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        square = model.get_image_features(pixel_values, torch.tensor([[60, 400]]))
        # the same views read as the 2x2 grid of a square image: identical layout
        reference = model.get_image_features(pixel_values, torch.tensor([[100, 100]]))
    for got, want in zip(square.deepstack_features, reference.deepstack_features):
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    assert all(stack[0].abs().sum() > 0 for stack in square.deepstack_features)  # all four stacks are real


@pytest.fixture(scope="module")
def square_checkpoints(tmp_path_factory):
    results = {}
    for hd in (False, True):
        root = tmp_path_factory.mktemp(f"square-hd{hd}")
        synthetic = build_synthetic_checkpoint(
            root / "src", hd=hd, num_hidden_layers=5, dtype=torch.float32, extra_config={"deepstack_args_for_ablation": "2xsample"}
        )
        result = convert_checkpoint(synthetic.checkpoint, root / "out", progress=False)
        results[hd] = (synthetic, root / "out", result)
    return results


@pytest.mark.parametrize("hd", [False, True])
def test_converted_2xsample_matches_the_original(square_checkpoints, hd):
    synthetic, out, result = square_checkpoints[hd]
    assert result.settings.square_grid
    from transformers import AutoConfig, AutoProcessor

    assert AutoConfig.from_pretrained(out).square_grid
    assert AutoProcessor.from_pretrained(out).image_processor.square_grid
    for size in [(400, 60), (60, 300)]:
        report = verify_conversion(synthetic.checkpoint, out, weight_dtype=torch.float32, max_new_tokens=3, image=strip(*size))
        assert report.prompt_ids_match and report.greedy_match, report.summary()
        assert report.max_abs_logit_diff <= 1e-4, report.summary()


def test_2xsample_needs_a_square_num_crops(tmp_path):
    synthetic = build_synthetic_checkpoint(
        tmp_path / "src", num_crops=6, num_hidden_layers=7, extra_config={"deepstack_args_for_ablation": "2xsample"}
    )
    with pytest.raises(ConversionError, match="2xsample"):
        convert_checkpoint(synthetic.checkpoint, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
