"""What the model and its config refuse: inputs that would otherwise run silently wrong, and unbounded fields.

View counts are hand-derived from the grid rule of docs/design.md (`1 + w*h` views for grid `(w, h)`), not the model.
"""

import logging
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from huggingface_hub.errors import StrictDataclassFieldValidationError

from conftest import single_image_inputs, tiny_deepstack_config
from deepstack_hf.modeling_deepstack import DeepStackForConditionalGeneration


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepStackForConditionalGeneration(tiny_deepstack_config()).eval()


@pytest.fixture(scope="module")
def inputs(model):
    # 2:1 image, num_crops=4: grid (2, 1) -> 3 views
    return single_image_inputs(model.config, image_height=100, image_width=200)


def test_inputs_as_built_run(model, inputs):
    assert inputs["pixel_values"].shape[1] == 3
    with torch.no_grad():
        model(**inputs)


@pytest.mark.parametrize("argument", ["pixel_values", "image_sizes"])
@pytest.mark.parametrize("kind", ["numpy", "list"])
def test_non_tensor_image_arguments_are_named(model, inputs, argument, kind):
    value = inputs[argument].numpy() if kind == "numpy" else inputs[argument].tolist()
    expected = "numpy.ndarray" if kind == "numpy" else "builtins.list"
    with pytest.raises(TypeError, match=rf"^{argument} must be a torch\.Tensor, got {expected}; call the processor"):
        model(**dict(inputs, **{argument: value}))


def test_uint8_pixels_are_refused(model, inputs):
    with pytest.raises(ValueError, match=r"pixel_values has dtype torch\.uint8; the model takes normalized float"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"].clamp(0, 1).mul(255).to(torch.uint8)))


def test_four_dimensional_pixels_are_reported_as_such(model, inputs):
    with pytest.raises(ValueError, match=r"pixel_values must be \(num_images, max_views, 3, 56, 56\), got 4-D shape "
                       r"\(3, 3, 56, 56\) \(one image's views need a leading image dimension: pixel_values\[None\]\)"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][0]))


def test_image_sizes_that_imply_fewer_views_than_sent_are_refused(model, inputs):
    # Under num_crops=4 a 1:2 image (height 200, width 100) has grid (1, 2) -> 3 views; send 5 real views.
    pixels = torch.randn(1, 5, 3, 56, 56)
    with pytest.raises(ValueError, match=r"Image 0: image_sizes \(200, 100\) implies 3 views under the model's "
                       r"num_crops=4, hd_layout=False, square_grid=False, but pixel_values holds 5 non-zero views \(of 5\)"):
        model(**dict(inputs, pixel_values=pixels, image_sizes=torch.tensor([[200, 100]])))


def test_processor_with_other_num_crops_does_not_pass_silently(model):
    # A 6:1 image: num_crops=6 gives grid (6, 1) -> 7 views; the model (num_crops=4) expects grid (4, 1) -> 5.
    other = tiny_deepstack_config(num_crops=6, deepstack_layers=[0, 1, 2, 3, 4, 5])
    inputs = single_image_inputs(other, image_height=50, image_width=300)
    assert inputs["pixel_values"].shape[1] == 7
    with pytest.raises(ValueError, match=r"implies 5 views under the model's num_crops=4.*holds 7 non-zero views"):
        model(**inputs)


def test_processor_without_the_models_square_grid_does_not_pass_silently():
    # A 2:1 image: the best grid (2, 1) gives 3 views; a square_grid model expects the 2x2 grid, 5 views. Padded to
    # 5 views, the two zero views would be read as crops: refused, since a real (normalized) view is never all zeros.
    torch.manual_seed(0)
    square = DeepStackForConditionalGeneration(tiny_deepstack_config(square_grid=True)).eval()
    inputs = single_image_inputs(tiny_deepstack_config(), image_height=100, image_width=200)
    padded = torch.cat([inputs["pixel_values"], torch.zeros(1, 2, 3, 56, 56)], dim=1)
    with pytest.raises(ValueError, match=r"implies 5 views under the model's num_crops=4, hd_layout=False, "
                       r"square_grid=True, but pixel_values holds 3 non-zero views \(of 5\)"):
        square(**dict(inputs, pixel_values=padded))


