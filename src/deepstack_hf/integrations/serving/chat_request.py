"""An OpenAI chat-completions request body, checked field by field: taken as asked, or refused by name.

[`parse_chat_request`] turns the JSON body into a [`ChatRequest`]: the messages in the shape the chat template takes
(every content a list of `{"type": "text", "text"}`, `{"type": "image"}` and `{"type": "video"}` parts), the media
to read in order, and the generation settings. Nothing is silently dropped: an unknown field, role, part type or
part key is a [`RequestError`] (HTTP 400) naming it, and so is an OpenAI field this server does not implement set
to anything but its neutral value (`n` other than 1, `logprobs`, `tools`, `presence_penalty` other than 0, ...).
`user` is accepted and unused (an end-user identifier; it changes no output). Error messages name fields and
limits, never the client's values beyond a short prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ...media_fetch import describe_source
from .errors import RequestError

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS_ENTRIES = 1024

# OpenAI fields this server does not implement, with the values that ask for nothing (null is always fine).
_NEUTRAL_VALUES = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "parallel_tool_calls": (),
    "response_format": ({"type": "text"},),
    "store": (False,),
    "metadata": (),
    "service_tier": ("auto", "default"),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
    "verbosity": (),
}
_SUPPORTED = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "seed", "stop", "logit_bias", "user",
}  # fmt: skip


@dataclass(frozen=True)
class MediaReference:
    """One image or video of a request: where to read it and which field asked for it."""

    kind: str  # "image" or "video"
    url: str
    param: str


@dataclass
class ChatRequest:
    """A checked chat-completions request.

    Attributes:
        messages: the conversation for the chat template (contents as lists of text / image / video parts).
        media: the images and videos in the order the messages give them.
        stream: answer as server-sent events.
        include_usage: streamed: end with a chunk carrying the token counts (`stream_options.include_usage`).
        max_tokens: most tokens to generate; `None`: up to the context.
        temperature, top_p: sampling (`temperature` 0: greedy); `None`: the model's generation config.
        seed: seeds the sampling.
        stop: strings that end the answer (not included in it).
        logit_bias: token id -> value added to its logit (-100 bans it, as in OpenAI's API).
    """

    messages: list[dict]
    media: list[MediaReference]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def images(self) -> list[MediaReference]:
        return [item for item in self.media if item.kind == "image"]

    @property
    def videos(self) -> list[MediaReference]:
        return [item for item in self.media if item.kind == "video"]


def _name(value: str, limit: int = 40) -> str:
    return describe_source(str(value), limit)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(body: dict, name: str, minimum: int, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    in_range = isinstance(value, int) and value >= minimum and (maximum is None or value <= maximum)
    if not in_range or isinstance(value, bool):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise RequestError(f"`{name}` must be an integer {bound}.", param=name)
    return value


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value) or not (low < value if low_open else low <= value) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise RequestError(f"`{name}` must be a number in {interval}.", param=name)
    return float(value)


def _check_keys(item: dict, allowed: set[str], where: str) -> None:
    for key in item:
        if key not in allowed:
            raise RequestError(f"{where} has an unsupported key {_name(key)}.", param=where)


def _text_part(part: dict, where: str) -> dict:
    _check_keys(part, {"type", "text"}, where)
    if not isinstance(part.get("text"), str):
        raise RequestError(f"{where}.text must be a string.", param=f"{where}.text")
    return {"type": "text", "text": part["text"]}


def _media_part(part: dict, kind: str, where: str, media: list[MediaReference]) -> dict:
    key = f"{kind}_url"
    _check_keys(part, {"type", key}, where)
    reference = part.get(key)
    if isinstance(reference, dict):
        _check_keys(reference, {"url", "detail"} if kind == "image" else {"url"}, f"{where}.{key}")
        if reference.get("detail") not in (None, "auto"):
            raise RequestError(f"{where}.{key}.detail: only 'auto' is supported.", param=f"{where}.{key}.detail")
        reference = reference.get("url")
    if not isinstance(reference, str) or not reference:
        raise RequestError(f"{where}.{key}.url must be a non-empty string.", param=f"{where}.{key}.url")
    media.append(MediaReference(kind, reference, f"{where}.{key}.url"))
    return {"type": kind}


def _content(message: dict, where: str, media: list[MediaReference]) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise RequestError(f"{where}.content must be a string or a non-empty list of parts.", param=f"{where}.content")
    parts = []
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise RequestError(f"{part_where} must be an object with a string `type`.", param=part_where)
        if kind == "text":
            parts.append(_text_part(part, part_where))
        elif kind in ("image_url", "video_url"):
            if message["role"] != "user":
                raise RequestError(f"{part_where}: images and videos go in user messages only.", param=part_where)
            parts.append(_media_part(part, kind.removesuffix("_url"), part_where, media))
        else:
            raise RequestError(
                f"{part_where} has type {_name(kind)}; supported: 'text', 'image_url', 'video_url'.", param=part_where
            )
    return parts


def _messages(body: dict) -> tuple[list[dict], list[MediaReference]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list.", param="messages")
    parsed, media = [], []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object.", param=where)
        role = message.get("role")
        if role not in ROLES:
            shown = _name(role) if isinstance(role, str) else "missing"
            raise RequestError(
                f"{where}.role is {shown}; supported: 'system' (first only), 'user', 'assistant'.",
                param=f"{where}.role",
            )
        _check_keys(message, {"role", "content"}, where)
        if role == "system" and index > 0:
            raise RequestError(f"{where}: a system message may only come first.", param=f"{where}.role")
        parsed.append({"role": role, "content": _content(message, where, media)})
    if parsed[-1]["role"] != "user":
        raise RequestError("The last message must be a user message.", param=f"messages[{len(parsed) - 1}].role")
    return parsed, media


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(item, str) and 0 < len(item) <= MAX_STOP_CHARS for item in stops)
    ):
        raise RequestError(
            f"`stop` must be a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings of at most "
            f"{MAX_STOP_CHARS} characters.",
            param="stop",
        )
    return tuple(stops)


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise RequestError(
            f"`logit_bias` must be an object of at most {MAX_LOGIT_BIAS_ENTRIES} entries.", param="logit_bias"
        )
    parsed = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < vocab_size):
            raise RequestError(
                f"`logit_bias` key {_name(key)} is not a token id below {vocab_size}.", param="logit_bias"
            )
        if not _is_number(value) or not -100 <= value <= 100:
            raise RequestError("`logit_bias` values must be numbers in [-100, 100].", param="logit_bias")
        parsed[int(key)] = float(value)
    return parsed


def parse_chat_request(body, model_names: Sequence[str], vocab_size: int) -> ChatRequest:
    """Check a `/v1/chat/completions` body and return what it asks for.

    Args:
        body: the decoded JSON body.
        model_names: names the served model answers to, the one it is listed under first (`model` may also be
            left out).
        vocab_size: the tokenizer's size, for `logit_bias` keys.

    Raises:
        RequestError: the first problem found (404 for an unknown model, 400 otherwise).
    """
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    for name, value in body.items():
        if name in _SUPPORTED:
            continue
        if name not in _NEUTRAL_VALUES:
            raise RequestError(f"Unknown field {_name(name)}.", param=_name(name))
        if value is not None and value not in _NEUTRAL_VALUES[name]:
            raise RequestError(f"`{name}` is not supported by this server.", param=name)
    model = body.get("model")
    if model is not None and model not in model_names:
        shown = _name(model, 80) if isinstance(model, str) else "not a string"
        served = model_names[0]
        raise RequestError(
            f"The model {shown} does not exist; this server serves {served!r}.", status=404, param="model"
        )
    if body.get("n") is not None and (body["n"] != 1 or isinstance(body["n"], bool)):
        raise RequestError("`n` must be 1: this server gives one answer per request.", param="n")
    max_tokens = _integer(body, "max_tokens", 1)
    max_completion_tokens = _integer(body, "max_completion_tokens", 1)
    if None not in (max_tokens, max_completion_tokens) and max_tokens != max_completion_tokens:
        raise RequestError("`max_tokens` and `max_completion_tokens` disagree.", param="max_completion_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("`stream` must be true or false.", param="stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise RequestError("`stream_options` is only allowed with `stream: true`.", param="stream_options")
        if not isinstance(options, dict):
            raise RequestError("`stream_options` must be an object.", param="stream_options")
        _check_keys(options, {"include_usage"}, "stream_options")
        if not isinstance(options.get("include_usage", False), bool):
            raise RequestError("`stream_options.include_usage` must be true or false.", param="stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError("`user` must be a string.", param="user")
    messages, media = _messages(body)
    return ChatRequest(
        messages=messages,
        media=media,
        stream=bool(stream),
        include_usage=bool((options or {}).get("include_usage", False)),
        max_tokens=max_tokens if max_tokens is not None else max_completion_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0, low_open=True),
        seed=_integer(body, "seed", 0, 2**63 - 1),
        stop=_stop(body),
        logit_bias=_logit_bias(body, vocab_size),
    )


__all__ = ["ChatRequest", "MediaReference", "parse_chat_request"]
