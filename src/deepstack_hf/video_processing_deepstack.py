"""Video processor for DeepStack: a video becomes one image, the grid of IG-VLM ("An Image Grid Can Be Worth a
Video", Kim et al. 2024), which the paper used for its zero-shot video QA (docs/video.md).

From a video of `T` frames IG-VLM takes `n = num_frames` frames (6 in the paper), `k * floor(T / n)` for
`k = 0..n-1`, resizes them all to the smallest frame's width and height, and tiles them row by row,
`frames_per_row = round(sqrt(n))` to a row (2 for 6 frames, so 3 rows), white cells filling an incomplete last row.
The grid then goes through the image path unchanged: [`DeepStackProcessor`] hands it to the image processor and
replaces the video's `<video>` marker by that image's `<image>` tokens.

[`ig_vlm_frame_indices`] and [`tile_frames`] are the two steps; [`DeepStackVideoProcessor`] applies them on
Transformers' `BaseVideoProcessor` hooks (`sample_frames`, `_decode_and_sample_videos`, `_prepare_input_videos`,
`_preprocess`), so it is saved, loaded and called like any Transformers video processor. It needs no torchvision:
frames are NumPy arrays, resized (only when they differ in size) with Pillow.
"""

import math

import numpy as np
from PIL import Image

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .image_inputs import to_rgb
from .video_decoding import decode_sampled_frames, is_encoded_video


WHITE = 255


