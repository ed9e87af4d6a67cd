"""A tiny Llama-style SentencePiece model trained on the spot (tests, the offline demo, benchmarks).

:func:`train_tiny_sentencepiece` trains, in a fraction of a second and without any download, a small SentencePiece
BPE model laid out like Llama's ``tokenizer.model`` (``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2, byte fallback,
identity normalisation, no whitespace folding). It needs the ``sentencepiece`` trainer, so it lives outside the
runtime modules that a converted repository ships.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# Built-in training text: lowercase-heavy English about pictures and chat turns, so that a 300-piece model
# (259 of which are <unk>, <s>, </s> and the 256 byte pieces) still learns a few real merges.
_TINY_CORPUS = """the cat sat on the mat and the dog sat on the log
there is a small red car parked in front of the old house
what is in the image? the image shows a person riding a bike
describe the picture in detail. it is a sunny day at the beach
how many people are there in the photo? there are three people
the assistant gives helpful, detailed, and polite answers to the questions
a chat between a curious user and an artificial intelligence assistant
the user asks what color the sky is and the answer is blue
USER: what is on the table? ASSISTANT: a cup of tea and a book
there are two birds sitting on the tree next to the river
a green train is crossing the bridge over the water
the woman is holding an umbrella because it is raining
read the text on the sign and tell me what it says
the chart shows the price of apples rising every year
a boy throws a ball to his dog in the park
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: <image>
What is shown in this image? ASSISTANT: The image shows a red house, a tree and the sun.</s>
<|system|>
You are a helpful AI assistant.<|end|>
<|user|>
<|assistant|>
"""

# From this size on, every character of the corpus gets a piece of its own (ASCII never falls back to bytes).
_FULL_COVERAGE_VOCAB_SIZE = 512


def train_tiny_sentencepiece(
    model_path: str | os.PathLike,
    vocab_size: int = 300,
    corpus: Iterable[str] | None = None,
    model_type: str = "bpe",
) -> str:
    """Train a tiny Llama-style SentencePiece model and write it to ``model_path``.

    Args:
        model_path: where the ``.model`` file goes (parent folders are created; a ``.model`` suffix is added
            when missing). No ``.vocab`` file is left behind.
        vocab_size: total pieces, including ``<unk>``, ``<s>``, ``</s>`` and the 256 byte pieces (so at least
            about 300 with the built-in corpus). From 512 on, every character of the corpus is a piece of its
            own, so prompts in the chat templates never fall back to byte pieces; below, rare characters do.
        corpus: training lines; defaults to a small built-in English corpus.
        model_type: ``"bpe"`` (Llama's type, the default) or ``"unigram"``.

    Returns:
        The path of the written model, as a string.

    The trainer settings mirror Llama's ``tokenizer.model``: ``<unk>``=0, ``<s>``=1, ``</s>``=2, no pad piece,
    byte fallback, split digits, identity normalisation, ``add_dummy_prefix``, no whitespace folding.
    Training is deterministic and takes well under a second.
    """
    import sentencepiece as spm

    model_path = os.fspath(model_path)
    prefix = model_path[: -len(".model")] if model_path.endswith(".model") else model_path
    parent = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(parent, exist_ok=True)
    lines = [line for line in (corpus if corpus is not None else _TINY_CORPUS.splitlines()) if line.strip()]
    # Repeating the corpus only sharpens the counts; it does not change which pieces exist.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 10),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0 if vocab_size >= _FULL_COVERAGE_VOCAB_SIZE else 0.98,
        num_threads=1,
        minloglevel=2,
    )
    vocab_file = prefix + ".vocab"
    if os.path.exists(vocab_file):
        os.remove(vocab_file)
    return prefix + ".model"


__all__ = ["train_tiny_sentencepiece"]
