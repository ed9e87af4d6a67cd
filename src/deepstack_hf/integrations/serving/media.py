"""Reading a request's images and videos within the server's limits, off the event loop.

A media reference is one of

* an `http(s)://` URL: downloaded with `media_fetch.fetch_url` (total deadline, byte limit, redirects not followed
  unless allowed, `--allowed-media-domains`);
* a `data:<type>;base64,<payload>` URI: its size is checked before decoding;
* a `file://` URL: read only under `--allowed-local-media-path`, after resolving links; every local source that
  cannot be served (missing, outside the folder, a folder, unreadable, too large, not an image) gets the same
  error, so clients cannot probe the disk.

Anything else (a bare path, another scheme) is refused. Reading runs in a small thread pool of its own, so a slow
source never holds the event loop (`/health` and other requests go on), and the wait is cut at the media deadline.
Images are then opened lazily ([`open_image`], in the same thread): only the header is read, so the size is known,
and checked against the pixel limit, before a single pixel is decoded ([`decode_image`] does that later).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from ...media_fetch import MediaFetchError, describe_source, fetch_url, is_url
from .chat_request import MediaReference
from .errors import RequestError
from .settings import ServerSettings

_GRACE_S = 1.0  # a download may overrun its deadline by one blocked socket read; the request stops waiting here
_MAX_DATA_HEADER = 256


@dataclass
class Media:
    """The bytes of one image or video, with how to name it in errors."""

    reference: MediaReference
    label: str  # "image 2", "video 1"
    data: bytes
    image: Image.Image | None = None  # images: opened, header read, pixels not decoded

    @property
    def local(self) -> bool:
        return self.reference.url.startswith("file:")

    def unreadable_local(self) -> RequestError:
        """The one error every unservable local source gets."""
        return RequestError(
            f"{self.label}: {describe_source(self.reference.url)} is not a readable media file under the allowed "
            "local media path.",
            param=self.reference.param,
        )


class MediaReader:
    """Reads media references for requests, in a thread pool of `settings.fetch_workers` threads."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self._executor = ThreadPoolExecutor(settings.fetch_workers, thread_name_prefix="deepstack-media")

    async def read_all(self, references: list[MediaReference]) -> list[Media]:
        """Every reference read at the same time; the first failure is raised as a `RequestError`."""
        counts = {"image": 0, "video": 0}
        labels = []
        for reference in references:
            counts[reference.kind] += 1
            labels.append(f"{reference.kind} {counts[reference.kind]}")
        return list(await asyncio.gather(*(self.read(ref, label) for ref, label in zip(references, labels))))

    async def read(self, reference: MediaReference, label: str) -> Media:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._read_media, reference, label)
        try:
            return await asyncio.wait_for(work, self.settings.media_timeout_s + _GRACE_S)
        except asyncio.TimeoutError:
            raise RequestError(
                f"{label} could not be read within {self.settings.media_timeout_s:g} s.", param=reference.param
            ) from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ in the pool
    def _read_media(self, reference: MediaReference, label: str) -> Media:
        media = Media(reference, label, self._read(reference, label))
        if reference.kind == "image":
            media.image = open_image(media, self.settings.max_image_pixels)
        return media

    def _read(self, reference: MediaReference, label: str) -> bytes:
        url = reference.url
        if url.startswith("data:"):
            return self._data_uri(url, label, reference.param)
        if url.startswith("file:"):
            return self._local_file(reference, label)
        if is_url(url):
            try:
                return fetch_url(url, self.settings.fetch_limits)
            except MediaFetchError as error:
                raise RequestError(f"{label}: {error}", param=reference.param) from None
        raise RequestError(
            f"{label}: {describe_source(url)} is not an http(s), data: or file:// URL (bare paths are not accepted).",
            param=reference.param,
        )

    def _data_uri(self, url: str, label: str, param: str) -> bytes:
        limit = self.settings.max_media_bytes
        comma = url.find(",", 0, _MAX_DATA_HEADER)
        if comma < 0 or not url[:comma].endswith(";base64"):
            raise RequestError(f"{label}: only base64 data URIs (`data:<type>;base64,...`) are accepted.", param=param)
        if len(url) - comma - 1 > 4 * (limit // 3 + 1):
            raise RequestError(f"{label}: the data URI holds more than the limit of {limit} bytes.", param=param)
        try:
            data = base64.b64decode(url[comma + 1 :], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{label}: the data URI is not valid base64.", param=param) from None
        if len(data) > limit:
            raise RequestError(f"{label}: the data URI holds more than the limit of {limit} bytes.", param=param)
        return data

    def _local_file(self, reference: MediaReference, label: str) -> bytes:
        root = self.settings.allowed_local_media_path
        if root is None:
            raise RequestError(
                f"{label}: local files are not served (the server runs without --allowed-local-media-path).",
                param=reference.param,
            )
        unreadable = Media(reference, label, b"").unreadable_local()
        parts = urlsplit(reference.url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise unreadable
        try:
            path = Path(unquote(parts.path)).resolve(strict=True)
            if not path.is_relative_to(root) or not path.is_file():
                raise unreadable
            with open(path, "rb") as file:
                data = file.read(self.settings.max_media_bytes + 1)
        except (OSError, ValueError, RuntimeError):
            raise unreadable from None
        if len(data) > self.settings.max_media_bytes:
            raise unreadable
        return data


def open_image(media: Media, max_pixels: int) -> Image.Image:
    """`media` opened as an image, header only (no pixel decoded yet), its size within `max_pixels`.

    Raises:
        RequestError: not an image PIL can identify (for local files: the one local error), or too many pixels.
    """
    too_large = RequestError(
        f"{media.label} has more than the limit of {max_pixels} pixels.", param=media.reference.param
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(media.data))
    except Image.DecompressionBombError:
        raise too_large from None
    except Exception:  # PIL raises many types for data it cannot identify
        if media.local:
            raise media.unreadable_local() from None
        raise RequestError(f"{media.label} is not an image the server can read.", param=media.reference.param) from None
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            f"{media.label} is {width} x {height} pixels, more than the limit of {max_pixels} pixels.",
            param=media.reference.param,
        )
    return image


def decode_image(media: Media) -> Image.Image:
    """Decode the pixels of an image opened by [`open_image`] (in the generation worker: one request's at a time)."""
    image = media.image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception:
        if media.local:
            raise media.unreadable_local() from None
        raise RequestError(f"{media.label} could not be decoded.", param=media.reference.param) from None
    return image


__all__ = ["Media", "MediaReader", "decode_image", "open_image"]
