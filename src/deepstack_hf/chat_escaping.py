"""Control tokens typed in chat messages stay text: escaping them in a conversation, finding them again.

A chat template writes its format's control tokens (`</s>`, `<|user|>`, `<|end|>`, `<image>`, ...) around the
messages' text, and the tokenizer turns every occurrence of a control token's string into that token, one a user
typed included: `"</s>"` in a message would end the turn, `"<image>"` would claim an image. [`escape_control_tokens`]
rewrites each control token inside message text into characters of Unicode's private-use plane 16 (code point
`0x100000 + ord(c)` for each character `c`), which no template, tokenizer or placeholder search matches; the
processor finds these runs again ([`ESCAPED_RUN`], [`unescape`]) and tokenizes each as the plain text it stands for
(`DeepStackProcessor.__call__`). Plane-16 characters a user sends are themselves read as such a run: they can only
ever become plain text.

Only text is escaped: a message's string content and the `text` of its text parts, in every role. Roles, part
types and media references are left alone (the template and the request checks deal with those).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PLANE_16 = 0x100000
_LAST_ESCAPABLE = 0xFFFD  # the highest code point whose escape (0x10FFFD) is still a private-use character

ESCAPED_RUN = re.compile("[\U00100000-\U0010fffd]+")
"""A run of escaped characters: one or more control tokens typed in a message, side by side."""


def control_token_pattern(tokens: Iterable[str]) -> re.Pattern | None:
    """A pattern matching any of `tokens` (longest first, so `<|endoftext|>` wins over a shorter token inside it);
    `None` when there are none."""
    tokens = sorted({token for token in tokens if token}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def _escape(match: re.Match) -> str:
    token = match.group(0)
    if any(ord(char) > _LAST_ESCAPABLE for char in token):
        raise ValueError(f"Control token {token!r} has characters outside the Basic Multilingual Plane.")
    return "".join(chr(_PLANE_16 + ord(char)) for char in token)


def unescape(run: str) -> str:
    """The text an [`ESCAPED_RUN`] stands for."""
    return "".join(chr(ord(char) - _PLANE_16) for char in run)


def _escape_content(content, pattern: re.Pattern):
    if isinstance(content, str):
        return pattern.sub(_escape, content)
    if isinstance(content, (list, tuple)):
        return [
            {**part, "text": pattern.sub(_escape, part["text"])}
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return content


def escape_control_tokens(conversation, pattern: re.Pattern | None):
    """A copy of `conversation` with every match of `pattern` in its messages' text escaped.

    Args:
        conversation: a list of messages (`{"role": ..., "content": str | list of parts}`), or a list of such lists
            (a batch); other shapes are returned unchanged.
        pattern: from [`control_token_pattern`]; `None` escapes nothing.

    Returns:
        The conversation (or batch) with new message dicts; the caller's objects are not changed.
    """
    if pattern is None or not isinstance(conversation, (list, tuple)):
        return conversation
    escaped = []
    for item in conversation:
        if isinstance(item, (list, tuple)):
            escaped.append(escape_control_tokens(item, pattern))
        elif isinstance(item, dict) and "content" in item:
            escaped.append({**item, "content": _escape_content(item["content"], pattern)})
        else:
            escaped.append(item)
    return escaped


__all__ = ["ESCAPED_RUN", "control_token_pattern", "escape_control_tokens", "unescape"]