@pytest.fixture
def fresh_once_warnings():
    """Transformers' `logger.warning_once` warns once per process and message: forget those another test drew."""
    logging.Logger.warning_once.cache_clear()


def test_image_tokens_without_images_warn(model, inputs, caplog, fresh_once_warnings):
    # A warning, not an error: assisted decoding runs its assistant on the prompt without the images.
    with caplog.at_level(logging.WARNING), torch.no_grad():
        model.generate(input_ids=inputs["input_ids"], max_new_tokens=1, do_sample=False)
    assert "input_ids holds 16 image tokens (id 300) but no pixel_values or mm_encoder_outputs were given; they are read as text" in caplog.text


def test_generation_after_images_is_not_mistaken_for_missing_images(model, inputs):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_prompt_beyond_max_position_embeddings_warns(caplog, fresh_once_warnings):
    config = tiny_deepstack_config(text_config={"max_position_embeddings": 20})
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    inputs = single_image_inputs(config, image_height=100, image_width=200)  # 1 + 4 + 16 + 6 = 27 tokens
    with caplog.at_level(logging.WARNING), torch.no_grad():
        model(**inputs)
    assert "The sequence (27 tokens, image tokens included) is longer than the decoder's max_position_embeddings (20)" in caplog.text


# ----------------------------------------------------------------------------------------------- config bounds
@pytest.mark.parametrize("overrides, message", [
    ({"num_crops": 10**6}, r"^num_crops=1000000 is not allowed; expected an integer in \[2, 64\]\.$"),
    ({"num_crops": 1}, r"^num_crops=1 is not allowed"),
    ({"projector_depth": 10**9}, r"^projector_depth=1000000000 is not allowed; expected \[1, 16\]\.$"),
    ({"vision_feature_layer": 99}, r"vision_feature_layer=99 is not allowed; the 3-layer vision tower has hidden states \[-4, 3\]"),
    ({"image_token_id": -5}, r"image_token_id=-5 is not allowed"),
    ({"deepstack_layers": list(range(1000))}, r"^deepstack_layers=\[0, 1, 2, .*\.\.\. has 1000 entries"),
])
def test_config_refusals_are_short_and_fast(overrides, message):
    start = time.time()
    with pytest.raises(ValueError, match=message) as caught:
        tiny_deepstack_config(**overrides)
    assert len(str(caught.value)) < 300 and time.time() - start < 2


@settings(max_examples=60, deadline=None)
@given(num_crops=st.one_of(st.integers(-10, 10**9), st.floats(allow_nan=True), st.text(max_size=4), st.booleans(), st.none()))
def test_num_crops_property(num_crops):
    try:
        config = tiny_deepstack_config(num_crops=num_crops, text_config={"num_hidden_layers": 70})
    except (TypeError, ValueError, StrictDataclassFieldValidationError) as error:  # the last: wrong types
        assert len(str(error)) < 400 and "num_crops" in str(error)
        assert not (isinstance(num_crops, int) and not isinstance(num_crops, bool) and 2 <= num_crops <= 64)
        return
    assert isinstance(num_crops, int) and 2 <= num_crops <= 64 and config.num_stacks == num_crops


def test_processor_rejects_unbounded_num_crops_fast():
    from deepstack_hf.grid_layout import select_best_grid

    start = time.time()
    with pytest.raises(ValueError, match=r"num_crops=1000000 is not allowed"):
        select_best_grid(640, 480, 10**6, 336)
    assert time.time() - start < 1
    assert select_best_grid(640, 480, np.int64(4), 336) == (2, 2)  # numpy integers (from configs) still work
