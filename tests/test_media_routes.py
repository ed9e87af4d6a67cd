"""Every route that downloads an image URL is bounded the same way: one total deadline, one byte limit.

The routes: the image processor (both backends), `processor(images=url)`, and `processor.apply_chat_template`
with an image `url` or an OpenAI-style `image_url` block (Transformers hands those to the image processor's
`fetch_images`). Each is run against a loopback server that trickles a byte every 0.1 s (every read succeeds, so a
per-read timeout would wait 20 s) and one that answers more bytes than allowed, with the limits lowered to 1 s and
1000 bytes through `media_fetch.DEFAULT_LIMITS`. A small PNG within the limits loads on every route.
"""

import time

import numpy as np
import pytest

from deepstack_hf import DeepStackImageProcessor, DeepStackImageProcessorFast, DeepStackProcessor, media_fetch
from deepstack_hf.chat_templates import VICUNA_V1_TEMPLATE
from deepstack_hf.testing_utils.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece
from loopback_media_server import PICTURE, serving


@pytest.fixture(scope="module")
def server_url():
    with serving() as url:
        yield url


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    tokenizer = tokenizer_from_sentencepiece(train_tiny_sentencepiece(tmp_path_factory.mktemp("spm") / "tiny.model"))
    return DeepStackProcessor(DeepStackImageProcessor(crop_size=14, patch_size=14), tokenizer,
                              chat_template=VICUNA_V1_TEMPLATE)


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    monkeypatch.setattr(media_fetch, "DEFAULT_LIMITS", media_fetch.FetchLimits(deadline_s=1.0, max_bytes=1000))


def _chat(block):
    return [{"role": "user", "content": [block, {"type": "text", "text": "What is it?"}]}]


ROUTES = {
    "image processor (exact)": lambda processor, url: DeepStackImageProcessor(crop_size=14)(url),
    "image processor (torch)": lambda processor, url: DeepStackImageProcessorFast(crop_size=14)(url),
    "processor call": lambda processor, url: processor(images=[url], text=["USER: <image>\nWhat is it? ASSISTANT:"]),
    "chat template, image url": lambda processor, url: processor.apply_chat_template(
        _chat({"type": "image", "url": url}), add_generation_prompt=True, tokenize=True, return_dict=True),
    "chat template, OpenAI image_url": lambda processor, url: processor.apply_chat_template(
        _chat({"type": "image_url", "image_url": {"url": url}}), add_generation_prompt=True, tokenize=True,
        return_dict=True),
}


@pytest.mark.parametrize("route", ROUTES)
def test_a_trickling_server_is_cut_off_at_the_total_deadline(processor, server_url, route):
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"took longer than the 1 s download deadline"):
        ROUTES[route](processor, f"{server_url}/trickle.png")
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("path", ["/big.png", "/big-no-length.png"])
@pytest.mark.parametrize("route", ROUTES)
def test_an_oversized_answer_is_refused_at_the_byte_limit(processor, server_url, route, path):
    with pytest.raises(ValueError, match=r"limit of 1000"):
        ROUTES[route](processor, f"{server_url}{path}")


@pytest.mark.parametrize("route", ROUTES)
def test_an_image_within_the_limits_loads(processor, server_url, route):
    out = ROUTES[route](processor, f"{server_url}/picture.png")
    expected = DeepStackImageProcessor(crop_size=14)(PICTURE)["pixel_values"]
    np.testing.assert_allclose(np.asarray(out["pixel_values"])[:, : expected.shape[1]], expected, atol=0.03)
    assert np.asarray(out["image_sizes"]).tolist() == [[6, 9]]
