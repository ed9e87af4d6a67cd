"""Bounded downloads of media (images, videos) from http(s) URLs: one total deadline, one byte limit.

Every route that reads a URL (the image processor, the chat-template path, the video processor, `deepstack-serve`)
downloads through [`fetch_url`], so a remote that answers slowly, trickles bytes or sends too much is cut off the
same way everywhere:

* the whole download (connection, headers, body, redirects) must finish within `FetchLimits.deadline_s`; a body
  that trickles in a byte at a time is stopped at the deadline, not after each read's timeout;
* at most `FetchLimits.max_bytes` are read (a larger `Content-Length` is refused before the body is read);
* only `http` and `https`; redirects are followed only when `follow_redirects` is set, each target checked like the
  original URL; `allowed_domains` restricts the hosts (a domain allows itself and its subdomains).

The only bound not covered is the host-name lookup, which the operating system's resolver does with its own
timeout. Errors are `MediaFetchError` (a `ValueError`) naming at most the first 80 characters of the URL.

The processor's routes (image processor, both backends; `processor(images=url)`; `apply_chat_template` with an
image `url`, which Transformers hands to the image processor's `fetch_images`) download with
[`DEFAULT_LIMITS`]; assign another [`FetchLimits`] to `deepstack_hf.media_fetch.DEFAULT_LIMITS` to change them for
the process. `deepstack-serve` passes its own limits.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit


DEFAULT_DEADLINE_S = 30.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_MAX_READ_WAIT_S = 5.0  # the longest one socket operation may block: the deadline is overrun by at most this
_CHUNK_BYTES = 64 * 1024


class MediaFetchError(ValueError):
    """A URL that could not be downloaded within the limits (or is not allowed)."""


@dataclass(frozen=True)
class FetchLimits:
    """What one download may take.

    Attributes:
        deadline_s: seconds for the whole download, redirects included.
        max_bytes: most bytes of body read.
        follow_redirects: follow 3xx answers (each target is checked like the URL itself).
        allowed_domains: hosts that may be fetched (`example.com` allows `example.com` and `*.example.com`);
            `None` allows every host.
    """

    deadline_s: float = DEFAULT_DEADLINE_S
    max_bytes: int = DEFAULT_MAX_BYTES
    follow_redirects: bool = True
    allowed_domains: tuple[str, ...] | None = None

    def __post_init__(self):
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s!r}.")
        if not self.max_bytes > 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes!r}.")


DEFAULT_LIMITS = FetchLimits()  # what `fetch_url` uses when given no limits (read at each call)


def describe_source(source: str, limit: int = 80) -> str:
    """`source` cut to `limit` characters for error messages (a data URI or URL can be megabytes long)."""
    return repr(source if len(source) <= limit else source[:limit] + "...")


def is_url(source: str) -> bool:
    """Whether `source` is an http(s) URL (what [`fetch_url`] takes)."""
    return source.startswith(("http://", "https://"))


def check_url_allowed(url: str, limits: FetchLimits) -> None:
    """`MediaFetchError` unless `url` is http(s) and its host is allowed by `limits.allowed_domains`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MediaFetchError(f"Only http(s) URLs with a host can be fetched, got {describe_source(url)}.")
    if limits.allowed_domains is not None:
        host = parts.hostname.lower().rstrip(".")
        allowed = (domain.lower().strip(".") for domain in limits.allowed_domains)
        if not any(host == domain or host.endswith("." + domain) for domain in allowed):
            raise MediaFetchError(f"The host {host!r} is not among the allowed media domains.")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses redirects, or checks each redirect target against the limits."""

    def __init__(self, limits: FetchLimits, url: str):
        self.limits, self.url = limits, url

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not self.limits.follow_redirects:
            raise MediaFetchError(
                f"{describe_source(self.url)} answered with a redirect (HTTP {code}); redirects are not followed."
            )
        check_url_allowed(newurl, self.limits)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, limits: FetchLimits | None = None) -> bytes:
    """The body of `url`, downloaded within `limits` (defaults: 30 s in all, 64 MiB, redirects followed).

    Args:
        url: an `http://` or `https://` URL.
        limits: the [`FetchLimits`] of this download; default [`DEFAULT_LIMITS`].

    Returns:
        The response body.

    Raises:
        MediaFetchError: a refused URL or redirect, an HTTP error status, a network error, the deadline passed or
            the body larger than `limits.max_bytes`.
    """
    limits = limits or DEFAULT_LIMITS
    check_url_allowed(url, limits)
    deadline = time.monotonic() + limits.deadline_s
    opener = urllib.request.build_opener(_CheckedRedirects(limits, url))
    name = describe_source(url)
    try:
        with opener.open(url, timeout=min(limits.deadline_s, _MAX_READ_WAIT_S)) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
                raise MediaFetchError(f"{name} is {int(declared)} bytes, more than the limit of {limits.max_bytes}.")
            body = bytearray()
            while chunk := response.read1(_CHUNK_BYTES):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise MediaFetchError(f"{name} sent more than the limit of {limits.max_bytes} bytes.")
                if time.monotonic() > deadline:
                    raise MediaFetchError(f"{name} took longer than the {limits.deadline_s:g} s download deadline.")
            if time.monotonic() > deadline:
                raise MediaFetchError(f"{name} took longer than the {limits.deadline_s:g} s download deadline.")
            return bytes(body)
    except MediaFetchError:
        raise
    except urllib.error.HTTPError as error:
        raise MediaFetchError(f"Could not download {name}: HTTP {error.code}.") from error
    except (socket.timeout, TimeoutError) as error:
        raise MediaFetchError(f"{name} did not answer in time (download deadline {limits.deadline_s:g} s).") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise MediaFetchError(f"Could not download {name}: {reason}.") from error


__all__ = [
    "DEFAULT_LIMITS",
    "FetchLimits",
    "MediaFetchError",
    "check_url_allowed",
    "describe_source",
    "fetch_url",
    "is_url",
]
