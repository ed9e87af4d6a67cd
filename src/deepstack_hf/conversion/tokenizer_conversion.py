"""The checkpoint's SentencePiece `tokenizer.model` -> a fast tokenizer with the original ids, plus `<image>`.

The original slow `LlamaTokenizer` knows the SentencePiece pieces and the `added_tokens_decoder` entries of
`tokenizer_config.json` (Phi-3's `<|endoftext|>`, `<|user|>`, `<|end|>`...); those keep their ids (and their
`lstrip`/`rstrip`), `<image>` is added after them. The original's pad token is kept (`<unk>` for Vicuna). The
tokenizer alone gives the slow tokenizer's ids (`deepstack_hf.tokenization.match_slow_word_boundaries`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError

IMAGE_TOKEN = "<image>"


@dataclass
class ConvertedTokenizer:
    tokenizer: object
    original_length: int  # length of the original slow tokenizer: its logits stop there
    image_token_id: int
    pad_token_id: int
    bos_token_id: int | None
    eos_token_id: int | None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ConversionError(f"{path} does not parse: {error}") from None


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def convert_tokenizer(checkpoint_dir: Path, chat_template: str | None = None) -> ConvertedTokenizer:
    """Build the fast tokenizer (left padding) from the checkpoint's tokenizer files."""
    import sentencepiece as spm
    from tokenizers import AddedToken

    from ..tokenization import match_slow_word_boundaries, tokenizer_from_sentencepiece

    model_path = checkpoint_dir / "tokenizer.model"
    if not model_path.is_file():
        raise ConversionError(f"Checkpoint {checkpoint_dir} has no tokenizer.model (SentencePiece).")
    try:
        sp_size = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
    except Exception as error:
        raise ConversionError(f"{model_path} is not a readable SentencePiece model: {error}") from None
    config = _read_json(checkpoint_dir / "tokenizer_config.json")
    special_map = _read_json(checkpoint_dir / "special_tokens_map.json")

    added = []
    for key, entry in sorted((config.get("added_tokens_decoder") or {}).items(), key=lambda item: int(item[0])):
        if int(key) >= sp_size:
            added.append((int(key), entry))
    for expected, (token_id, entry) in enumerate(added, start=sp_size):
        if token_id != expected:
            raise ConversionError(
                f"tokenizer_config.json adds {entry['content']!r} at id {token_id}, leaving a gap after the "
                f"{sp_size} SentencePiece pieces; such ids cannot be reproduced."
            )
    original_length = sp_size + len(added)
    extra = [
        AddedToken(
            entry["content"],
            lstrip=bool(entry.get("lstrip")),
            rstrip=bool(entry.get("rstrip")),
            single_word=bool(entry.get("single_word")),
            normalized=bool(entry.get("normalized", False)),
            special=bool(entry.get("special", True)),
        )
        for _, entry in added
    ]
    if any(str(token) == IMAGE_TOKEN for token in extra):
        raise ConversionError(f"The original tokenizer already has {IMAGE_TOKEN!r}; cannot add the placeholder.")
    extra.append(AddedToken(IMAGE_TOKEN, special=True, normalized=False))

    pad = _token_text(config.get("pad_token")) or _token_text(special_map.get("pad_token")) or "<unk>"
    tokenizer = tokenizer_from_sentencepiece(
        model_path,
        image_token=None,
        extra_special_tokens=extra,
        pad_token=pad,
        padding_side="left",
        chat_template=chat_template,
        model_max_length=config.get("model_max_length"),
    )
    # The slow tokenizer's `all_special_tokens` (which decide where it drops its leading "▁") are the named ones
    # plus tokenizer_config.json's additional_special_tokens (special_tokens_map.json's are ignored when a
    # tokenizer_config.json exists, as transformers 4.39 does).
    additional = config.get("additional_special_tokens") if config else special_map.get("additional_special_tokens")
    if additional:
        # registered as the AddedToken objects above, so that they keep their lstrip / rstrip
        by_content = {str(token): token for token in extra}
        listed = [by_content.get(_token_text(token), _token_text(token)) for token in additional]
        tokenizer.add_special_tokens({"extra_special_tokens": listed}, replace_extra_special_tokens=False)
    for name in ("bos_token", "eos_token", "unk_token"):
        value = _token_text(config.get(name)) or _token_text(special_map.get(name))
        if value is not None and getattr(tokenizer, name) != value:
            setattr(tokenizer, name, value)
    if config.get("add_bos_token") is False:
        tokenizer.add_bos_token = False
    # which tokens are special (no word-boundary piece before them) is known only now
    match_slow_word_boundaries(tokenizer, IMAGE_TOKEN)

    for token_id, entry in added:
        got = tokenizer.convert_tokens_to_ids(entry["content"])
        if got != token_id:
            raise ConversionError(f"Converted tokenizer gives {entry['content']!r} id {got}, the original {token_id}.")
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id != original_length:
        raise ConversionError(f"{IMAGE_TOKEN!r} got id {image_token_id}, expected {original_length}.")
    return ConvertedTokenizer(
        tokenizer=tokenizer,
        original_length=original_length,
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def padded_vocab_size(checkpoint_rows: int, tokenizer_length: int, multiple: int = 64) -> int:
    """Embedding rows of the converted model: cover the tokenizer, rounded up to `multiple` (like llava-hf)."""
    needed = max(checkpoint_rows, tokenizer_length)
    if needed == checkpoint_rows and tokenizer_length <= checkpoint_rows:
        return checkpoint_rows
    return multiple * -(-needed // multiple)


__all__ = ["IMAGE_TOKEN", "ConvertedTokenizer", "convert_tokenizer", "padded_vocab_size"]
