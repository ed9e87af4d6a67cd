"""DeepStackProcessor on Transformers' standard processor contract.

What generic callers (TRL's collators, vLLM's Transformers backend, lmms-eval, pipelines) pass and read:
`return_mm_token_type_ids`, `return_text_replacement_offsets`, `return_offsets_mapping`, `return_length`,
truncation, assistant masks from the chat templates' `{% generation %}` blocks, empty `videos` / `audio`, and the
attributes llava-hf users look up. Expected ids come from the slow-tokenizer reference and design.md's token counts.
"""

import copy
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import AddedToken

from conftest import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_deepstack_config
from slow_llama_tokenizer import chunkwise_ids, slow_llama_encoder

from deepstack_hf import DeepStackForConditionalGeneration, DeepStackImageProcessor, DeepStackProcessor
from deepstack_hf._compat import ASSISTANT_MASKS_FOLLOW_IMAGE_EXPANSION
from deepstack_hf.chat_templates import PHI3_INSTRUCT_TEMPLATE, VICUNA_V1_TEMPLATE
from deepstack_hf.conversion.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece

IMAGE_ID = 512  # the first id after the 512 SentencePiece pieces
PLAIN_TOKENS = 16  # (56 / 14) ** 2
PHI3_ADDED = {"<|system|>": (512, False, False), "<|end|>": (513, False, True), "<|user|>": (514, False, False),
              "<|assistant|>": (515, False, False)}


@pytest.fixture(scope="module")
def sp_model_path(tmp_path_factory):
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("spm") / "tiny.model", vocab_size=512)


