"""Reference for the original slow ``LlamaTokenizer(legacy=False)``, written with the ``sentencepiece`` library.

The rules: the model is loaded with ``add_dummy_prefix`` off, ``▁`` is prepended to the text, special tokens
(``<unk>``, ``<s>``, ``</s>``) are split off, a section starting with ``▁``/space is encoded behind a throw-away
``<unk>`` prefix, any other section is encoded as is, a lone leading ``▁`` before a special token is dropped,
and BOS is prepended.
"""

import re
from collections.abc import Callable

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

SPECIALS = ["<unk>", "<s>", "</s>"]


def slow_llama_encoder(sp_model_path: str) -> Callable[..., list[int]]:
    """``encode(text, add_bos=True) -> ids`` following the slow tokenizer's rules for this SentencePiece model."""
    proto = sentencepiece_model_pb2.ModelProto()
    with open(sp_model_path, "rb") as handle:
        proto.ParseFromString(handle.read())
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    unk_length = len(sp.encode("<unk>"))
    splitter = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")

    def encode(text: str, add_bos: bool = True) -> list[int]:
        pieces = []
        if text:
            for part in filter(None, splitter.split("\u2581" + text.replace("\u2581", " "))):
                if part in SPECIALS:
                    pieces.append(part)
                elif part.startswith(("\u2581", " ")):
                    pieces += sp.encode("<unk>" + part, out_type=str)[unk_length:]
                else:
                    pieces += sp.encode(part, out_type=str)
            if len(pieces) > 1 and pieces[0] == "\u2581" and pieces[1] in SPECIALS:
                pieces = pieces[1:]
        return ([1] if add_bos else []) + [sp.piece_to_id(piece) for piece in pieces]

    return encode
