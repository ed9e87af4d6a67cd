"""DeepStackProcessor: ids against chunk-wise SentencePiece tokenisation, image-token expansion, batching."""


import numpy as np
import pytest
import sentencepiece as spm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import deepstack_hf
from deepstack_hf import DeepStackImageProcessor, DeepStackProcessor
from deepstack_hf.chat_templates import PHI3_INSTRUCT_TEMPLATE, VICUNA_V1_TEMPLATE
from slow_llama_tokenizer import slow_llama_encoder

from deepstack_hf.conversion.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece

IMAGE_ID = 300


@pytest.fixture(scope="module")
def sp_model_path(tmp_path_factory):
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("spm") / "tiny.model")


@pytest.fixture(scope="module")
def sp(sp_model_path):
    return spm.SentencePieceProcessor(model_file=sp_model_path)


@pytest.fixture(scope="module")
def slow_encode(sp_model_path):
    """The slow LlamaTokenizer(legacy=False) rules, written with sentencepiece."""
    return slow_llama_encoder(sp_model_path)


@pytest.fixture(scope="module")
def processor(sp_model_path):
    tokenizer = tokenizer_from_sentencepiece(sp_model_path)
    image_processor = DeepStackImageProcessor(crop_size=56, patch_size=14)
    return DeepStackProcessor(image_processor, tokenizer, chat_template=VICUNA_V1_TEMPLATE)


@pytest.fixture(scope="module")
def hd_processor(sp_model_path):
    tokenizer = tokenizer_from_sentencepiece(sp_model_path)
    image_processor = DeepStackImageProcessor(crop_size=56, patch_size=14, hd_layout=True)
    return DeepStackProcessor(image_processor, tokenizer, chat_template=VICUNA_V1_TEMPLATE)


def image(width, height, value=90):
    return Image.new("RGB", (width, height), (value, 2 * value % 256, 30))


def chunkwise(encode_chunk, prompt, tokens_per_image):
    """The original rule: every chunk encoded with BOS, BOS kept on the first chunk only."""
    chunks = prompt.split("<image>")
    ids = encode_chunk(chunks[0])
    for count, chunk in zip(tokens_per_image, chunks[1:]):
        ids = ids + [IMAGE_ID] * count + encode_chunk(chunk)[1:]
    return ids


def sp_chunk(sp):
    return lambda chunk: [1] + sp.encode(chunk)


# grid (w, h) at crop 56 / patch 14: plain 16 tokens, HD 16 + 4h(4w+1)
HD_TOKENS = {(1, 2): 16 + 8 * 5, (2, 1): 16 + 4 * 9, (2, 2): 16 + 8 * 9, (3, 1): 16 + 4 * 13}

PROMPTS = [
    ("What is in the picture? The cat.", []),
    ("USER: <image>\nWhat is in the image? ASSISTANT:", [image(40, 25)]),
    ("<image>\nthe cat", [image(112, 112)]),
    ("compare <image> with <image>\nWhat changed?", [image(40, 25), image(300, 100)]),
    ("<image><image>", [image(5, 5), image(6, 6)]),
    ("café ☃ 東京 <image>\n🙂 naïve", [image(20, 20)]),
]


@pytest.mark.parametrize("prompt, images", PROMPTS)
def test_ids_match_chunkwise_sentencepiece(processor, sp, prompt, images):
    out = processor(images=images or None, text=prompt)
    assert out["input_ids"][0] == chunkwise(sp_chunk(sp), prompt, [16] * len(images))
    assert out["attention_mask"][0] == [1] * len(out["input_ids"][0])


@pytest.mark.parametrize("prompt, images", PROMPTS)
def test_hd_token_counts(hd_processor, sp, prompt, images):
    from deepstack_hf.grid_layout import select_best_grid

    counts = [HD_TOKENS[select_best_grid(im.width, im.height, 4, 56)] for im in images]
    out = hd_processor(images=images or None, text=prompt, return_tensors="pt")
    assert out["input_ids"][0].tolist() == chunkwise(sp_chunk(sp), prompt, counts)
    if images:
        # padded to the most views any image can get: HD, num_crops=4: (1 + 4) sequence views, each with 4 sub-crops
        assert out["pixel_values"].shape == (len(images), 5 * 5, 3, 56, 56)


