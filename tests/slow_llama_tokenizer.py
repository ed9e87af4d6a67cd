"""Reference for the original slow ``LlamaTokenizer(legacy=False)``, written with the ``sentencepiece`` library.

The rules of transformers 4.36-4.39 (which the original code pins): the model is loaded with ``add_dummy_prefix``
off; every ``▁`` of the text becomes a space and one ``▁`` is prepended; the text is split at the added tokens
(``<unk>``, ``<s>``, ``</s>`` and any others, longest first), an ``rstrip`` / ``lstrip`` token stripping the
whitespace of the piece after / before it; a piece starting with ``▁``/space is encoded behind a throw-away
``<unk>`` prefix, any other piece as is; a lone leading ``▁`` is dropped when one of the ``special_tokens``
follows; BOS is prepended. The original then tokenizes a prompt chunk by chunk between its ``<image>`` markers
(:func:`chunkwise_ids`).
"""

import re
from collections.abc import Callable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

SPECIALS = ["<unk>", "<s>", "</s>"]


def slow_llama_encoder(
    sp_model_path: str,
    added_tokens: dict[str, tuple[int, bool, bool]] | None = None,
    special_tokens: Sequence[str] = (),
) -> Callable[..., list[int]]:
    """``encode(text, add_bos=True) -> ids`` following the slow tokenizer's rules for this SentencePiece model.

    Args:
        sp_model_path: the SentencePiece model.
        added_tokens: tokens beyond the model's pieces, ``content -> (id, lstrip, rstrip)``.
        special_tokens: added tokens the slow tokenizer counts among ``all_special_tokens`` (besides ``<unk>``,
            ``<s>``, ``</s>``): no lone ``▁`` is kept in front of them.
    """
    proto = sentencepiece_model_pb2.ModelProto()
    with open(sp_model_path, "rb") as handle:
        proto.ParseFromString(handle.read())
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    unk_length = len(sp.encode("<unk>"))
    added = {token: (sp.piece_to_id(token), False, False) for token in SPECIALS}
    added.update(added_tokens or {})
    specials = set(SPECIALS) | set(special_tokens)
    splitter = re.compile("(" + "|".join(map(re.escape, sorted(added, key=len, reverse=True))) + ")")

    def encode(text: str, add_bos: bool = True) -> list[int]:
        pieces = []
        if text:
            parts = splitter.split("\u2581" + text.replace("\u2581", " "))
            for index, part in enumerate(parts):
                if part not in added:
                    continue
                _, lstrip, rstrip = added[part]
                if rstrip and index + 1 < len(parts):
                    parts[index + 1] = parts[index + 1].lstrip()
                if lstrip and index > 0 and parts[index - 1] not in added:
                    parts[index - 1] = parts[index - 1].rstrip()
            for part in filter(None, parts):
                if part in added:
                    pieces.append(part)
                elif part.startswith(("\u2581", " ")):
                    pieces += sp.encode("<unk>" + part, out_type=str)[unk_length:]
                else:
                    pieces += sp.encode(part, out_type=str)
            if len(pieces) > 1 and pieces[0] == "\u2581" and pieces[1] in specials:
                pieces = pieces[1:]
        ids = [added[piece][0] if piece in added else sp.piece_to_id(piece) for piece in pieces]
        return ([1] if add_bos else []) + ids

    return encode


def chunkwise_ids(
    encode: Callable[..., list[int]], prompt: str, image_token_id: int, tokens_per_image: Sequence[int]
) -> list[int]:
    """The original ``tokenizer_image_token``: every ``<image>``-separated chunk encoded on its own, BOS on the
    first chunk only, each marker replaced by its image's tokens."""
    chunks = prompt.split("<image>")
    ids = encode(chunks[0])
    for count, chunk in zip(tokens_per_image, chunks[1:], strict=True):
        ids = ids + [image_token_id] * count + encode(chunk, add_bos=False)
    return ids
