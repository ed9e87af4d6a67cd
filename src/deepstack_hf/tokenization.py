"""SentencePiece helpers: a Llama-family ``tokenizer.model`` as a Transformers fast tokenizer with the original ids.

* :func:`tokenizer_from_sentencepiece` turns any Llama-family ``tokenizer.model`` into a Transformers fast
  tokenizer (a ``tokenizer.json`` on save) that gives the ids of the original slow
  ``LlamaTokenizer(legacy=False)`` on any text: BOS added, no EOS, pad = ``<unk>``, with the ``<image>``
  placeholder added as a special token and ``padding_side="left"`` for generation.

The slow tokenizer puts SentencePiece's word-boundary piece ``▁`` in front of the whole text and then splits it
at its added tokens; Transformers' own fast Llama tokenizer (``Metaspace(prepend_scheme="first")``) prepends
``▁`` to the first text piece only when that piece does not already start with one. They differ when the text
starts with a space or ``▁`` and when it starts with an added token that the slow tokenizer does not count among
its special tokens (Phi-3's chat tokens). :func:`match_slow_word_boundaries` writes the slow rule into the
tokenizer's own normalizer, so ``tokenizer.json`` alone reproduces it (what users, vLLM and TRL load).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Regex, normalizers

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
    """Build a Transformers fast tokenizer from a Llama-family SentencePiece ``tokenizer.model``.

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
        A fast tokenizer (``PreTrainedTokenizerFast``, ``tokenizers`` backend) with Llama's BPE model, byte
        fallback, ``Metaspace`` pre-tokenizer and decoder, the slow tokenizer's start-of-text rule
        (:func:`match_slow_word_boundaries`), BOS added, no EOS. ``save_pretrained`` writes ``tokenizer.json`` and
        ``tokenizer_config.json``; ``AutoTokenizer.from_pretrained`` reloads it with the same ids.
    """
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise ValueError(f"SentencePiece model {model_path!r} does not exist.")
    # Transformers' Llama conversion gives the BPE model, Metaspace pre-tokenizer, decoder and BOS template; the
    # generic class keeps the normalizer written below when `AutoTokenizer` reloads tokenizer.json
    # (`LlamaTokenizer` would rebuild its own pipeline from the vocabulary).
    llama = LlamaTokenizer(**LlamaTokenizer.convert_to_native_format(vocab_file=model_path), legacy=False)
    init_kwargs = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": padding_side,
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length is not None:
        init_kwargs["model_max_length"] = model_max_length
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=llama.backend_tokenizer, **init_kwargs)

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
    return match_slow_word_boundaries(tokenizer, image_token)


def _onig_escape(text: str) -> str:
    """Escape ``text`` for an Oniguruma (``tokenizers.Regex``) pattern."""
    return "".join("\\" + char if char in "\\^$.|?*+()[]{}-" else char for char in text)


def _alternatives(tokens: Iterable[str]) -> str:
    tokens = sorted(tokens, key=len, reverse=True)
    return "(?:" + "|".join(map(_onig_escape, tokens)) + ")" if tokens else "(?!)"


def match_slow_word_boundaries(tokenizer, image_token: str | None = "<image>"):
    """Give a fast Llama-family tokenizer the word-boundary rules of the original's tokenization.

    The original tokenizes a prompt chunk by chunk between its ``<image>`` markers with the slow
    ``LlamaTokenizer(legacy=False)`` (transformers 4.36-4.39). That tokenizer turns every ``▁`` of a chunk into a
    space, puts one ``▁`` in front, splits at its added tokens (an ``lstrip``/``rstrip`` token eats the whitespace
    beside it) and encodes the pieces; a lone leading ``▁`` is dropped again when one of its
    ``all_special_tokens`` follows. In ``tokenizers`` terms, with every added token ``normalized=True`` so that
    the normalizer sees the whole text, the normalizer here

    1. replaces ``▁`` by a space;
    2. at the start of the text, prepends ``▁`` when the text starts with a space (the ``Metaspace``
       pre-tokenizer would not: that text already starts with its replacement character), unless only
       whitespace an ``lstrip`` special token eats comes before that token, and when the text starts with an
       added token that is not special in the slow tokenizer's sense (optionally after whitespace it eats);
    3. after ``image_token``, inserts ``▁`` when text follows that does not start with a special token (or with
       whitespace an ``lstrip`` special token eats): the start of the next chunk.

    Anywhere else ``Metaspace(prepend_scheme="first")`` already agrees. The tokenizer alone thus gives the slow
    tokenizer's ids on any text, and on a prompt whose ``<image>`` markers are expanded to their image tokens it
    gives the original's chunk-wise ids (BOS once, at the start).

    Args:
        tokenizer: a fast tokenizer built from a Llama-family SentencePiece model (``Metaspace`` pre-tokenizer).
        image_token: the placeholder added token (the original never tokenizes it); ``None`` for none.

    Returns:
        The same tokenizer, changed in place.

    One text still differs: a text that is exactly one non-special added token (``"<|end|>"``) gets no ``▁``
    (the slow tokenizer gives ``▁ <|end|>``), because the normalizer also normalizes that token's own content,
    which must stay unchanged for the token to be found. Tokens added later with ``normalized=False`` split the
    text before the normalizer runs; call this function again after adding tokens.
    """
    backend = tokenizer.backend_tokenizer
    added = backend.get_added_tokens_decoder()
    backend.add_tokens(
        [
            AddedToken(
                token.content,
                single_word=token.single_word,
                lstrip=token.lstrip,
                rstrip=token.rstrip,
                normalized=True,
                special=token.special,
            )
            for _, token in sorted(added.items())
            if not token.normalized
        ]
    )
    tokens = {token.content: token for token in added.values()}
    special = [content for content in tokens if content in set(tokenizer.all_special_tokens) | {image_token}]
    lstrip_special = [content for content in special if tokens[content].lstrip]
    plain = [content for content in tokens if content not in special]
    lstrip_plain = [content for content in plain if tokens[content].lstrip]
    text_start = (
        rf"\A(?:(?= )(?!\s+{_alternatives(lstrip_special)})"
        rf"|(?=\s+{_alternatives(lstrip_plain)}|{_alternatives(plain)}[\s\S]))"
    )
    rules = [text_start]
    if image_token is not None:
        after_image = rf"(?<={_onig_escape(image_token)})(?=[\s\S])"
        chunk_start = after_image + rf"(?!{_alternatives(special)}|\s+{_alternatives(lstrip_special)})"
        rules.append(chunk_start)
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(SPIECE_UNDERLINE, " "),
            normalizers.Replace(Regex("|".join(rules)), SPIECE_UNDERLINE),
        ]
    )
    return tokenizer


__all__ = ["match_slow_word_boundaries", "tokenizer_from_sentencepiece"]