@pytest.fixture(scope="module")
def processor(sp_model_path):
    tokenizer = tokenizer_from_sentencepiece(sp_model_path)
    image_processor = DeepStackImageProcessor(crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    return DeepStackProcessor(image_processor, tokenizer, chat_template=VICUNA_V1_TEMPLATE)


@pytest.fixture(scope="module")
def phi3_processor(sp_model_path):
    extra = [AddedToken(token, lstrip=lstrip, rstrip=rstrip, special=True, normalized=False)
             for token, (_, lstrip, rstrip) in PHI3_ADDED.items()]
    tokenizer = tokenizer_from_sentencepiece(sp_model_path, image_token=None, extra_special_tokens=extra + ["<image>"])
    from deepstack_hf.tokenization import match_slow_word_boundaries

    match_slow_word_boundaries(tokenizer, "<image>")
    image_processor = DeepStackImageProcessor(crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    return DeepStackProcessor(image_processor, tokenizer, chat_template=PHI3_INSTRUCT_TEMPLATE)


@pytest.fixture(scope="module")
def slow(sp_model_path):
    return slow_llama_encoder(sp_model_path)


def image(width, height, value=90):
    return Image.new("RGB", (width, height), (value, 2 * value % 256, 30))


# ------------------------------------------------------------------------------------------------ call outputs
def test_mm_token_type_ids_mark_exactly_the_image_tokens(processor, slow):
    prompt = "USER: <image>\nWhat? and <image> ASSISTANT:"
    out = processor(images=[image(40, 25), image(25, 40)], text=prompt, return_mm_token_type_ids=True)
    expected = chunkwise_ids(slow, prompt, IMAGE_ID, [PLAIN_TOKENS, PLAIN_TOKENS])
    assert out["input_ids"][0] == expected
    assert out["mm_token_type_ids"][0] == [int(token == IMAGE_ID) for token in expected]
    assert "mm_token_type_ids" not in processor(images=[image(9, 9)], text="<image>")


def test_text_replacement_offsets_one_exact_span_per_image(processor):
    prompts = ["a <image> b <image>", "<image>\nc"]
    out = processor(
        images=[image(40, 25), image(9, 9), image(30, 30)], text=prompts, return_text_replacement_offsets=True
    )
    offsets = out["text_replacement_offsets"]
    assert [len(row) for row in offsets] == [2, 1]
    for prompt, row in zip(prompts, offsets, strict=True):
        starts = [index for index in range(len(prompt)) if prompt.startswith("<image>", index)]
        assert [entry["span"] for entry in row] == [(start, start + 7) for start in starts]
        shift = 0
        for entry, start in zip(row, starts, strict=True):
            assert entry["type"] == "image" and entry["text"] == "<image>"
            assert entry["replacement"] == "<image>" * PLAIN_TOKENS
            assert entry["new_span"] == (start + shift, start + shift + 7 * PLAIN_TOKENS)
            shift += 7 * (PLAIN_TOKENS - 1)


def test_offsets_mapping_points_into_the_expanded_text(processor):
    prompt = "the cat <image> sat"
    out = processor(images=[image(40, 25)], text=prompt, return_offsets_mapping=True, return_text_replacement_offsets=True)
    ids, offsets = out["input_ids"][0], out["offset_mapping"][0]
    start, end = out["text_replacement_offsets"][0][0]["new_span"]
    image_offsets = [offset for token, offset in zip(ids, offsets, strict=True) if token == IMAGE_ID]
    assert image_offsets == [(position, position + 7) for position in range(start, end, 7)]
    # the text tokens cover the text around the image (the chunk's word-boundary piece "▁" that the tokenizer
    # inserts after the image has no character of its own: its offsets fall on the placeholder)
    text_offsets = [(a, b) for token, (a, b) in zip(ids, offsets, strict=True) if token not in (1, IMAGE_ID)]
    expanded = prompt.replace("<image>", "<image>" * PLAIN_TOKENS)
    outside = [(a, b) for a, b in text_offsets if b <= start or a >= end]
    assert "".join(expanded[a:b] for a, b in outside).replace(" ", "") == "thecatsat"


def test_return_length(processor):
    out = processor(images=[image(40, 25)], text=["<image>\nWhat?", "the cat"], return_length=True)
    assert out["length"] == [len(ids) for ids in out["input_ids"]]


def test_truncation_allowed_unless_an_image_is_cut(processor, slow):
    prompt = "<image>\nthe cat sat on the mat and the dog sat on the log"
    full = chunkwise_ids(slow, prompt, IMAGE_ID, [PLAIN_TOKENS])
    out = processor(images=[image(40, 25)], text=prompt, truncation=True, max_length=PLAIN_TOKENS + 4)
    assert out["input_ids"][0] == full[: PLAIN_TOKENS + 4]
    with pytest.raises(ValueError, match="image 0 of prompt 0"):
        processor(images=[image(40, 25)], text=prompt, truncation=True, max_length=PLAIN_TOKENS)
    two = "a <image> b <image> the cat sat on the mat"
    with pytest.raises(ValueError, match="image 1 of prompt 1"):
        processor(images=[image(9, 9)] * 3, text=["<image>", two], truncation=True, max_length=PLAIN_TOKENS + 8)
    left = copy.deepcopy(processor)
    left.tokenizer.truncation_side = "left"  # reaches the first image first
    with pytest.raises(ValueError, match="image 0 of prompt 0"):
        left(images=[image(9, 9)] * 2, text="a <image><image> c", truncation=True, max_length=2 * PLAIN_TOKENS)
    with pytest.raises(ValueError, match="image 1 of prompt 0"):  # adjacent images: one run of tokens, two images
        processor(images=[image(9, 9)] * 2, text="a <image><image> c", truncation=True, max_length=2 * PLAIN_TOKENS)


def outcome(processor, request):
    """The ids of one call, or its error message."""
    images, text = request
    try:
        return processor(images=images, text=text, truncation=True, max_length=2 * PLAIN_TOKENS + 2)["input_ids"]
    except ValueError as error:
        return str(error)


# prompts of one and two rows, images adjacent or not; the truncation cuts an image in some of them
CONCURRENT_REQUESTS = [
    ([image(9, 9)], "a <image> b"),
    ([image(9, 9)] * 3, ["<image><image> the cat sat on the mat", "<image> c"]),
    ([image(40, 25)] * 2, "a <image> b <image> c d e f g h i j k"),
    ([image(9, 9)] * 4, ["<image>", "<image>", "x <image><image>"]),
]


def test_a_call_leaves_the_processor_as_it_was(processor):
    """No state between calls: after calls that succeed and calls whose truncation cuts an image, the processor
    holds the same attributes, the same objects, as before."""
    before = dict(vars(processor))
    outcomes = [outcome(processor, request) for request in CONCURRENT_REQUESTS]
    assert any(isinstance(result, str) for result in outcomes) and any(isinstance(r, list) for r in outcomes)
    assert vars(processor).keys() == before.keys()
    assert all(vars(processor)[name] is value for name, value in before.items())


def test_concurrent_calls_give_the_results_of_one_at_a_time_calls(processor):
    """A processor shared by threads (a server's, a data loader's) mixes no calls: each call's truncation check
    sees its own prompts' images. (Every call uses the same tokenizer settings: Transformers' fast tokenizer sets
    truncation and padding on its shared backend at each call.)"""
    from concurrent.futures import ThreadPoolExecutor

    expected = [outcome(processor, request) for request in CONCURRENT_REQUESTS]
    assert [row.count(IMAGE_ID) for row in expected[1]] == [2 * PLAIN_TOKENS, PLAIN_TOKENS]  # every image kept
    assert expected[2].startswith("Truncation cuts image 1 of prompt 0:")
    assert expected[3].startswith("Truncation cuts image 1 of prompt 2:")
    requests = CONCURRENT_REQUESTS * 30
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda request: outcome(processor, request), requests))
    assert results == expected * 30


