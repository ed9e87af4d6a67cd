"""SentencePiece helpers: a Llama-family ``tokenizer.model`` as a Transformers fast tokenizer with the original ids.

* :func:`tokenizer_from_sentencepiece` turns any Llama-family ``tokenizer.model`` into a Transformers fast
  ``LlamaTokenizer`` (a ``tokenizer.json`` on save) that gives the ids of the original slow
  ``LlamaTokenizer(legacy=False)``: BOS added, no EOS, no dummy prefix after special tokens, pad = ``<unk>``,
  with the ``<image>`` placeholder added as a special token and ``padding_side="left"`` for generation.

Two differences between every fast Llama tokenizer and the slow one remain, both at the start of a text: one
starting with a space (or a literal ``▁``), and one starting with an added token that the slow tokenizer does
not count among its special tokens (Phi-3's chat tokens), each get one ``▁`` piece fewer from the fast
tokenizer. :func:`slow_compatible_text` undoes both; :class:`~deepstack_hf.DeepStackProcessor` applies it to
every chunk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tokenizers import AddedToken, pre_tokenizers

SPIECE_UNDERLINE = "\u2581"


def tokenizer_from_sentencepiece(
    model_path: str | os.PathLike,
    image_token: str | None = "<image>",
    extra_special_tokens: Sequence[str | AddedToken] = (),
    pad_token: str | None = "<unk>",
    padding_side: str = "left",
    chat_template: str | None = None,
    model_max_length: int | None = None,
):
    """Build a Transformers fast ``LlamaTokenizer`` from a Llama-family SentencePiece ``tokenizer.model``.

    Args:
        model_path: the SentencePiece model (BPE, Llama layout: ``<unk>``, ``<s>``, ``</s>`` at ids 0, 1, 2).
        image_token: placeholder added as a special token after the model's pieces (id ``len(sp_model)`` when
            it is the first added token); ``None`` adds nothing.
        extra_special_tokens: more tokens to add after ``image_token``, in order (e.g. Phi-3's ``<|end|>``,
            ``<|user|>``...). Strings become special ``AddedToken(normalized=False)``; pass ``AddedToken``
            objects to control ``lstrip``/``rstrip``. Tokens already in the vocabulary keep their id.
        pad_token: the original uses ``<unk>`` (id 0), so no new id is needed; any other string is added as a
            new special token if the vocabulary lacks it (the model's embedding matrix must then cover it).
        padding_side: ``"left"`` (default, for batched generation) or ``"right"`` (the original's training
            setting).
        chat_template: optional Jinja template stored with the tokenizer (the processor normally holds it).
        model_max_length: optional maximum length to record.

    Returns:
        A ``transformers.LlamaTokenizer`` (fast, ``tokenizers`` backend): ``legacy=False``, BOS added, no EOS.
        ``save_pretrained`` writes ``tokenizer.json`` and ``tokenizer_config.json`` (and the ``tokenizer.model``
        copy); ``AutoTokenizer.from_pretrained`` reloads it with the same ids.
    """
    from transformers import LlamaTokenizer

    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise ValueError(f"SentencePiece model {model_path!r} does not exist.")
    native = LlamaTokenizer.convert_to_native_format(vocab_file=model_path)
    init_kwargs = {
        "legacy": False,
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": padding_side,
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length is not None:
        init_kwargs["model_max_length"] = model_max_length
    tokenizer = LlamaTokenizer(**native, **init_kwargs)

    to_add = []
    if image_token is not None:
        to_add.append(image_token)
    to_add.extend(extra_special_tokens)
    if pad_token is not None and pad_token not in tokenizer.get_vocab() and pad_token not in map(str, to_add):
        to_add.append(pad_token)
    new_tokens = [
        token if isinstance(token, AddedToken) else AddedToken(token, special=True, normalized=False)
        for token in to_add
    ]
    if new_tokens:
        tokenizer.add_tokens(new_tokens, special_tokens=True)
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _prepends_on_first_section_only(tokenizer) -> bool:
    """Whether the tokenizer's backend uses Llama's non-legacy ``Metaspace(prepend_scheme="first")``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = getattr(backend, "pre_tokenizer", None)
    return isinstance(pre_tokenizer, pre_tokenizers.Metaspace) and pre_tokenizer.prepend_scheme == "first"


def slow_compatible_text(text: str, tokenizer) -> str:
    """Return ``text`` such that the fast ``tokenizer`` gives it the slow ``legacy=False`` Llama ids.

    The slow tokenizer (transformers 4.36-4.39, which the original code pins) always prepends ``▁`` to the text
    (after turning literal ``▁`` into spaces) and drops that ``▁`` again only when the text starts with one of
    its ``all_special_tokens`` (BOS/EOS/UNK/PAD and ``additional_special_tokens``). The fast ``Metaspace``
    pre-tokenizer differs in two cases, both mended here:

    * a text starting with a space or ``▁`` gets no extra ``▁``: one space is put in front;
    * a text starting with an added token that is *not* in ``all_special_tokens`` (Phi-3's ``<|system|>``,
      ``<|user|>``... unless listed as additional special tokens) gets no lone ``▁`` piece before it: a ``▁``
      is put in front.

    Any other text, and any tokenizer without ``Metaspace(prepend_scheme="first")``, is returned unchanged.
    """
    if not _prepends_on_first_section_only(tokenizer):
        return text
    if text[:1] in (" ", SPIECE_UNDERLINE):
        return " " + text
    specials = set(tokenizer.all_special_tokens)
    if any(text.startswith(token) for token in tokenizer.get_added_vocab() if token not in specials):
        return SPIECE_UNDERLINE + text
    return text


__all__ = ["slow_compatible_text", "tokenizer_from_sentencepiece"]
