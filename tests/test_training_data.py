"""LLaVA-format data -> training batches: `load_llava_dataset` and `DeepStackDataCollator`.

The expected labels are the original's (`llava/train/train.py`, `LazySupervisedDataset` + `preprocess_v1` /
`preprocess_phi3` / `preprocess_plain`). They were found by running the original's data pipeline (transformers
4.39, in a separate environment) on these very conversations with these very tokenizers (the tiny 300-piece
SentencePiece of `build_synthetic_checkpoint`, read by its slow `LlamaTokenizer`): its `input_ids` equal ours
(image runs counted as one position) and its labels are the spans written out below, by hand, as the text their
token pieces spell. Where the original drops a sample ("tokenization mismatch": a `</s>` in a vicuna answer, an
`<|end|>` in a phi3 answer) the same rule is applied.
"""

import logging

import PIL.Image
import pytest
import torch

from deepstack_hf.chat_templates import PLAIN_TEMPLATE
from deepstack_hf.training import BadSampleError, DeepStackDataCollator, load_llava_dataset
from training_setup import needs_collator, supervised_runs, tiny_processor, write_llava_json

pytestmark = needs_collator

CONVERSATIONS = {
    "single": ("red.png", ["<image>\nWhat is in the image?", "A red house."]),
    "multi": ("blue.png", ["What color is the car?\n<image>", "Blue.", "And the sky?", "It is blue too."]),
    "text": (None, ["What is the cat on?", "the mat", "And the dog?", "the log"]),
    "digit": ("red.png", ["How many people? <image>", "3 people"]),
    "eos_in_answer": ("red.png", ["<image>\nSay it.", "the end</s> of it"]),
    "end_in_answer": (None, ["Write a tag", "<|end|> is a tag"]),
    "spaces": ("blue.png", ["  Look at <image> this  ", " two spaces ", "\nnext\n", "line\nbreak"]),
}

# The supervised runs, as text. vicuna_v1: everything after "ASSISTANT:" (its space included, a token of its own
# when the answer starts with a digit or an unmerged letter) through the turn's </s>.
VICUNA_RUNS = {
    "single": [" A red house.</s>"],
    "multi": [" Blue.</s>", " It is blue too.</s>"],
    "text": [" the mat</s>", " the log</s>"],
    "digit": [" 3 people</s>"],
    "eos_in_answer": [" the end</s> of it</s>"],  # the original drops this sample
    "end_in_answer": [" <|end|> is a tag</s>"],
    "spaces": ["  two spaces </s>", " line\nbreak</s>"],
}
# phi3_instruct: each answer (the whitespace <|assistant|> strips is no token) and its <|end|>, never <|assistant|>.
PHI3_RUNS = {
    "single": ["A red house.<|end|>"],
    "multi": ["Blue.<|end|>", "It is blue too.<|end|>"],
    "text": ["the mat<|end|>", "the log<|end|>"],
    "digit": ["3 people<|end|>"],
    "eos_in_answer": ["the end</s> of it<|end|>"],
    "end_in_answer": ["<|end|>is a tag<|end|>"],  # the original drops this sample; <|end|> strips the space after it
    "spaces": ["two spaces <|end|>", "line\nbreak<|end|>"],
}
# plain (pretraining): everything after the image: the caption chunk (from its word-boundary token) and "\n".
CAPTIONS = {"cap1": ("red.png", "a small red car parked in front of the old house"), "cap2": ("blue.png", "3 birds on a tree")}
PLAIN_RUNS = {"cap1": [" a small red car parked in front of the old house\n"], "cap2": [" 3 birds on a tree\n"]}


def llava_sample(sample_id, image, values):
    turns = [{"from": "human" if index % 2 == 0 else "gpt", "value": value} for index, value in enumerate(values)]
    return {"id": sample_id, "conversations": turns, **({"image": image} if image else {})}


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    root = tmp_path_factory.mktemp("processors")
    return {family: tiny_processor(root, family) for family in ("llama", "phi3")}


@pytest.fixture(scope="module")
def chat_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    samples = [llava_sample(name, image, values) for name, (image, values) in CONVERSATIONS.items()]
    return load_llava_dataset(write_llava_json(folder, samples))


def test_llava_json_becomes_trl_conversational_rows(chat_dataset):
    assert chat_dataset.column_names == ["id", "messages", "images"]
    rows = {row["id"]: row for row in chat_dataset}
    # the marker moved to the front of its turn (the text stripped), the image file kept as a path to decode later
    assert rows["multi"]["messages"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What color is the car?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the sky?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It is blue too."}]},
    ]
    assert [image["path"].endswith("blue.png") for image in rows["multi"]["images"]] == [True]
    assert rows["text"]["images"] == []
    # a turn without a marker keeps its whitespace, one with a marker is stripped (as the original does)
    assert rows["spaces"]["messages"][0]["content"][1]["text"] == "Look at  this"
    assert rows["spaces"]["messages"][1]["content"][0]["text"] == " two spaces "


