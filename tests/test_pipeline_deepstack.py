"""pipeline("image-text-to-text") end to end on a tiny random DeepStack model and the real processor."""

import pytest
import torch
from PIL import Image

import deepstack_hf
from deepstack_hf import DeepStackForConditionalGeneration, DeepStackImageProcessor, DeepStackProcessor
from deepstack_hf.chat_templates import VICUNA_V1_TEMPLATE
from deepstack_hf.testing_utils.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece

from conftest import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_deepstack_config

@pytest.fixture(scope="module", params=[False, True], ids=["plain", "hd"])
def pipe(request, tmp_path_factory):
    from transformers import pipeline

    folder = tmp_path_factory.mktemp("tiny-deepstack")
    tokenizer = tokenizer_from_sentencepiece(train_tiny_sentencepiece(folder / "spm" / "tiny.model"))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = tiny_deepstack_config(hd_layout=request.param, image_token_id=image_token_id)
    assert config.text_config.vocab_size >= len(tokenizer)
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    image_processor = DeepStackImageProcessor(
        crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, num_crops=config.num_crops, hd_layout=config.hd_layout
    )
    processor = DeepStackProcessor(image_processor, tokenizer, chat_template=VICUNA_V1_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return pipeline("image-text-to-text", model=str(folder), device="cpu")


def picture(width, height, value):
    return Image.new("RGB", (width, height), (value, 255 - value, 40))


def test_chat_messages(pipe):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": picture(40, 25, 10)}, {"type": "text", "text": "What is it?"}],
        }
    ]
    out = pipe(text=messages, max_new_tokens=3, do_sample=False, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)
    assert "ASSISTANT" not in out[0]["generated_text"]
    full = pipe(text=messages, max_new_tokens=3, do_sample=False)
    assert isinstance(full[0]["generated_text"], list)  # the chat, with the new assistant turn appended


def test_text_and_images_batched(pipe):
    prompts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image>\nand this one? ASSISTANT:"]
    images = [picture(40, 25, 10), picture(300, 60, 200)]
    out = pipe(images=images, text=prompts, max_new_tokens=3, do_sample=False, return_full_text=False, batch_size=2)
    assert len(out) == 2
    for prompt, item in zip(prompts, out):
        generated = item[0]["generated_text"] if isinstance(item, list) else item["generated_text"]
        assert isinstance(generated, str)
        assert not generated.startswith(prompt.replace("<image>", ""))
    full = pipe(images=images[0], text=prompts[0], max_new_tokens=3, do_sample=False)
    assert full[0]["generated_text"].startswith(prompts[0])


def test_batches_of_different_grids_give_what_each_input_gives_alone(pipe):
    """A landscape and a portrait picture have different crop grids, so different view counts (plain: 5 and 3
    views, HD: 25 and 15), and prompts of different lengths; batched (left-padded, cached), each must give what it
    gives alone without a KV cache."""
    from deepstack_hf.grid_layout import num_views, select_best_grid

    images = [picture(300, 60, 10), picture(40, 90, 200)]
    grids = [select_best_grid(im.width, im.height, 4, TINY_IMAGE_SIZE) for im in images]
    assert num_views(grids[0], 4, False) != num_views(grids[1], 4, False)
    prompts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image>\nand this one, the second? ASSISTANT:"]
    # (a generated image token would have no image in the uncached runs)
    generate_kwargs = {"max_new_tokens": 4, "do_sample": False, "suppress_tokens": [pipe.model.config.image_token_id]}
    batched = pipe(images=images, text=prompts, batch_size=2, generate_kwargs=generate_kwargs, return_full_text=False)
    alone = [
        pipe(images=im, text=prompt, generate_kwargs={**generate_kwargs, "use_cache": False}, return_full_text=False)
        for im, prompt in zip(images, prompts)
    ]

    def text(item):
        return item[0]["generated_text"] if isinstance(item, list) else item["generated_text"]

    assert [text(item) for item in batched] == [text(item) for item in alone]
