"""What one `deepstack-serve` process allows: media sources and sizes, request sizes, the queue, the context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...media_fetch import FetchLimits

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Limits and policies of a server; the defaults are the safe ones (`deepstack-serve --help` lists them).

    Attributes:
        served_model_name: the name `/v1/models` lists and requests' `model` must match.
        max_model_len: tokens of context the server allows (prompt + answer); `None`: the model's
            `max_position_embeddings`. A smaller value is taken; a larger one is refused at start.
        media_timeout_s: total seconds for reading one image or video (download included).
        max_media_bytes: most bytes of one image or video (a data URI's decoded size included).
        max_image_pixels: most pixels (width x height) of one image, read from its header before decoding.
        max_media_per_request: most images and videos in one request.
        follow_redirects: follow HTTP redirects when downloading media (each target checked again).
        allowed_media_domains: hosts media may be downloaded from (a domain allows its subdomains); `None`: any.
        allowed_local_media_path: the folder `file://` URLs may read from (after resolving links); `None`: local
            files are refused.
        max_request_bytes: most bytes of a request body.
        request_read_timeout_s: seconds a client has to send its request body.
        max_queue: requests that may wait while one generates; one more gets HTTP 503.
        fetch_workers: threads that read media (downloads, files, data URIs) off the event loop.
    """

    served_model_name: str
    max_model_len: int | None = None
    media_timeout_s: float = 10.0
    max_media_bytes: int = 20 * MIB
    max_image_pixels: int = 4096 * 4096
    max_media_per_request: int = 16
    follow_redirects: bool = False
    allowed_media_domains: tuple[str, ...] | None = None
    allowed_local_media_path: Path | None = None
    max_request_bytes: int = 64 * MIB
    request_read_timeout_s: float = 30.0
    max_queue: int = 16
    fetch_workers: int = 8

    def __post_init__(self):
        for name in ("media_timeout_s", "max_media_bytes", "max_image_pixels", "max_media_per_request",
                     "max_request_bytes", "request_read_timeout_s", "fetch_workers"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, got {self.max_queue!r}.")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len!r}.")
        if self.allowed_local_media_path is not None:
            folder = Path(self.allowed_local_media_path).resolve()
            if not folder.is_dir():
                raise ValueError(f"allowed_local_media_path {str(folder)!r} is not a folder.")
            object.__setattr__(self, "allowed_local_media_path", folder)

    @property
    def fetch_limits(self) -> FetchLimits:
        """The bounds of one media download."""
        return FetchLimits(
            deadline_s=self.media_timeout_s,
            max_bytes=self.max_media_bytes,
            follow_redirects=self.follow_redirects,
            allowed_domains=self.allowed_media_domains,
        )


__all__ = ["ServerSettings"]