def test_decoded_images_for_trl(tmp_path):
    sample = llava_sample("one", "red.png", ["<image>\nWhat?", "red"])
    image = load_llava_dataset(write_llava_json(tmp_path, [sample]), decode_images=True)[0]["images"][0]
    assert isinstance(image, PIL.Image.Image) and image.size == (60, 40) and image.getpixel((0, 0)) == (220, 30, 30)


@pytest.mark.parametrize("family, expected", [("llama", VICUNA_RUNS), ("phi3", PHI3_RUNS)])
def test_labels_are_the_originals_supervised_spans(processors, chat_dataset, family, expected):
    processor = processors[family]
    collator = DeepStackDataCollator(processor, padding_side="right")
    for row in chat_dataset:
        batch = collator([row])
        runs = supervised_runs(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
        assert runs == expected[row["id"]], row["id"]
        assert not (batch["labels"][0][batch["input_ids"][0] == processor.image_token_id] != -100).any()


def test_plain_pretraining_labels_are_the_caption_after_the_image(processors, tmp_path):
    samples = [llava_sample(name, image, ["<image>\nDescribe the image.", caption]) for name, (image, caption) in CAPTIONS.items()]
    dataset = load_llava_dataset(write_llava_json(tmp_path, samples))
    processor = processors["llama"]
    collator = DeepStackDataCollator(processor, chat_template=PLAIN_TEMPLATE)
    for row in dataset:
        batch = collator([row])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        tokens = (ids == processor.image_token_id).nonzero().flatten().tolist()
        assert ids[0] == processor.tokenizer.bos_token_id and tokens == list(range(1, 17))  # BOS, then the image
        assert supervised_runs(processor.tokenizer, ids, labels) == PLAIN_RUNS[row["id"]]
        assert (labels[17:] != -100).all()  # everything after the image


def test_batch_layout_with_padding_text_only_rows_and_several_images(processors, tmp_path):
    processor = processors["llama"]
    samples = [
        llava_sample("two-images", ["red.png", "blue.png"], ["<image> and <image>\nCompare.", "Red and blue."]),
        llava_sample("text", None, ["Hi", "Hello."]),
    ]
    dataset = load_llava_dataset(write_llava_json(tmp_path, samples))
    assert dataset[0]["messages"][0]["content"][:2] == [{"type": "image", "text": None}] * 2
    for side in ("left", "right"):
        batch = DeepStackDataCollator(processor, padding_side=side)(list(dataset))
        assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values", "image_sizes"}
        assert batch["pixel_values"].shape[0] == 2 and batch["image_sizes"].tolist() == [[40, 60], [90, 40]]
        assert ((batch["input_ids"] == processor.image_token_id).sum(1) == torch.tensor([32, 0])).all()
        pad = batch["attention_mask"] == 0
        assert pad[1].any() and not pad[0].any()
        assert pad[1, 0] if side == "left" else pad[1, -1]
        assert (batch["labels"][pad] == -100).all() and (batch["input_ids"][pad] == processor.tokenizer.pad_token_id).all()
        for index, runs in enumerate([[" Red and blue.</s>"], [" Hello.</s>"]]):
            assert supervised_runs(processor.tokenizer, batch["input_ids"][index], batch["labels"][index]) == runs


def test_max_length_cuts_text_from_the_end_never_an_image(processors, tmp_path, caplog):
    processor = processors["llama"]
    sample = llava_sample("long", "red.png", ["<image>\nWhat is in the image?", "A red house."])
    row = load_llava_dataset(write_llava_json(tmp_path, [sample]))[0]
    full = DeepStackDataCollator(processor)([row])
    length = full["input_ids"].shape[1]
    supervised = int((full["labels"] != -100).sum())
    with caplog.at_level(logging.WARNING, logger="deepstack_hf.training.collator"):
        cut = DeepStackDataCollator(processor, max_length=length - 3)([row])
    assert cut["input_ids"].tolist() == [full["input_ids"][0, : length - 3].tolist()]
    assert int((cut["labels"] != -100).sum()) == supervised - 3
    assert f"{length} tokens (16 of them image tokens) exceed max_length={length - 3}" in caplog.text
    assert "the last 3 text tokens are cut, 3 of them supervised" in caplog.text
    last_image = int((full["input_ids"][0] == processor.image_token_id).nonzero()[-1])
    with pytest.raises(BadSampleError, match=r"Sample long: its images end at token .* an image is never cut"):
        DeepStackDataCollator(processor, max_length=last_image)([row])


# ------------------------------------------------------------------------------------------------ bad data
BAD_SAMPLES = [
    ({"id": "missing", "image": "nowhere.png", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}]},
     r"Sample id 'missing': image file 'nowhere.png' not found"),
    ({"id": "no-marker", "image": "red.png", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}]},
     r"Sample id 'no-marker': has 0 <image> marker\(s\) but 1 image\(s\)"),
    ({"id": "two-markers", "image": "red.png", "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}]},
     r"Sample id 'two-markers': has 2 <image> marker\(s\) but 1 image\(s\)"),
    ({"id": "marker-no-image", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}]},
     r"Sample id 'marker-no-image': has 1 <image> marker\(s\) but 0 image\(s\)"),
    ({"id": "who", "conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "x"}]},
     r"Sample id 'who': turn 1 is from 'robot'; expected 'human' or 'gpt'"),
    ({"id": "empty", "conversations": []}, r"Sample id 'empty': has an empty conversation"),
    ({"id": "only-gpt", "conversations": [{"from": "gpt", "value": "x"}]}, r"Sample id 'only-gpt': has an empty conversation"),
    ({"id": "unanswered", "conversations": [{"from": "human", "value": "Hi"}]}, r"Sample id 'unanswered': ends with a human turn"),
    ({"id": "twice", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]},
     r"Sample id 'twice': turns must alternate"),
    ({"id": "corrupt", "image": "corrupt.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
     r"Sample id 'corrupt': image file 'corrupt.png' is not a readable image"),
    ({"conversations": "nope"}, r"Sample #0 \(no id\): 'conversations' is missing or not a list"),
]


