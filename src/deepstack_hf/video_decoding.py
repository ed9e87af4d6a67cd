"""Decode the sampled frames of an encoded video, and only those, with PyAV.

[`decode_sampled_frames`] takes an encoded video (a local path, an http(s) URL, the file's bytes or a binary file
object) and a sampling rule (`metadata -> frame indices`) and returns the chosen frames as upright RGB arrays:

1. a first pass reads the packets of the video stream without decoding them: their presentation timestamps give
   the frame count `T` and the timestamp of every frame in presentation order, their key flags the key frames;
2. the rule picks indices in `0..T-1`;
3. a second pass decodes from the key frame before each chosen frame (seeking when that key frame lies ahead of
   the decoder, decoding on otherwise) up to the chosen frame, and keeps only the chosen frames. A seek that lands
   past the chosen frame (MPEG-TS seeks by byte position) is retried from the key frame before; the first key
   frame is reached by decoding from the start, without seeking.

So memory holds the chosen frames and the decoder's working set, never the video; time is one demux pass plus the
decoding of one group of pictures per chosen frame. A stream whose packets carry no timestamps (a raw H.264 or
MPEG elementary stream) is decoded once from the start instead, frames counted as they come.

Frames are turned upright by the stream's display matrix (its rotation; `ffmpeg` does the same by default). Frames
larger than Pillow's limit for one image (`PIL.Image.MAX_IMAGE_PIXELS`) are refused before decoding. URLs are
downloaded through [`~deepstack_hf.media_fetch.fetch_url`] (total deadline, byte limit). PyAV is imported when a
video is decoded; without it the `ImportError` names the `video` extra.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from io import BytesIO
from typing import IO

import numpy as np
from PIL import Image

from .media_fetch import FetchLimits, describe_source, fetch_url, is_url


VIDEO_EXTRA_HINT = "pip install 'deepstack-hf[video]'"


def import_av():
    """The `av` module (PyAV), or an `ImportError` that names the `video` extra."""
    try:
        import av
    except ImportError as error:
        raise ImportError(
            f"Decoding a video file needs PyAV, which is not installed: {VIDEO_EXTRA_HINT} (the `video` extra). "
            "Videos given as frames (a (T, H, W, 3) array or a list of PIL images) need no decoder."
        ) from error
    return av


def is_encoded_video(video) -> bool:
    """Whether `video` is something to decode: a path, a URL, bytes or a binary file object."""
    return isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read")


class _EncodedVideo:
    """An encoded video that can be opened more than once, and its name for error messages."""

    def __init__(self, video, fetch_limits: FetchLimits | None):
        if isinstance(video, os.PathLike):
            video = os.fspath(video)
        if isinstance(video, str):
            self.name = f"Video {describe_source(video)}"
            if is_url(video):
                self.file, self.start = BytesIO(fetch_url(video, fetch_limits)), 0  # bounded download
            elif os.path.isfile(video):
                self.file, self.start = video, None
            else:
                raise ValueError(f"{self.name} is not an existing file or an http(s) URL.")
        elif isinstance(video, (bytes, bytearray, memoryview)):
            data = bytes(video)
            self.name = f"The video bytes ({len(data)} bytes)"
            self.file, self.start = BytesIO(data), 0
        else:  # a binary file object; one that cannot seek is read into memory (two passes read it)
            self.name = f"Video file object {describe_source(str(getattr(video, 'name', type(video).__name__)))}"
            if not isinstance(video.read(0), bytes):
                raise ValueError(f"{self.name} is opened in text mode; open it in binary mode ('rb').")
            seekable = getattr(video, "seekable", lambda: False)()
            self.file = video if seekable else BytesIO(video.read())
            self.start = video.tell() if seekable else 0

    def open(self):
        """A new PyAV input container over the video, with its first video stream."""
        av = import_av()
        if self.start is not None:
            self.file.seek(self.start)
        try:
            container = av.open(self.file, mode="r")
        except (av.FFmpegError, OSError, ValueError) as error:
            raise ValueError(f"{self.name} could not be read as a video: {error}") from error
        if not container.streams.video:
            container.close()
            raise ValueError(f"{self.name} has no video stream.")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            container.close()
            raise ValueError(
                f"{self.name} has frames of {width}x{height} pixels, more than Pillow's limit for one image "
                f"({Image.MAX_IMAGE_PIXELS}, `PIL.Image.MAX_IMAGE_PIXELS`), which images are held to as well."
            )
        stream.thread_type = "AUTO"
        return container, stream


def _upright_rgb(frame) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB of a decoded frame, rotated as its display matrix says."""
    pixels = frame.to_ndarray(format="rgb24")
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


def _packet_timeline(container, stream) -> tuple[list[int | None], list[int]]:
    """Presentation timestamps of every packet of `stream` (demuxed, not decoded) and those of its key frames."""
    timestamps, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's closing empty packet
            continue
        timestamps.append(packet.pts)
        if packet.is_keyframe and packet.pts is not None:
            keys.append(packet.pts)
    return timestamps, sorted(keys)


