"""Image preprocessing speed: DeepStack (exact PIL path and torch backend) against LLaVA-NeXT's PIL processor.

Every processor sees the same images. Measured in one run, after one warm-up call of every processor:

1. per image (batch of one), for each image size: milliseconds, and the ratio to LLaVA-NeXT's PIL processor;
2. batches of 1, 8 and 32 images of the middle size: milliseconds per image and the ratio;
3. images per second with the processor as the ``collate_fn`` of a ``torch.utils.data.DataLoader`` with workers.

Times are wall-clock and, for 1 and 2, also CPU time of the process (all threads): on a machine shared with
other jobs the CPU time is what a processor costs, the wall time what a request waits.

Measurements are interleaved (A, B, C, A, B, C, ...) so that a load change on a shared machine hits every
processor alike; each ratio is taken within one round (DeepStack's time over LLaVA-NeXT's in the same round)
and reported as the median over rounds with the min-max spread. LLaVA-NeXT uses the llava-v1.6 settings
(shortest edge 336, crop 336, its five pinpoints), i.e. 5 views for the 2x2 grid the photo sizes get, against
25 for DeepStack-L-HD and 5 for plain DeepStack-L (num_crops 4). Images are synthetic (smooth gradients plus
noise: the resize and normalisation costs do not depend on content; JPEG decoding is not measured).

Usage::

    python benchmarks/image_preprocessing.py --threads 1      # the documented run (shared 2-core machine)
    python benchmarks/image_preprocessing.py --repeats 3 --sizes 320x240 1000x667 --batches 1 8

``main(argv)`` returns the results as a dict (the smoke test runs it tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:  # run from a checkout without installing
    import deepstack_hf  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import LlavaNextImageProcessorPil

from deepstack_hf import DeepStackImageProcessor, DeepStackImageProcessorFast

REFERENCE = "llava_next_pil"
LLAVA_V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def build_processors(crop: int = 336) -> dict:
    """The processors compared, by name; the reference (LLaVA-NeXT, PIL backend) first."""
    pinpoints = [[side * crop // 336 for side in pair] for pair in LLAVA_V16_PINPOINTS]
    return {
        REFERENCE: LlavaNextImageProcessorPil(
            size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, image_grid_pinpoints=pinpoints
        ),
        "deepstack_plain_pil": DeepStackImageProcessor(crop_size=crop),
        "deepstack_hd_pil": DeepStackImageProcessor(crop_size=crop, hd_layout=True),
        "deepstack_plain_torch": DeepStackImageProcessorFast(crop_size=crop),
        "deepstack_hd_torch": DeepStackImageProcessorFast(crop_size=crop, hd_layout=True),
    }


def synthetic_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127 + 100 * np.sin(x / (17 + 5 * c) + y / (23 + 3 * c) + c) + rng.normal(0, 12, (height, width))
        for c in range(3)
    ]
    return Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))


def timed(call) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all its threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(values: list[float], scale: float = 1.0) -> dict:
    return {
        "median": statistics.median(values) * scale,
        "min": min(values) * scale,
        "max": max(values) * scale,
        "n": len(values),
    }


def interleaved(calls: dict, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of every call, ``repeats`` rounds, each calling every entry once (A, B, C, A, B, C...)."""
    for call in calls.values():  # warm every one first
        call()
    seconds = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            seconds[name].append(timed(call))
    return seconds


def with_ratios(seconds: dict[str, list[tuple[float, float]]], per: int = 1, scale: float = 1e3) -> dict:
    """Per-item wall and CPU time summaries, and per-round ratios to the reference."""
    rows = {}
    for name, values in seconds.items():
        row = {}
        for column, suffix in ((0, ""), (1, "_cpu")):
            mine = [value[column] for value in values]
            row["ms" + suffix] = summary([value / per for value in mine], scale)
            if name != REFERENCE:
                reference = [value[column] for value in seconds[REFERENCE]]
                row["ratio" + suffix] = summary([a / b for a, b in zip(mine, reference) if b > 0])
        rows[name] = row
    return rows


def per_image(processors: dict, sizes: list[tuple[int, int]], repeats: int) -> dict:
    results = {}
    for width, height in sizes:
        image = synthetic_image(width, height)
        calls = {name: (lambda p=processor: p(image, return_tensors="pt")) for name, processor in processors.items()}
        results[f"{width}x{height}"] = with_ratios(interleaved(calls, repeats))
    return results


def batches(processors: dict, size: tuple[int, int], batch_sizes: list[int], repeats: int) -> dict:
    results = {}
    for batch_size in batch_sizes:
        images = [synthetic_image(*size, seed=index) for index in range(batch_size)]
        calls = {name: (lambda p=processor: p(images, return_tensors="pt")) for name, processor in processors.items()}
        results[str(batch_size)] = with_ratios(interleaved(calls, repeats), per=batch_size)
    return results


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