@pytest.mark.parametrize("sample, message", BAD_SAMPLES, ids=[str(sample.get("id")) for sample, _ in BAD_SAMPLES])
def test_a_bad_sample_is_refused_by_id(tmp_path, sample, message):
    (tmp_path / "corrupt.png").write_bytes(b"this is not a PNG file")
    with pytest.raises(BadSampleError, match=message):
        load_llava_dataset(write_llava_json(tmp_path, [sample]))


def test_bad_samples_are_skipped_and_counted_when_asked(tmp_path, caplog):
    (tmp_path / "corrupt.png").write_bytes(b"this is not a PNG file")
    good = llava_sample("good", "red.png", ["<image>\nWhat?", "red"])
    samples = [good] + [sample for sample, _ in BAD_SAMPLES]
    with caplog.at_level(logging.WARNING, logger="deepstack_hf.training.llava_data"):
        dataset = load_llava_dataset(write_llava_json(tmp_path, samples), skip_bad_samples=True)
    assert dataset["id"] == ["good"]
    assert f"Skipped {len(BAD_SAMPLES)} bad sample(s) of {len(samples)}" in caplog.text
    assert "Sample id 'corrupt'" in caplog.text


def test_an_image_that_does_not_decode_is_named_or_skipped_by_the_collator(processors, tmp_path, caplog):
    processor = processors["llama"]
    samples = [llava_sample(name, "red.png", ["<image>\nWhat?", "red"]) for name in ("good", "cut")]
    dataset = load_llava_dataset(write_llava_json(tmp_path, samples))
    truncated = tmp_path / "truncated.png"  # a valid header, the pixel data cut short: found only when decoded
    truncated.write_bytes((tmp_path / "red.png").read_bytes()[:60])
    rows = list(dataset)
    rows[1]["images"] = [{"path": str(truncated), "bytes": None}]
    with pytest.raises(BadSampleError, match=r"Sample cut: image .*truncated.png' does not decode"):
        DeepStackDataCollator(processor)(rows)
    collator = DeepStackDataCollator(processor, skip_bad_samples=True)
    with caplog.at_level(logging.WARNING, logger="deepstack_hf.training.collator"):
        batch = collator(rows)
        batch_again = collator(rows)
    assert batch["input_ids"].shape[0] == batch_again["input_ids"].shape[0] == 1 and collator.skipped == 2
    assert "(1 skipped so far by this collator): Sample cut" in caplog.text
    assert "(2 skipped so far" in caplog.text
    with pytest.raises(BadSampleError, match="every sample of this batch is bad"):
        collator(rows[1:])


def test_a_template_without_generation_blocks_is_refused(processors):
    with pytest.raises(ValueError, match="generation"):
        DeepStackDataCollator(processors["llama"], chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