def test_text_after_image_starts_with_word_boundary(processor):
    out = processor(images=[image(40, 25)], text="x<image>\nWhat")
    ids = out["input_ids"][0]
    after = ids[len(ids) - ids[::-1].index(IMAGE_ID) :]
    assert processor.tokenizer.convert_ids_to_tokens(after[:2]) == ["\u2581", "<0x0A>"]


def test_multi_turn_vicuna_with_eos_in_text(processor, slow_encode):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And the colour?"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "</s>USER:" in prompt
    out = processor(images=[image(40, 25)], text=prompt)
    expected = chunkwise(slow_encode, prompt, [16])
    assert out["input_ids"][0] == expected
    assert expected.count(2) == 1  # "</s>" in the text is the EOS id, as with the slow tokenizer


def test_leading_space_prompt_matches_slow(processor, slow_encode):
    prompt = " the <image> \u2581 end"
    out = processor(images=[image(9, 9)], text=prompt)
    assert out["input_ids"][0] == chunkwise(slow_encode, prompt, [16])


def test_batch_left_padding_and_tensors(processor, sp):
    prompts = ["<image>\nWhat is it?", "the cat sat on the mat and the dog sat on the log", "a <image> b <image> c"]
    images = [image(40, 25), image(200, 50), image(60, 60)]
    out = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    rows = [
        chunkwise(sp_chunk(sp), prompts[0], [16]),
        chunkwise(sp_chunk(sp), prompts[1], []),
        chunkwise(sp_chunk(sp), prompts[2], [16, 16]),
    ]
    length = max(map(len, rows))
    assert out["input_ids"].shape == (3, length)
    for row, ids in zip(out["input_ids"].tolist(), rows):
        assert row == [0] * (length - len(ids)) + ids
    assert out["attention_mask"].sum(1).tolist() == [len(ids) for ids in rows]
    assert out["input_ids"].dtype == torch.long and out["pixel_values"].dtype == torch.float32
    assert out["image_sizes"].tolist() == [[25, 40], [50, 200], [60, 60]]
    assert (out["input_ids"] == IMAGE_ID).sum().item() == 16 * 3
    right = processor(images=images, text=prompts, padding=True, padding_side="right", return_tensors="pt")
    assert right["input_ids"][0].tolist() == rows[0] + [0] * (length - len(rows[0]))


def test_nested_images_per_prompt(processor):
    prompts = ["<image> and <image>", "<image>"]
    nested = [[image(10, 10), image(20, 10)], [image(10, 30)]]
    flat = processor(images=[im for row in nested for im in row], text=prompts, padding=True)
    out = processor(images=nested, text=prompts, padding=True)
    assert out["input_ids"] == flat["input_ids"]
    np.testing.assert_array_equal(out["pixel_values"], flat["pixel_values"])
    with pytest.raises(ValueError, match="Prompt 0 contains 2"):
        processor(images=[[image(10, 10)], [image(10, 10), image(10, 10)]], text=prompts)


@pytest.mark.parametrize("prompt, count", [("<image><image>", 1), ("<image>", 2), ("no marker", 1), ("<image>", 0)])
def test_marker_image_mismatch(processor, prompt, count):
    images = [image(10, 10)] * count or None
    with pytest.raises(ValueError) as error:
        processor(images=images, text=prompt)
    message = str(error.value)
    assert str(prompt.count("<image>")) in message and (f"{count} image" in message or "no images" in message)


def test_images_only(processor):
    out = processor(images=image(40, 25), return_tensors="pt")
    assert set(out) == {"pixel_values", "image_sizes"}


def test_apply_chat_template_tokenized_equals_call(processor):
    picture = image(40, 25)
    messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "Why?"}]}]
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith("USER: <image>\nWhy? ASSISTANT:")
    direct = processor(images=[picture], text=prompt, return_tensors="pt")
    assert torch.equal(out["input_ids"], direct["input_ids"])
    assert torch.equal(out["pixel_values"], direct["pixel_values"])


