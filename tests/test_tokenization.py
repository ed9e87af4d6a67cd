"""Tokenizer helpers: the fast tokenizer alone must give the ids of the original slow LlamaTokenizer(legacy=False).

The reference (tests/slow_llama_tokenizer.py) re-implements the slow rules with the ``sentencepiece`` library.
"""

import time

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from slow_llama_tokenizer import chunkwise_ids, slow_llama_encoder

from deepstack_hf.testing_utils.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece


@pytest.fixture(scope="module")
def sp_model_path(tmp_path_factory):
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("spm") / "tiny.model")


@pytest.fixture(scope="module")
def tokenizer(sp_model_path):
    return tokenizer_from_sentencepiece(sp_model_path)


@pytest.fixture(scope="module")
def slow_reference(sp_model_path):
    return slow_llama_encoder(sp_model_path)


def test_tiny_model_layout(sp_model_path):
    start = time.perf_counter()
    path = train_tiny_sentencepiece(sp_model_path.replace("tiny.model", "again.model"))
    assert time.perf_counter() - start < 5
    sp = spm.SentencePieceProcessor(model_file=path)
    assert sp.get_piece_size() == 300
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.id_to_piece(3) == "<0x00>" and sp.id_to_piece(258) == "<0xFF>"
    assert sp.encode("☃", out_type=str) == ["\u2581", "<0xE2>", "<0x98>", "<0x83>"]  # byte fallback
    assert any(len(sp.id_to_piece(i)) > 1 for i in range(259, 300))  # a few real merges
    # deterministic (the files differ only in the recorded model prefix)
    first = spm.SentencePieceProcessor(model_file=sp_model_path)
    assert [sp.id_to_piece(i) for i in range(300)] == [first.id_to_piece(i) for i in range(300)]


def test_tokenizer_settings(tokenizer):
    assert tokenizer.convert_tokens_to_ids("<image>") == 300
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.padding_side == "left"
    ids = tokenizer("the cat").input_ids
    assert ids[0] == 1 and ids[-1] != 2
    assert tokenizer("a <image> b").input_ids.count(300) == 1
    assert len(tokenizer) == 301


SAMPLES = [
    "the cat sat on the mat",
    "A chat between a curious user and an artificial intelligence assistant.",
    "\nWhat is in the image?",
    "\n",
    "",
    "café ☃ naïve 東京 🙂",
    "numbers 12345 and tabs\tand  double  spaces  ",
    "ASSISTANT: a cup of tea</s>USER: and?",
    "<s>hello",
    "x</s>",
    "<|end|>\n<|user|>\n",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_fast_matches_slow_rules(tokenizer, slow_reference, text):
    assert tokenizer(text).input_ids == slow_reference(text)
    assert tokenizer(text, add_special_tokens=False).input_ids == slow_reference(text, add_bos=False)


def test_plain_text_matches_sentencepiece(sp_model_path, tokenizer):
    sp = spm.SentencePieceProcessor(model_file=sp_model_path)
    for text in ["the cat", "\nWhat is it?", "café ☃", "a  b"]:
        assert tokenizer(text).input_ids == [1] + sp.encode(text)
    # the chunk after an image starts with the word-boundary piece
    assert tokenizer.convert_ids_to_tokens(tokenizer("\nWhat").input_ids[1:3]) == ["\u2581", "<0x0A>"]


@pytest.mark.parametrize(
    "text", [" the cat", "  two", "\u2581the", "\u2581", " </s>x", " ", "   ", "the cat ", "\t cat", " <s> x", "<s> x"]
)
def test_leading_spaces_and_word_boundary_character(tokenizer, slow_reference, text):
    assert tokenizer(text).input_ids == slow_reference(text)
    assert tokenizer(text, add_special_tokens=False).input_ids == slow_reference(text, add_bos=False)


# Whitespace-heavy alphabet: spaces, tabs, newlines, the word-boundary character, BOS/EOS/UNK inline, byte-fallback
# characters, and (Phi-3) chat tokens, one with rstrip, and one with lstrip.
LLAMA_ALPHABET = ["the", " ", "  ", "\n", "\t", "cat", "?", "é", "☃", "🙂", "\u2581", "</s>", "<s>", "<unk>", "1"]
PHI3_ADDED = {"<|end|>": (301, False, True), "<|user|>": (302, False, False), "<|x|>": (303, True, False)}
PHI3_ALPHABET = LLAMA_ALPHABET + list(PHI3_ADDED)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LLAMA_ALPHABET), max_size=10).map("".join))
def test_property_llama_fast_equals_slow(tokenizer, slow_reference, text):
    assert tokenizer(text).input_ids == slow_reference(text)
    # decoding gives the text back (the word-boundary character as the space it stands for)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text.replace("\u2581", " ")