class _SeekingDecoder:
    """Frames at given timestamps, in increasing order: decoded on from the previous one when no key frame lies
    between, else from the last key frame before the target (seeking there), else from the start of the video."""

    def __init__(self, source: _EncodedVideo, keys: list[int]):
        self.source, self.keys = source, keys
        self.container = self.stream = self.frames = self.position = self.last = None

    def close(self) -> None:
        if self.container is not None:
            self.container.close()

    def _from_start(self) -> None:
        self.close()
        self.container, self.stream = self.source.open()
        self.frames, self.position = self.container.decode(self.stream), None

    def _seek(self, timestamp: int) -> None:
        self.container.seek(timestamp, stream=self.stream, backward=True)
        self.frames, self.position = self.container.decode(self.stream), None

    def _decode_to(self, target: int, after_seek: bool):
        """The first frame at `target` or later (the last frame if the stream ends first); `_OVERSHOT` when the
        first frame after a seek already lies past `target` (MPEG-TS, for one, seeks by byte position)."""
        for frame in self.frames:
            if frame.pts is None:
                raise _NoTimestamps
            if after_seek and self.position is None and frame.pts > target:
                return _OVERSHOT
            self.position = frame.pts
            if frame.pts >= target:
                self.last = _upright_rgb(frame)
                return self.last
        return self.last

    def frame_at(self, target: int) -> np.ndarray | None:
        """The first frame whose timestamp is `target` or later (the last frame if the stream ends before)."""
        if self.position is not None and self.position >= target:
            return self.last
        index = bisect.bisect_right(self.keys, target) - 1
        if self.position is not None and (index < 0 or self.keys[index] <= self.position):
            return self._decode_to(target, after_seek=False)  # no key frame in between: decode on
        if self.container is not None:
            while index > 0:  # the first key frame is the start of the video: no seek needed there
                self._seek(self.keys[index])
                frame = self._decode_to(target, after_seek=True)
                if frame is not _OVERSHOT:
                    return frame
                index -= 1  # landed past the target: try the key frame before
        self._from_start()
        return self._decode_to(target, after_seek=False)


_OVERSHOT = object()


class _NoTimestamps(Exception):
    """Decoded frames without timestamps: decode sequentially instead."""


def _decode_by_timestamps(source: _EncodedVideo, order: list[int], keys: list[int], indices) -> list | None:
    """The frames at `indices` (in presentation order, `order` being every frame's timestamp, sorted)."""
    decoder = _SeekingDecoder(source, keys)
    try:
        chosen = {target: decoder.frame_at(target) for target in sorted({order[index] for index in indices})}
    finally:
        decoder.close()
    if any(frame is None for frame in chosen.values()):
        return None
    return [chosen[order[index]] for index in indices]


def _decode_sequentially(container, stream, indices) -> tuple[list[np.ndarray], int]:
    """The frames at `indices`, counted as the decoder outputs them (presentation order), and how many frames
    were decoded (all of them when the video ends before the last index)."""
    wanted, last_wanted, kept, count = set(int(i) for i in indices), max(indices), {}, 0
    for count, frame in enumerate(container.decode(stream), start=1):
        if count - 1 in wanted:
            kept[count - 1] = _upright_rgb(frame)
        if count - 1 >= last_wanted:
            break
    return [kept[int(i)] for i in indices if int(i) in kept], count


def decode_sampled_frames(
    video: str | os.PathLike | bytes | IO[bytes],
    sample_indices: Callable[[dict], Sequence[int]],
    fetch_limits: FetchLimits | None = None,
) -> tuple[list[np.ndarray], dict]:
    """Decode only the frames `sample_indices` picks from an encoded video.

    Args:
        video: a local path, an http(s) URL (downloaded with `fetch_url` within `fetch_limits`), the encoded file's
            bytes, or a binary file object (read from its current position).
        sample_indices: `metadata -> indices`, given `total_num_frames`, `fps` and `duration`; each index in
            `0..total_num_frames-1`, non-decreasing.
        fetch_limits: the download limits for a URL (default `FetchLimits()`: 30 s, 64 MiB).

    Returns:
        The chosen frames, `(H, W, 3)` uint8 RGB arrays upright (display matrix applied), one per index, and the
        metadata: `total_num_frames`, `fps` (average frame rate or `None`), `duration` (seconds or `None`),
        `height` and `width` (upright), `video_backend` `"pyav"` and `frames_indices`.

    Raises:
        ImportError: PyAV is not installed (the message names the `video` extra).
        ValueError: the source is not a file, URL, bytes or file object; it cannot be downloaded or read as a
            video; it has no video stream or no frame. The message names the video.
    """
    av = import_av()  # before any download
    source = _EncodedVideo(video, fetch_limits)
    try:
        container, stream = source.open()
        with container:
            timestamps, keys = _packet_timeline(container, stream)
            rate, duration = stream.average_rate, stream.duration
            duration = float(duration * stream.time_base) if duration and stream.time_base else None
        if not timestamps:
            raise ValueError(f"{source.name} contains no frames.")
        metadata = {"total_num_frames": len(timestamps), "fps": float(rate) if rate else None, "duration": duration}
        indices = [int(i) for i in sample_indices(dict(metadata))]
        frames = None
        if None not in timestamps:
            try:
                frames = _decode_by_timestamps(source, sorted(timestamps), keys, indices)
            except _NoTimestamps:
                frames = None
        if frames is None:  # no usable timestamps: count the frames while decoding from the start
            container, stream = source.open()
            with container:
                frames, decoded = _decode_sequentially(container, stream, indices)
            if len(frames) < len(indices) and decoded:  # fewer frames than packets: sample the true count again
                metadata["total_num_frames"] = decoded
                indices = [int(i) for i in sample_indices(dict(metadata))]
                container, stream = source.open()
                with container:
                    frames, _ = _decode_sequentially(container, stream, indices)
            if not frames or len(frames) < len(indices):
                raise ValueError(f"{source.name} contains no decodable frames.")
    except av.FFmpegError as error:
        raise ValueError(f"{source.name} could not be decoded: {error}") from error
    height, width = frames[0].shape[:2]
    metadata.update(height=height, width=width, video_backend="pyav", frames_indices=indices)
    return frames, metadata


__all__ = ["VIDEO_EXTRA_HINT", "decode_sampled_frames", "import_av", "is_encoded_video"]
