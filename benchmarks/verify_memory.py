"""Peak memory and time of `deepstack-convert --verify` on a synthetic 7B-shaped original checkpoint.

    python benchmarks/verify_memory.py                  # ~2 GB bf16 checkpoint (7B-wide layers), 3 shards
    python benchmarks/verify_memory.py --size-gb 13.5   # a 7B: 32 decoder layers of Llama-7B shape

The checkpoint is `convert_memory.build`'s (hidden 4096, intermediate 11008, vocab 32000, bf16, as many layers as
fit in `--size-gb`, a tiny CLIP tower and tokenizer). Two conversions run in child processes, interleaved
`--repeats` times: a plain one and one with `--verify`. For each, the child's peak RSS (`VmHWM`) and wall time
are recorded; the script prints the verify run's peak RSS as a ratio to the largest input shard (target <= 2)
and its time as a ratio to the plain conversion, with the spread over repeats.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from convert_memory import build  # noqa: E402

RUNNER = (
    "import sys; from deepstack_hf.conversion.convert_deepstack_to_hf import main; rc = main(sys.argv[1:]); "
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
    "print('MAXRSS_KB', hwm, file=sys.stderr); sys.exit(rc)"
)


def run_conversion(checkpoint: Path, output: Path, extra: list[str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS bytes, seconds, last lines of the child's output) of one `deepstack-convert` run."""
    command = [sys.executable, "-c", RUNNER, str(checkpoint), str(output), "--overwrite", "--no-progress", *extra]
    start = time.time()
    child = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
    elapsed = time.time() - start
    peak = int(child.stderr.split("MAXRSS_KB")[-1].split()[0]) * 1024 if "MAXRSS_KB" in child.stderr else 0
    tail = "\n".join((child.stdout + child.stderr).strip().splitlines()[-4:])
    return child.returncode, peak, elapsed, tail


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (1 run)"
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, {len(values)} runs)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="approximate checkpoint size (default 2)")
    parser.add_argument("--shards", type=int, default=3, help="input shards (default 3, like the released models)")
    parser.add_argument("--verify-tokens", type=int, default=2, help="greedy tokens compared (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved plain/verify pairs (default 1)")
    parser.add_argument("--work-dir", help="where to build (default: a temporary directory, removed afterwards)")
    args = parser.parse_args(argv)

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="deepstack-verify-bench-"))
    try:
        start = time.time()
        checkpoint = build(root / "original", args.size_gb, args.shards)
        shards = [path.stat().st_size for path in checkpoint.glob("*.safetensors")]
        largest = max(shards)
        print(f"built {sum(shards) / 1e9:.2f} GB in {len(shards)} shards (largest {largest / 1e9:.2f} GB) "
              f"in {time.time() - start:.0f} s")

        plain, verify = {"rss": [], "time": []}, {"rss": [], "time": []}
        for _ in range(args.repeats):
            for name, extra, sink in (("plain", [], plain),
                                      ("verify", ["--verify", "--verify-tokens", str(args.verify_tokens)], verify)):
                code, peak, elapsed, tail = run_conversion(checkpoint, root / "converted", extra)
                print(f"{name}: exit {code}, peak RSS {peak / 1e9:.2f} GB, {elapsed:.0f} s\n  {tail.replace(chr(10), chr(10) + '  ')}")
                if not peak:
                    return 1
                sink["rss"].append(peak)
                sink["time"].append(elapsed)
        rss_ratios = [peak / largest for peak in verify["rss"]]
        time_ratios = [v / p for v, p in zip(verify["time"], plain["time"])]
        print(f"verify peak RSS / largest input shard: {spread(rss_ratios)} (target <= 2: "
              f"{'OK' if max(rss_ratios) <= 2 else 'EXCEEDED'})")
        print(f"plain conversion peak RSS / largest input shard: {spread([p / largest for p in plain['rss']])}")
        print(f"verify time / plain conversion time: {spread(time_ratios)}")
        return 0 if max(rss_ratios) <= 2 else 1
    finally:
        if not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
