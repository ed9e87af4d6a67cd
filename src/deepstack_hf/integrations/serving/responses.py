"""What `/v1/chat/completions` sends back: OpenAI's completion and chunk objects, server-sent events, stop strings."""

from __future__ import annotations

import json
import time
import uuid


class Reply:
    """The identity every object of one answer shares (`id`, `created`, `model`)."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model

    def completion(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def chunk(self, delta: dict | None = None, finish_reason: str | None = None, usage_counts: dict | None = None):
        """One server-sent event with a `chat.completion.chunk` (a usage-only chunk has no choices)."""
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        if usage_counts is not None:
            data.update(choices=[], usage=usage_counts)
        else:
            data["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]
        return event(data)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def event(data: dict | str) -> str:
    """A server-sent event carrying `data` (JSON, or a literal such as `[DONE]`)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class StopStringFilter:
    """Text as it streams in, cut before the stop string that is complete first (as `generate` stops when one is);
    a tail that may begin one is held back until the next piece tells."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops, self.pending, self.stopped = stops, "", False

    def feed(self, text: str) -> str:
        """The part of `text` (after what was held back) that can be sent now."""
        if self.stopped:
            return ""
        self.pending += text
        hits = [(index + len(stop), index) for stop in self.stops if (index := self.pending.find(stop)) >= 0]
        if hits:  # the stop string that was complete first ends the text
            out, self.pending, self.stopped = self.pending[: min(hits)[1]], "", True
            return out
        hold = max(
            (size for stop in self.stops for size in range(1, min(len(stop), len(self.pending) + 1))
             if self.pending.endswith(stop[:size])),
            default=0,
        )  # fmt: skip
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        """What is still held back, at the end of the text."""
        out, self.pending = self.pending, ""
        return out


__all__ = ["Reply", "StopStringFilter", "event", "usage"]
