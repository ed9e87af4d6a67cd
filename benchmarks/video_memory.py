"""Peak memory and time of turning a long video into its IG-VLM grid (`DeepStackVideoProcessor`).

The video processor decodes only what the six sampled frames need (docs/video.md): one pass over the packets
without decoding them, then, for each sampled frame, the frames from the key frame before it. This script checks
that on a long synthetic video:

1. it writes a long H.264 MP4 (default 10 minutes of 1280x720 at 30 frames per second, a key frame every 250
   frames, `ultrafast` preset and CRF 40 on mostly static frames: a small file quickly written on a slow machine);
2. in a fresh Python process it imports the package and PyAV, reads the process's peak RSS (`ru_maxrss`), turns the
   video into its grid (from the path, and from the file's bytes as `deepstack-serve` passes a downloaded video),
   and reads the peak RSS again: the difference is what decoding cost on top of the imports (and of the bytes);
3. it compares that with what holding the decoded video would take (`T x H x W x 3` bytes).

Usage::

    python benchmarks/video_memory.py                       # the documented run (10 min, 720p, 30 fps)
    python benchmarks/video_memory.py --seconds 20 --width 320 --height 240 --keep video.mp4

``main(argv)`` returns the results as a dict (the smoke test runs it tiny). Needs PyAV (the `video` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"

MEASURE = r"""
import json, resource, sys, time
source, mode = sys.argv[1], sys.argv[2]
import av, numpy as np
from deepstack_hf import DeepStackVideoProcessor
processor = DeepStackVideoProcessor()
data = open(source, "rb").read() if mode == "bytes" else source
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
out = processor(data, return_metadata=True)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
grid, metadata = out["video_grids"][0], out["video_metadata"][0]
print(json.dumps({"peak_rss_before_bytes": before, "peak_rss_after_bytes": after, "seconds": seconds,
                  "grid_shape": list(grid.shape), "total_frames": metadata.total_num_frames,
                  "frames_indices": [int(i) for i in metadata.frames_indices]}))
"""


def write_long_video(path: Path, seconds: float, width: int, height: int, rate: int, gop: int) -> int:
    """A long, mostly static H.264 video: a grey gradient with a bar that moves each frame. Returns its frames."""
    import av

    frames = int(round(seconds * rate))
    background = np.broadcast_to(np.linspace(40, 200, width, dtype=np.uint8), (height, width))
    picture = np.repeat(background[:, :, None], 3, axis=2).copy()
    bar = max(1, width // 64)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "40"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        previous = None
        for index in range(frames):
            left = (index * bar) % (width - bar)
            if previous is not None:
                picture[:, previous : previous + bar] = background[:, previous : previous + bar, None]
            picture[:, left : left + bar] = 255
            previous = left
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames


def measure(path: Path, mode: str) -> dict:
    """Peak RSS and time of one grid in a fresh process (`mode`: "path" or "bytes")."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), mode], env=env, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="video length (default 10 minutes)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=250, help="frames between key frames (x264's default)")
    parser.add_argument("--keep", type=Path, help="write the video here and keep it (default: a temporary file)")
    parser.add_argument("--modes", nargs="+", choices=["path", "bytes"], default=["path", "bytes"],
                        help="what the processor is given: the file's path, its bytes (default: both)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        path = args.keep or Path(scratch) / "long.mp4"
        start = time.perf_counter()
        frames = write_long_video(path, args.seconds, args.width, args.height, args.fps, args.gop)
        written_s = time.perf_counter() - start
        results = {
            "video": {"seconds": args.seconds, "width": args.width, "height": args.height, "fps": args.fps,
                      "gop": args.gop, "frames": frames, "file_bytes": path.stat().st_size, "write_s": written_s},
            "decoded_video_bytes": frames * args.width * args.height * 3,
            "runs": {mode: measure(path, mode) for mode in args.modes},
        }
    video = results["video"]
    print(f"video: {video['seconds']:g} s, {video['width']}x{video['height']} at {video['fps']} fps, "
          f"{video['frames']} frames, {video['file_bytes'] / 2**20:.1f} MiB (written in {video['write_s']:.0f} s)")
    print(f"the whole video decoded would take {results['decoded_video_bytes'] / 2**30:.1f} GiB")
    for mode, run in results["runs"].items():
        added = run["peak_rss_after_bytes"] - run["peak_rss_before_bytes"]
        print(f"from {mode:5s}: grid {run['grid_shape']} of frames {run['frames_indices']} in {run['seconds']:.1f} s; "
              f"peak RSS {run['peak_rss_after_bytes'] / 2**20:.0f} MiB "
              f"(+{added / 2**20:.0f} MiB over the {run['peak_rss_before_bytes'] / 2**20:.0f} MiB after imports)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