class _Collate:
    """Picklable ``collate_fn``: the processor on a list of images."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images):
        return dict(self.processor(images, return_tensors="pt"))


def dataloader_throughput(processors: dict, size, num_images: int, batch_size: int, workers: int, repeats: int):
    """Images per second of a full pass over ``num_images`` images (worker start-up included), interleaved."""
    images = [synthetic_image(*size, seed=index) for index in range(num_images)]

    def epoch(processor):
        loader = torch.utils.data.DataLoader(
            _Images(images), batch_size=batch_size, num_workers=workers, collate_fn=_Collate(processor)
        )
        for batch in loader:
            assert batch["pixel_values"].shape[0] > 0

    seconds = interleaved({name: (lambda p=processor: epoch(p)) for name, processor in processors.items()}, repeats)
    seconds = {name: [wall for wall, _ in values] for name, values in seconds.items()}  # the workers do the work
    rows = {}
    for name, values in seconds.items():
        row = {"images_per_s": summary([num_images / value for value in values])}
        if name != REFERENCE:
            row["ratio_time"] = summary([a / b for a, b in zip(values, seconds[REFERENCE])])
        rows[name] = row
    return rows


def machine() -> str:
    return (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs; python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}, pillow {Image.__version__}; 1-min load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )


def _fmt(stat: dict, unit: str = "") -> str:
    return f"{stat['median']:.3g}{unit} [{stat['min']:.3g}-{stat['max']:.3g}]"


def print_table(title: str, rows: dict, value_key: str = "ms", ratio_key: str = "ratio", unit: str = " ms") -> None:
    print(f"\n{title}")
    for name, row in rows.items():
        line = f"  {name:24s} {_fmt(row[value_key], unit):>26s}"
        line += f"  ratio {_fmt(row[ratio_key], 'x'):>22s}" if ratio_key in row else f"  {'(reference)':>28s}"
        if value_key + "_cpu" in row:
            line += f"  | CPU {_fmt(row[value_key + '_cpu'], unit):>26s}"
            line += f"  ratio {_fmt(row[ratio_key + '_cpu'], 'x'):>22s}" if ratio_key in row else ""
        print(line)


def targets(per_image_results: dict) -> dict:
    """The issue's targets on the PIL path: HD <= 1.0x and plain <= 0.5x LLaVA-NeXT, every size (median wall)."""
    met = {}
    for size, rows in per_image_results.items():
        met[f"hd_le_1.0x_{size}"] = rows["deepstack_hd_pil"]["ratio"]["median"] <= 1.0
        met[f"plain_le_0.5x_{size}"] = rows["deepstack_plain_pil"]["ratio"]["median"] <= 0.5
    return met


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(320, 240), (1000, 667), (2000, 1500)])
    parser.add_argument("--batch-size-image", type=parse_size, default=(1000, 667))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per measurement")
    parser.add_argument("--batch-repeats", type=int, default=3, help="rounds for the batch and DataLoader runs")
    parser.add_argument("--crop", type=int, default=336)
    parser.add_argument("--loader-images", type=int, default=64)
    parser.add_argument("--loader-batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    processors = build_processors(args.crop)
    result = {"machine": machine(), "reference": REFERENCE, "args": {k: str(v) for k, v in vars(args).items()}}
    print(result["machine"])

    result["per_image"] = per_image(processors, args.sizes, args.repeats)
    for size, rows in result["per_image"].items():
        print_table(f"per image, {size} (batch of 1): wall ms, ratio to LLaVA-NeXT PIL | CPU ms, ratio", rows)
    result["batches"] = batches(processors, args.batch_size_image, args.batches, args.batch_repeats)
    width, height = args.batch_size_image
    for batch_size, rows in result["batches"].items():
        print_table(f"batch of {batch_size} images {width}x{height}: wall ms per image, ratio | CPU ms, ratio", rows)
    result["dataloader"] = dataloader_throughput(
        processors, args.batch_size_image, args.loader_images, args.loader_batch_size, args.workers, args.batch_repeats
    )
    print_table(
        f"DataLoader, {args.loader_images} images {width}x{height}, batch {args.loader_batch_size}, "
        f"{args.workers} workers: images/s, time ratio",
        result["dataloader"],
        value_key="images_per_s",
        ratio_key="ratio_time",
        unit=" img/s",
    )
    result["targets"] = targets(result["per_image"])
    print("\ntargets (PIL path, median ratio):", ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in result["targets"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
