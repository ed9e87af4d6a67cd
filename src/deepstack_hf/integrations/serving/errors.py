"""The one error type of `deepstack-serve`'s request handling, answered as an OpenAI-style error body."""

from __future__ import annotations

from http import HTTPStatus

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}


class RequestError(Exception):
    """A request the server does not take, with the HTTP status and a reason for the client.

    The message must never carry more of the client's input than a short prefix (`media_fetch.describe_source`).

    Args:
        message: the reason, for the client.
        status: the HTTP status (400 unless said otherwise; 404 unknown model, 413 body too large, 503 queue full).
        param: the request field at fault (`"messages[0].content[1]"`), if any.
    """

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param = message, status, param

    def body(self) -> dict:
        """`{"error": {"message", "type", "param", "code"}}`, as OpenAI's API answers."""
        kind = _ERROR_TYPES.get(self.status) or HTTPStatus(self.status).phrase.lower().replace(" ", "_")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


__all__ = ["RequestError"]