def test_decode_helpers(processor):
    ids = processor(text=["the cat", "a dog sat"], padding=True, return_tensors="pt")["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["the cat", "a dog sat"]
    assert processor.decode(ids[1], skip_special_tokens=True) == "a dog sat"
    assert processor.post_process_image_text_to_text(ids) == ["the cat", "a dog sat"]
    assert processor.post_process_image_text_to_text(ids[0]) == "the cat"
    assert sorted(processor.model_input_names) == ["attention_mask", "image_sizes", "input_ids", "pixel_values"]


def test_num_multimodal_tokens(processor, hd_processor):
    data = processor._get_num_multimodal_tokens(image_sizes=[(25, 40), (2000, 2000)])
    assert data.num_image_tokens == [16, 16] and data.num_image_patches == [3, 5]
    data = hd_processor._get_num_multimodal_tokens(image_sizes=[(25, 40), (500, 1000)])
    assert data.num_image_tokens == [HD_TOKENS[(1, 2)], HD_TOKENS[(2, 1)]] and data.num_image_patches == [15, 15]


def test_save_load_round_trip(processor, tmp_path):
    from transformers import AutoProcessor

    from deepstack_hf._compat import AutoImageProcessor  # 5.17's top-level one is a placeholder without torchvision

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DeepStackProcessor
    assert type(loaded.image_processor) is DeepStackImageProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is DeepStackImageProcessor
    assert loaded.chat_template == VICUNA_V1_TEMPLATE
    assert loaded.image_token_id == IMAGE_ID and loaded.tokenizer.padding_side == "left"
    prompts = ["<image>\nWhat is it?", "the \u2581cat</s>"]
    images = [image(40, 25)]
    a = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    b = loaded(images=images, text=prompts, padding=True, return_tensors="pt")
    for key in a:
        assert torch.equal(a[key], b[key])
    assert deepstack_hf.DeepStackProcessor is DeepStackProcessor


PHI3_TOKENS = ["<|system|>", "<|end|>", "<|user|>", "<|assistant|>"]


@pytest.mark.parametrize("listed_as_special", [False, True])
def test_phi3_template_with_added_tokens(sp_model_path, listed_as_special):
    """transformers 4.39's slow tokenizer (the original's) prepends a lone "▁" to a text that starts with an added
    token unless that token is among its special tokens (named ones + additional_special_tokens): measured with
    transformers 4.39.3 on a Phi-3-style tokenizer, [<s>, ▁, <|system|>, ...] vs [<s>, <|system|>, ...]."""
    tokenizer = tokenizer_from_sentencepiece(sp_model_path, extra_special_tokens=PHI3_TOKENS)
    if listed_as_special:
        tokenizer.add_special_tokens({"extra_special_tokens": PHI3_TOKENS}, replace_extra_special_tokens=False)
    processor = DeepStackProcessor(
        DeepStackImageProcessor(crop_size=56), tokenizer, chat_template=PHI3_INSTRUCT_TEMPLATE
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "the cat"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=[image(30, 30)], text=prompt)["input_ids"][0]
    system_id, boundary_id = tokenizer.convert_tokens_to_ids("<|system|>"), tokenizer.convert_tokens_to_ids("\u2581")
    expected_start = [1, system_id] if listed_as_special else [1, boundary_id, system_id]
    assert ids[: len(expected_start)] == expected_start
    assert ids.count(IMAGE_ID) == 16
    assert ids[-2:] == [tokenizer.convert_tokens_to_ids("<|assistant|>"), tokenizer.convert_tokens_to_ids("<0x0A>")]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(["<image>", "the cat", "\n", " ", "é☃", "What?", "</s>"]), max_size=6),
    sizes=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=0, max_size=4),
    hd=st.booleans(),
)
def test_property_shapes_and_counts(processor, hd_processor, slow_encode, pieces, sizes, hd):
    from deepstack_hf.grid_layout import num_image_tokens, num_views, select_best_grid

    prompt = "".join(pieces)
    images = [image(w, h) for w, h in sizes]
    proc = hd_processor if hd else processor
    try:
        out = proc(images=images or None, text=[prompt, "the cat"], padding=True, return_tensors="pt")
    except ValueError:
        assert prompt.count("<image>") != len(images)
        return
    grids = [select_best_grid(w, h, 4, 56) for w, h in sizes]
    tokens = [num_image_tokens(grid, hd, 4) for grid in grids]
    row = out["input_ids"][0][out["attention_mask"][0].bool()].tolist()
    assert row == chunkwise(slow_encode, prompt, tokens)
    if images:
        assert out["pixel_values"].shape == (len(images), 25 if hd else 5, 3, 56, 56)
        for index, grid in enumerate(grids):  # the views past the image's own are padding
            assert not out["pixel_values"][index, num_views(grid, 4, hd) :].any()
        assert out["image_sizes"].tolist() == [[h, w] for w, h in sizes]