# ------------------------------------------------------------------------------------------------ typed keyword arguments
def test_image_and_video_kwargs_reach_their_processors_flat_or_per_modality(processor):
    """`num_crops` / `hd_layout` reach the image processor, `num_frames` / `frames_per_row` the video processor.

    A 9x9 image with num_crops=9 gets the candidate grid of least waste, (1, 2): HD at p = 56 / 14 = 4 that is
    p*p + p*h*(p*w + 1) = 16 + 4*2*5 = 56 tokens, and its views are padded to (1 + 9) * (1 + 3*3) = 100. Four of
    eight 8x10 frames, four to a row, make one 8x40 grid image."""
    for kwargs in ({"num_crops": 9, "hd_layout": True}, {"images_kwargs": {"num_crops": 9, "hd_layout": True}}):
        out = processor(images=[image(9, 9)], text="<image>", return_tensors="np", **kwargs)
        assert (out["input_ids"][0] == IMAGE_ID).sum() == 56
        assert out["pixel_values"].shape == (1, 100, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    video = np.zeros((8, 8, 10, 3), dtype=np.uint8)
    for kwargs in ({"num_frames": 4, "frames_per_row": 4}, {"videos_kwargs": {"num_frames": 4, "frames_per_row": 4}}):
        assert processor(text="<video>", videos=[video], **kwargs)["image_sizes"].tolist() == [[8, 40]]
    assert processor(text="<video>", videos=[video])["image_sizes"].tolist() == [[24, 20]]  # 6 frames, 2 to a row


def test_ill_typed_and_unknown_kwargs_are_handled_as_transformers_does(processor):
    """DeepStack's own keys are typed like Transformers' own (`do_rescale`, `num_frames`): a value of the wrong
    type fails the same way; an unknown key is ignored with Transformers' warning."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    def failure(**kwargs):
        with pytest.raises(Exception) as error:
            processor(images=[image(9, 9)], text="<image> <video>", videos=[np.zeros((2, 8, 8, 3), np.uint8)], **kwargs)
        return type(error.value), str(error.value)

    standard, message = failure(do_rescale="yes")
    assert "do_rescale" in message
    for key, value in [("num_crops", "four"), ("hd_layout", "yes"), ("pad_to_max_views", 3), ("frames_per_row", "x")]:
        kind, message = failure(**{key: value})
        assert kind is standard and key in message
    assert failure(num_frames="x")[0] is standard

    expected = processor(images=[image(9, 9)], text="<image>")
    with CaptureLogger(logging.get_logger("transformers.processing_utils")) as captured:
        out = processor(images=[image(9, 9)], text="<image>", deepstack_unknown_option=3)
    assert "`deepstack_unknown_option` is not a valid argument for this processor and will be ignored" in captured.out
    assert out["input_ids"] == expected["input_ids"]
    np.testing.assert_array_equal(out["pixel_values"], expected["pixel_values"])


@pytest.mark.parametrize("empty", [None, [], ()])
def test_empty_videos_and_audio_are_accepted(processor, empty):
    out = processor(images=[image(40, 25)], text="<image> hi", videos=empty, audio=empty)
    assert out["input_ids"] == processor(images=[image(40, 25)], text="<image> hi")["input_ids"]


def test_audio_is_refused(processor):
    with pytest.raises(ValueError, match="images, videos and text; got `audio`"):
        processor(text="hi", audio=[np.zeros(1600, dtype=np.float32)])


def test_a_video_needs_its_marker(processor):  # videos themselves: tests/test_video_processing_deepstack.py
    with pytest.raises(ValueError, match=r"0 <video> marker\(s\) but 1 video\(s\)"):
        processor(text="hi", videos=[np.zeros((2, 8, 8, 3), dtype=np.uint8)])


def test_llava_attributes(processor, sp_model_path):
    assert processor.patch_size == TINY_PATCH_SIZE
    assert processor.image_seq_length == PLAIN_TOKENS
    assert processor.image_token == "<image>" and processor.image_token_id == IMAGE_ID
    hd = DeepStackProcessor(
        DeepStackImageProcessor(crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, hd_layout=True),
        processor.tokenizer,
    )
    assert hd.image_seq_length is None  # HD: the count depends on the image's grid


# ------------------------------------------------------------------------------------------------ assistant masks
def conversation(picture):
    return [
        {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A red cat."},
        {"role": "user", "content": "And the dog?"},
        {"role": "assistant", "content": "It sat."},
    ]


def masked_runs(ids, mask):
    runs, current = [], []
    for token, flag in zip(ids, mask, strict=True):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


MASKS_NEED = "Transformers >= 5.18 (5.17 computes assistant masks before the image expansion)"
needs_expanded_masks = pytest.mark.skipif(not ASSISTANT_MASKS_FOLLOW_IMAGE_EXPANSION, reason=MASKS_NEED)


@pytest.mark.skipif(ASSISTANT_MASKS_FOLLOW_IMAGE_EXPANSION, reason="the refusal is for releases before 5.18")
def test_assistant_masks_are_refused_where_the_release_computes_them_before_the_expansion(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]
    with pytest.raises(ValueError, match="5.18"):
        processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, images=[image(10, 10)]
        )


@needs_expanded_masks
@pytest.mark.parametrize("template", ["vicuna_v1", "phi3_instruct"])
def test_assistant_masks_cover_the_answers_and_their_end_token(processor, phi3_processor, template):
    proc = processor if template == "vicuna_v1" else phi3_processor
    end = "</s>" if template == "vicuna_v1" else "<|end|>"
    messages = conversation(image(40, 25))
    out = proc.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    assert len(mask) == len(ids)
    direct = proc(images=[image(40, 25)], text=proc.apply_chat_template(messages))
    assert ids == direct["input_ids"][0]  # the mask request changes no id
    runs = masked_runs(ids, mask)
    assert [proc.tokenizer.decode(run).strip() for run in runs] == [f"A red cat.{end}", f"It sat.{end}"]
    assert proc.image_token_id not in [token for run in runs for token in run]


@needs_expanded_masks
def test_batched_assistant_masks_with_right_padding(processor):
    batch = [conversation(image(40, 25)), conversation(image(25, 40))[:2]]
    out = processor.apply_chat_template(
        batch, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        processor_kwargs={"padding": True, "padding_side": "right"}, return_tensors="pt",
    )
    assert out["assistant_masks"].shape == out["input_ids"].shape
    assert not out["assistant_masks"][out["attention_mask"] == 0].any()
    assert [len(masked_runs(ids.tolist(), mask.tolist())) for ids, mask in zip(out["input_ids"], out["assistant_masks"])] == [2, 1]


# ------------------------------------------------------------------------------------------------ TRL
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install trl)")
def test_trl_sft_trainer_assistant_only_loss(processor, tmp_path):
    """TRL's SFTTrainer trains DeepStack on a conversational image dataset with `assistant_only_loss=True`: its
    collator asks the processor for assistant masks and passes `truncation=True` with its default `max_length`."""
    import transformers
    from datasets import Dataset
    from packaging.version import Version
    from trl import SFTConfig, SFTTrainer

    if Version(transformers.__version__) < Version("5.18"):
        pytest.skip("TRL's assistant-only loss for vision datasets needs transformers >= 5.18 (TRL refuses older ones)")
    rows = []
    for size, color, answer in [((60, 40), (220, 30, 30), "red"), ((40, 90), (30, 30, 220), "blue")] * 2:
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "images": [Image.new("RGB", size, color)],
            }
        )
    config = tiny_deepstack_config(image_token_id=IMAGE_ID, text_config={"vocab_size": len(processor.tokenizer)})
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), assistant_only_loss=True, per_device_train_batch_size=2, max_steps=2,
        learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    # labels only on the answers and their "</s>": a handful of tokens per row, never an image token
    trained = batch["labels"] != -100
    assert 0 < trained.sum(1).max() < 8
    assert not (batch["input_ids"][trained] == IMAGE_ID).any()
    result = trainer.train()
    assert np.isfinite(result.training_loss)


def test_outputs_are_exactly_the_model_input_names(processor):
    """What the model's forward takes, nothing else (the image processor's `num_image_tokens` stays behind), and
    every value a tensor when `return_tensors` is given, also through `text_kwargs`."""
    out = processor(images=[image(40, 25)], text="<image> hi", return_tensors="pt", text_kwargs={})
    assert set(out) == set(processor.model_input_names) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    assert all(isinstance(value, torch.Tensor) for value in out.values())
