"""Peak memory and throughput of the DeepStack converter on a synthetic multi-GB original-format checkpoint.

    python benchmarks/convert_memory.py                 # ~2 GB bf16 checkpoint in 3 shards, converted to fp16
    python benchmarks/convert_memory.py --size-gb 14    # about the size of a 7B checkpoint

The checkpoint has Llama-7B-like tensor shapes (hidden 4096, intermediate 11008, vocab 32000) with as many decoder
layers as fit in `--size-gb`, a tiny CLIP tower and a tiny tokenizer. The converter runs in a child process
(`deepstack_hf.conversion.convert_deepstack_to_hf.main`); its peak RSS (`VmHWM` of /proc/self/status, which
unlike `ru_maxrss` is not inherited from the forking parent) is compared with the largest
input shard: the requirement is peak RSS <= largest input shard + 1 GB. Throughput is output bytes / wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint  # noqa: E402

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 4096, 11008, 32000, 32


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (HIDDEN,),
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "post_attention_layernorm.weight": (HIDDEN,),
        p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
        p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
    }


def write_streamed_shard(path: Path, shapes: dict[str, tuple[int, ...]], generator: torch.Generator) -> int:
    """Header first, then each bf16 tensor generated and written one at a time (bounded builder memory)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            value = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
            handle.write(value.view(torch.uint8).numpy().tobytes())
            del value
    return path.stat().st_size


def build(root: Path, size_gb: float, num_shards: int) -> Path:
    """Tiny synthetic checkpoint (for the tower, tokenizer and config), then its weights replaced by big shards."""
    synthetic = build_synthetic_checkpoint(root, num_hidden_layers=2, hidden_size=32)
    ckpt = synthetic.checkpoint
    per_layer = sum(math.prod(s) for s in layer_shapes(0).values()) * 2
    fixed = (2 * VOCAB * HIDDEN + HIDDEN) * 2
    layers = max(5, int((size_gb * 1e9 - fixed) // per_layer))
    config = json.loads((ckpt / "config.json").read_text())
    config.update(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                  num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=VOCAB)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))
    for old in ckpt.glob("*.safetensors"):
        old.unlink()
    (ckpt / "model.safetensors.index.json").unlink(missing_ok=True)

    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        shapes.update(layer_shapes(i))
    shapes.update({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    mm = config["mm_hidden_size"]
    shapes.update({"model.mm_projector.0.weight": (HIDDEN, mm), "model.mm_projector.0.bias": (HIDDEN,),
                   "model.mm_projector.2.weight": (HIDDEN, HIDDEN), "model.mm_projector.2.bias": (HIDDEN,)})
    names = list(shapes)
    total = sum(math.prod(s) * 2 for s in shapes.values())
    target = total / num_shards
    groups, size = [[]], 0
    for name in names:
        nbytes = math.prod(shapes[name]) * 2
        if groups[-1] and size + nbytes > target and len(groups) < num_shards:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, group in enumerate(groups):
        filename = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_streamed_shard(ckpt / filename, {n: shapes[n] for n in group}, generator)
        weight_map.update({n: filename for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    return ckpt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="approximate checkpoint size (default 2)")
    parser.add_argument("--shards", type=int, default=3, help="input shards (default 3, like the released models)")
    parser.add_argument("--dtype", default="float16", help="output dtype (default float16: forces a dtype conversion)")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--work-dir", help="where to build (default: a temporary directory, removed afterwards)")
    args = parser.parse_args(argv)

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="deepstack-bench-"))
    try:
        start = time.time()
        ckpt = build(root / "original", args.size_gb, args.shards)
        shard_sizes = [p.stat().st_size for p in ckpt.glob("*.safetensors")]
        print(f"built {sum(shard_sizes) / 1e9:.2f} GB in {len(shard_sizes)} shards "
              f"(largest {max(shard_sizes) / 1e9:.2f} GB) in {time.time() - start:.0f} s")

        baseline = subprocess.run(
            [sys.executable, "-c", "import deepstack_hf.conversion.convert_deepstack_to_hf as m; "
             "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True, check=True,
        )
        baseline_kb = int(baseline.stdout.split()[-1])

        output = root / "converted"
        runner = ("import sys; from deepstack_hf.conversion.convert_deepstack_to_hf import main; "
                  "rc = main(sys.argv[1:]); "
                  "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
                  "print('MAXRSS_KB', hwm, file=sys.stderr); sys.exit(rc)")
        command = [sys.executable, "-c", runner, str(ckpt), str(output), "--dtype", args.dtype,
                   "--max-shard-size", args.max_shard_size, "--overwrite", "--no-progress", "-q"]
        start = time.time()
        child = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, stderr=subprocess.PIPE, text=True)
        elapsed = time.time() - start
        if child.returncode:
            print(f"conversion failed:\n{child.stderr}", file=sys.stderr)
            return child.returncode
        peak = int(child.stderr.split("MAXRSS_KB")[-1].split()[0]) * 1024
        written = sum(p.stat().st_size for p in output.glob("*.safetensors"))
        largest = max(shard_sizes)
        print(f"converter peak RSS: {peak / 1e9:.3f} GB (import baseline {baseline_kb * 1024 / 1e9:.3f} GB)")
        print(f"largest input shard: {largest / 1e9:.3f} GB; peak RSS / largest shard = {peak / largest:.3f}; "
              f"peak - largest = {(peak - largest) / 1e9:+.3f} GB (limit +1 GB: {'OK' if peak <= largest + 1e9 else 'EXCEEDED'})")
        print(f"wrote {written / 1e9:.2f} GB in {elapsed:.1f} s: {written / 1e6 / elapsed:.0f} MB/s "
              f"({sum(shard_sizes) / 1e6 / elapsed:.0f} MB/s of input)")
        return 0 if peak <= largest + 1e9 else 1
    finally:
        if not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