def float32_bits(values) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32)).view(np.uint32)


@pytest.mark.parametrize("backend", ["exact", "torch"])
@pytest.mark.parametrize("return_tensors", ["np", "pt"])
@pytest.mark.parametrize("hd", [False, True])
def test_pixel_values_are_each_images_views_then_zero_views_up_to_the_most_views(
    sp_model_path, backend, return_tensors, hd
):
    """Samples processed one by one stack into a batch: `pixel_values` holds each image's own views (the image
    processor's, unpadded) and zero views up to the most views any image can get with num_crops=4, whatever the
    images (5 plain; 25 HD: 5 sequence views with 4 sub-crops each). `do_pad=False` pads nothing."""
    cls = DeepStackImageProcessor if backend == "exact" else deepstack_hf.DeepStackImageProcessorFast
    image_processor = cls(crop_size=56, patch_size=14, hd_layout=hd)
    processor = DeepStackProcessor(image_processor, tokenizer_from_sentencepiece(sp_model_path))
    images, prompts = [image(40, 25), image(9, 9), image(200, 50)], ["<image> a <image>", "b <image>"]
    own = [np.asarray(views) for views in image_processor(images, do_pad=False)["pixel_values"]]
    most = 25 if hd else 5
    expected = np.stack([np.concatenate([views, np.zeros((most - len(views), 3, 56, 56), np.float32)]) for views in own])

    out = processor(images=images, text=prompts, padding=True, return_tensors=return_tensors)
    assert isinstance(out["pixel_values"], np.ndarray if return_tensors == "np" else torch.Tensor)
    np.testing.assert_array_equal(float32_bits(out["pixel_values"]), float32_bits(expected))
    assert np.asarray(out["image_sizes"]).tolist() == [[25, 40], [9, 9], [50, 200]]
    one_by_one = [processor(images=[im], text="<image>", return_tensors=return_tensors) for im in images]
    stacked = np.concatenate([np.asarray(single["pixel_values"]) for single in one_by_one])
    np.testing.assert_array_equal(float32_bits(stacked), float32_bits(expected))

    unpadded = processor(images=images, text=prompts, padding=True, do_pad=False)
    assert [np.asarray(views).shape for views in unpadded["pixel_values"]] == [views.shape for views in own]
    assert unpadded["input_ids"] == processor(images=images, text=prompts, padding=True)["input_ids"]
    for views, expected_views in zip(unpadded["pixel_values"], own, strict=True):
        np.testing.assert_array_equal(float32_bits(views), float32_bits(expected_views))


def test_empty_per_sample_image_lists_are_a_text_only_batch(processor):
    """What collators build for a text-only batch: one empty image list per sample."""
    text = ["USER: hello ASSISTANT:", "USER: and you? ASSISTANT:"]
    expected = processor(text=text, padding=True, return_tensors="np")
    for images in ([[], []], [], ([], []), [[[]], []]):
        out = processor(images=images, text=text, padding=True, return_tensors="np")
        assert "pixel_values" not in out
        np.testing.assert_array_equal(out["input_ids"], expected["input_ids"])
    with pytest.raises(ValueError, match=r"Prompt 0 contains 1 <image> marker\(s\) but 0 image\(s\) were given"):
        processor(images=[[], []], text=["USER: <image> hi", "USER: hi"])