@pytest.fixture(scope="module", params=[False, True], ids=["chat-tokens-not-special", "chat-tokens-special"])
def phi3_pair(request, sp_model_path):
    """(fast tokenizer, slow reference) with Phi-3-style added tokens; the slow tokenizer counts them among its
    special tokens only when tokenizer_config.json lists them as additional_special_tokens."""
    from tokenizers import AddedToken

    extra = [AddedToken(token, lstrip=lstrip, rstrip=rstrip, special=True, normalized=False)
             for token, (_, lstrip, rstrip) in PHI3_ADDED.items()]
    tokenizer = tokenizer_from_sentencepiece(sp_model_path, extra_special_tokens=extra)
    special = list(PHI3_ADDED) if request.param else []
    if special:
        from deepstack_hf.tokenization import match_slow_word_boundaries

        tokenizer.add_special_tokens({"extra_special_tokens": extra}, replace_extra_special_tokens=False)
        match_slow_word_boundaries(tokenizer)
    return tokenizer, slow_llama_encoder(sp_model_path, PHI3_ADDED, special)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PHI3_ALPHABET), max_size=10).map("".join))
def test_property_phi3_fast_equals_slow(phi3_pair, text):
    tokenizer, slow = phi3_pair
    special = "<|end|>" in tokenizer.all_special_tokens
    if text in PHI3_ADDED and not special:
        assert tokenizer(text).input_ids == [1, PHI3_ADDED[text][0]]  # documented: the slow one has a "▁" between
        return
    assert tokenizer(text).input_ids == slow(text)


def test_phi3_multi_turn_prompt(phi3_pair):
    tokenizer, slow = phi3_pair
    prompt = "<|user|>\nWhat is it?<|end|>\n<|assistant|>\nA cat.<|end|>\n<|user|>\n  And now? <|end|>\n"
    assert tokenizer(prompt).input_ids == slow(prompt)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(LLAMA_ALPHABET + ["<image>", "<image>"]), max_size=10).map("".join))
def test_property_image_prompts_follow_the_chunk_rule(tokenizer, slow_reference, prompt):
    """With one <image> token per marker, the tokenizer alone gives the original's chunk-wise ids."""
    expected = chunkwise_ids(slow_reference, prompt, 300, [1] * prompt.count("<image>"))
    assert tokenizer(prompt).input_ids == expected


def test_decode_round_trip(tokenizer):
    text = "the cat café ☃\nok"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_save_and_reload(tokenizer, tmp_path, slow_reference):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left" and loaded.pad_token_id == 0
    assert loaded.convert_tokens_to_ids("<image>") == 300
    for text in SAMPLES:
        assert loaded(text).input_ids == slow_reference(text)


def test_extra_special_tokens_and_new_pad(sp_model_path):
    tokenizer = tokenizer_from_sentencepiece(
        sp_model_path, extra_special_tokens=["<|end|>", "<|user|>"], pad_token="<pad>", padding_side="right"
    )
    assert tokenizer.convert_tokens_to_ids(["<image>", "<|end|>", "<|user|>", "<pad>"]) == [300, 301, 302, 303]
    assert tokenizer.pad_token_id == 303 and tokenizer.padding_side == "right"
    ids = tokenizer("hi<|end|>\n<|user|>\n").input_ids
    assert 301 in ids and 302 in ids


def test_missing_model_raises(tmp_path):
    with pytest.raises(ValueError):
        tokenizer_from_sentencepiece(tmp_path / "missing.model")
