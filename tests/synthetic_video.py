"""Synthetic videos for the video tests, written with PyAV: every frame shows its own number.

A frame's number is drawn as 12 bits in a 4 x 3 grid of solid blocks (row-major, most significant bit first,
white = 1, black = 0), big enough that H.264 at its default quality keeps every block on its side of mid-grey, so
that [`read_frame_number`] tells which frame a grid cell holds.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np

BITS_ACROSS, BITS_DOWN = 4, 3


def numbered_frame(number: int, width: int, height: int) -> np.ndarray:
    """`(height, width, 3)` uint8: `number` (< 4096) as 12 black / white blocks."""
    bits = [(number >> (BITS_ACROSS * BITS_DOWN - 1 - i)) & 1 for i in range(BITS_ACROSS * BITS_DOWN)]
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    for i, bit in enumerate(bits):
        row, column = divmod(i, BITS_ACROSS)
        top, bottom = row * height // BITS_DOWN, (row + 1) * height // BITS_DOWN
        left, right = column * width // BITS_ACROSS, (column + 1) * width // BITS_ACROSS
        frame[top:bottom, left:right] = 255 * bit
    return frame


def read_frame_number(cell: np.ndarray) -> int:
    """The number [`numbered_frame`] drew into `cell` (`(H, W, 3)`), read from the middle of each block."""
    height, width = cell.shape[:2]
    number = 0
    for i in range(BITS_ACROSS * BITS_DOWN):
        row, column = divmod(i, BITS_ACROSS)
        top, bottom = row * height // BITS_DOWN, (row + 1) * height // BITS_DOWN
        left, right = column * width // BITS_ACROSS, (column + 1) * width // BITS_ACROSS
        margin_y, margin_x = (bottom - top) // 4, (right - left) // 4
        block = cell[top + margin_y : bottom - margin_y, left + margin_x : right - margin_x]
        number = (number << 1) | int(block.mean() > 127)
    return number


def write_numbered_video(
    target,
    frame_count: int,
    width: int = 64,
    height: int = 48,
    rate: int = 25,
    container_format: str = "mp4",
    timestamps_ms: list[int] | None = None,
    display_rotation: int | None = None,
    gop_size: int | None = None,
) -> None:
    """Write `frame_count` numbered frames with H.264 (MPEG-4 part 2 for AVI) into `target` (a path or a binary
    file object).

    Args:
        timestamps_ms: each frame's presentation time in milliseconds (a variable frame rate); default `i / rate`.
        display_rotation: a display matrix rotation (degrees counter-clockwise, as `VideoFrame.rotation` reads it),
            written into the MP4 track header of `target` (a path) after the video is written, as a camera does.
        gop_size: frames between key frames (H.264 default: 250).
    """
    import av

    with av.open(target, mode="w", format=container_format) as container:
        stream = container.add_stream("mpeg4" if container_format == "avi" else "libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if timestamps_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        container.start_encoding()  # the header, even for a video without frames
        for number in range(frame_count):
            frame = av.VideoFrame.from_ndarray(numbered_frame(number, width, height), format="rgb24")
            if timestamps_ms is not None:
                frame.pts, frame.time_base = timestamps_ms[number], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if display_rotation is not None:
        set_mp4_rotation(Path(target), display_rotation)


def set_mp4_rotation(path: Path, degrees: int) -> None:
    """Write a rotation into the transformation matrix of the (only) `tkhd` box of an MP4 file.

    ISO/IEC 14496-12: nine big-endian 32-bit numbers `a b u c d v x y w`, 16.16 fixed point but `u v w` 2.30;
    a counter-clockwise rotation by `degrees` is `a = d = cos`, `b = -sin`, `c = sin` (FFmpeg's
    `av_display_rotation_set`), `w = 1`.
    """
    data = bytearray(path.read_bytes())
    box = data.index(b"tkhd")
    version = data[box + 4]
    matrix_at = box + (44 if version == 0 else 56)
    radians = math.radians(degrees)
    cos, sin = round(math.cos(radians) * 65536), round(math.sin(radians) * 65536)
    data[matrix_at : matrix_at + 36] = struct.pack(">9i", cos, -sin, 0, sin, cos, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


def decode_every_frame(path) -> list[np.ndarray]:
    """All frames of `path`, decoded one after the other with plain PyAV (the tests' reference decoding)."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