def ig_vlm_frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Indices of the `num_frames` frames IG-VLM takes from a video of `total_frames` frames.

    IG-VLM's rule is `k * floor(T / n)` for `k = 0..n-1`. A video shorter than `n` frames, where that rule would give
    `n` copies of frame 0 (IG-VLM's own code divides by zero there and skips the video), gets `floor(k * T / n)`
    instead: every frame, in order, some of them twice, so that the grid keeps its `n` cells.

    Returns:
        int64 `(num_frames,)`, non-decreasing, each in `0..total_frames-1`.
    """
    if total_frames < 1:
        raise ValueError(f"A video needs at least one frame, got {total_frames}.")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    steps = np.arange(num_frames, dtype=np.int64)
    if total_frames >= num_frames:
        return steps * (total_frames // num_frames)
    return steps * total_frames // num_frames


def default_frames_per_row(num_frames: int) -> int:
    """IG-VLM's `round(sqrt(n))` frames to a row (2 for 6 frames)."""
    return max(1, round(math.sqrt(num_frames)))


def tile_frames(frames: list[np.ndarray], frames_per_row: int | None = None) -> np.ndarray:
    """IG-VLM's grid of `frames`: all resized to the smallest width and the smallest height among them (bilinear,
    only the frames of another size), tiled row-major `frames_per_row` to a row, white cells after the last frame.

    Args:
        frames: `(H_i, W_i, 3)` uint8 RGB arrays.
        frames_per_row: cells in a row; default `round(sqrt(len(frames)))`.

    Returns:
        uint8 `(rows * H, frames_per_row * W, 3)` with `rows = ceil(len(frames) / frames_per_row)`.
    """
    if not frames:
        raise ValueError("A grid needs at least one frame.")
    frames_per_row = default_frames_per_row(len(frames)) if frames_per_row is None else int(frames_per_row)
    if frames_per_row < 1:
        raise ValueError(f"frames_per_row must be at least 1, got {frames_per_row}.")
    height, width = min(frame.shape[0] for frame in frames), min(frame.shape[1] for frame in frames)
    rows = math.ceil(len(frames) / frames_per_row)
    grid = np.full((rows * height, frames_per_row * width, 3), WHITE, dtype=np.uint8)
    for index, frame in enumerate(frames):
        if frame.shape[:2] != (height, width):
            frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
        row, column = divmod(index, frames_per_row)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = frame
    return grid


def _is_frame(item) -> bool:
    return isinstance(item, Image.Image) or (hasattr(item, "ndim") and item.ndim == 3)


def is_frame_list(video) -> bool:
    """A non-empty list or tuple of frames (PIL images or 3-D arrays): one video."""
    return isinstance(video, (list, tuple)) and len(video) > 0 and all(_is_frame(item) for item in video)


def is_single_video(video) -> bool:
    """One video: an encoded video (path, URL, bytes, file object), a 4-D array or tensor, or a list of frames."""
    return is_encoded_video(video) or (hasattr(video, "ndim") and video.ndim == 4) or is_frame_list(video)


def make_video_list(videos) -> list:
    """A flat list of videos from one video, a list of videos, nested lists (one per prompt) or a 5-D batch."""
    if is_single_video(videos):
        return [videos]
    if hasattr(videos, "ndim") and videos.ndim == 5:
        return list(videos)
    if isinstance(videos, (list, tuple)):
        return [video for item in videos for video in make_video_list(item)]
    raise ValueError(
        f"Unsupported video {type(videos).__name__}: pass a path, an http(s) URL, the encoded bytes, a binary file "
        "object, a (T, H, W, 3) uint8 array or tensor, or a list of PIL images."
    )


class DeepStackVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    frames_per_row (`int`, *optional*, defaults to `round(sqrt(num_frames))`):
        Cells in a row of the grid; the last row is filled with white cells.
    """

    frames_per_row: int | None


class DeepStackVideoProcessor(BaseVideoProcessor):
    r"""
    Turns each video into the IG-VLM image grid of `num_frames` of its frames (see the module docstring).

    `video_processor(videos, **kwargs)` returns a `BatchFeature` with `video_grids`: one uint8 `(H, W, 3)` NumPy
    array per video (grids differ in size, so they stay a list whatever `return_tensors`), and `video_metadata`
    (total frames, frame rate, duration, sampled indices) with `return_metadata=True`. [`DeepStackProcessor`]
    feeds the grids to the image processor; the model never sees a video.

    A video is a local path, an http(s) URL (downloaded with `deepstack_hf.media_fetch.fetch_url`: 30 s, 64 MiB),
    the encoded file's bytes, a binary file object, a `(T, H, W, C)` array or tensor (uint8, or as images are
    accepted: `C` in 1, 3, 4) or a list of frames (PIL images or `(H, W, C)` arrays). Encoded videos are decoded
    with PyAV (the `video` extra), only the sampled frames (`deepstack_hf.video_decoding`), turned upright by the
    stream's rotation. Several videos may be given as a list, or nested one list per prompt.

    Args:
        num_frames (`int`, *optional*, defaults to 6): frames per grid, sampled by IG-VLM's rule
            ([`ig_vlm_frame_indices`]).
        frames_per_row (`int`, *optional*, defaults to `round(sqrt(num_frames))`): cells in a row of the grid.
        do_sample_frames (`bool`, *optional*, defaults to `True`): sample `num_frames` frames. `False` tiles every
            frame given (for frames sampled by the caller: arrays and frame lists only).
    """

    num_frames = 6
    frames_per_row = None
    do_sample_frames = True
    do_convert_rgb = True
    valid_kwargs = DeepStackVideoProcessorKwargs
    model_input_names = ["video_grids"]

    def __init__(self, **kwargs: Unpack[DeepStackVideoProcessorKwargs]):
        super().__init__(**kwargs)
        self._check_layout(self.num_frames, self.frames_per_row)

    @staticmethod
    def _check_layout(num_frames, frames_per_row) -> None:
        if num_frames is not None and int(num_frames) < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
        if frames_per_row is not None and int(frames_per_row) < 1:
            raise ValueError(f"frames_per_row must be at least 1, got {frames_per_row}.")

    # ------------------------------------------------------------------ BaseVideoProcessor hooks
    def sample_frames(self, metadata: VideoMetadata, num_frames: int | None = None, fps=None, **kwargs) -> np.ndarray:
        """IG-VLM's frame indices for a video of `metadata.total_num_frames` frames ([`ig_vlm_frame_indices`])."""
        if fps is not None:
            raise ValueError(
                "DeepStack samples a fixed number of frames (IG-VLM's rule); `fps` is not supported, set `num_frames`."
            )
        num_frames = self.num_frames if num_frames is None else num_frames
        self._check_layout(num_frames, None)
        return ig_vlm_frame_indices(int(metadata.total_num_frames), int(num_frames))

    def _decode_and_sample_videos(self, videos, video_metadata=None, do_sample_frames=None, sample_indices_fn=None):
        """Each video's sampled frames (a list of frames per video) and its `VideoMetadata`; encoded videos are
        decoded frame by frame, keeping only the sampled ones."""
        frames_per_video, metadata_per_video = [], []
        for video in make_video_list(videos):
            if is_encoded_video(video):
                if not do_sample_frames:
                    raise ValueError(
                        "do_sample_frames=False tiles every frame given; pass the frames you sampled (an array or a "
                        "list of PIL images), not an encoded video."
                    )

                def indices_for(known: dict, sample=sample_indices_fn):
                    return sample(metadata=VideoMetadata(**known))

                frames, metadata = decode_sampled_frames(video, indices_for)
                metadata = VideoMetadata(**metadata)
            else:
                frames = list(video)
                if not frames:
                    raise ValueError("A video given as frames has no frame.")
                metadata = VideoMetadata(total_num_frames=len(frames))
                indices = sample_indices_fn(metadata=metadata) if do_sample_frames else np.arange(len(frames))
                metadata.frames_indices = [int(index) for index in indices]
                frames = [frames[index] for index in metadata.frames_indices]
            frames_per_video.append(frames)
            metadata_per_video.append(metadata)
        return frames_per_video, metadata_per_video

    def _prepare_input_videos(self, videos, input_data_format=None, device=None, **kwargs) -> list[list[np.ndarray]]:
        """Every frame as an `(H, W, 3)` uint8 RGB array, by the rules images follow (`deepstack_hf.image_inputs`:
        PIL modes, transparency, value ranges and channel counts)."""
        prepared = []
        for frames in videos:
            rgb = []
            for frame in frames:
                if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.shape[-1:] == (3,):
                    rgb.append(frame)  # already (H, W, 3) uint8 RGB: a decoded frame or an array video's
                else:
                    rgb.append(np.asarray(to_rgb(frame, input_data_format)))
            prepared.append(rgb)
        return prepared

    def _preprocess(self, videos: list[list[np.ndarray]], frames_per_row: int | None = None, **kwargs) -> BatchFeature:
        """One IG-VLM grid per video ([`tile_frames`])."""
        self._check_layout(None, frames_per_row)
        grids = [tile_frames(frames, frames_per_row) for frames in videos]
        return BatchFeature(data={"video_grids": grids})


__all__ = [
    "DeepStackVideoProcessor",
    "DeepStackVideoProcessorKwargs",
    "default_frames_per_row",
    "ig_vlm_frame_indices",
    "is_frame_list",
    "make_video_list",
    "tile_frames",
]
