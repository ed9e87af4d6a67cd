"""DeepStack-L vs LLaVA-1.5 vs LLaVA-NeXT: visual tokens, prefill time, decode speed and peak memory.

The three models are built with *identical* vision and text dimensions (random weights; no download) and, to
fit a 7B shape in a small machine, they literally share the same weight tensors: DeepStack-L is built first,
then ``LlavaForConditionalGeneration`` and ``LlavaNextForConditionalGeneration`` are built on the meta device
and pointed at DeepStack's parameters (the module names are the same: ``model.vision_tower``,
``model.multi_modal_projector``, ``model.language_model``, ``lm_head``). Only LLaVA-NeXT's ``image_newline`` is
its own. All three see the same image size, hence the same crop grid:

* LLaVA-1.5: the global 336 view, 576 visual tokens in the context.
* LLaVA-NeXT: global view + the grid crops (same views as DeepStack-L) -> ~2.9k visual tokens for a 2x2 grid.
* DeepStack-L: the same 1 + w*h views through CLIP, but only 576 tokens in the context; the high-resolution
  tokens are regrouped into K stacks and added to the visual positions before decoder layers 1..K.

Every model is first run ``--warmup`` times (all of them before any timing), then the models are measured in
``--repeats`` interleaved rounds (A, B, C, D, A, B, C, D, ...); medians are reported with their min-max spread,
and each DeepStack ratio is taken within a round (both runs back to back) before its median and spread are
taken, so a load change on a shared machine moves both sides. Measured: prefill (one forward over prompt + image with an empty KV
cache, logits of the last position), decode tokens/s (greedy single-token steps on the prefill's cache) and peak
memory (CUDA: ``max_memory_allocated``; CPU: peak RSS above the pre-run RSS, sampled every 2 ms, a proxy for the
activations + KV cache since the shared weights are already resident).

DeepStack is also run with its stacks computed but *not injected* (a forward pre-hook drops
``deepstack_embeds``), and the injection itself (``add_visual_stack``) is timed directly: the injection cost is
reported as a share of DeepStack's prefill. LLaVA-1.5 on the same weights is DeepStack with the stacks off.

Usage::

    python benchmarks/compare_llava.py --preset tiny
    python benchmarks/compare_llava.py --preset 1b --device cpu --json out.json
    python benchmarks/compare_llava.py --preset 7b --device cuda --dtype float16

``main(argv)`` returns the result dict (used by the test suite on the tiny preset).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

try:  # run from a checkout without installing
    import deepstack_hf  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.image_processing_utils import select_best_resolution

from deepstack_hf import DeepStackConfig, DeepStackForConditionalGeneration
from deepstack_hf import modeling_deepstack_text
from deepstack_hf.grid_layout import num_image_tokens, num_views, select_best_grid

CLIP_L_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}

PRESETS: dict[str, dict] = {
    # Same shapes as tests/conftest.py's tiny config: seconds on a laptop CPU.
    "tiny": {
        "vision": {
            "model_type": "clip_vision_model",
            "hidden_size": 24,
            "intermediate_size": 48,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 56,
            "patch_size": 14,
            "projection_dim": 16,
        },
        "text": {
            "model_type": "llama",
            "vocab_size": 320,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        "image_token_id": 300,
        "dtype": "float32",
        "text_tokens": 40,
        "new_tokens": 8,
        "repeats": 3,
    },
    # TinyLlama-1.1B-shaped decoder behind CLIP ViT-L/14-336.
    "1b": {
        "vision": CLIP_L_336,
        "text": {
            "model_type": "llama",
            "vocab_size": 32064,
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 22,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
        },
        "image_token_id": 32000,
        "dtype": "bfloat16",
        "text_tokens": 64,
        "new_tokens": 8,
        "repeats": 2,
    },
    # Vicuna-7B v1.5 (Llama-2-7B) behind CLIP ViT-L/14-336: the released DeepStack-L / llava-1.5-7b shape.
    "7b": {
        "vision": CLIP_L_336,
        "text": {
            "model_type": "llama",
            "vocab_size": 32064,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
        },
        "image_token_id": 32000,
        "dtype": "bfloat16",
        "text_tokens": 64,
        "new_tokens": 4,
        "repeats": 1,
    },
}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------- configs
def build_configs(preset: dict, attn_implementation: str, text_layers: int | None = None):
    vision = dict(preset["vision"])
    text = {**preset["text"], "max_position_embeddings": 4096, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if text_layers is not None:
        text["num_hidden_layers"] = text_layers
    crop = vision["image_size"]
    side = crop // vision["patch_size"]
    common = {
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "image_seq_length": side * side,
        "tie_word_embeddings": False,
    }
    deepstack = DeepStackConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=preset["image_token_id"],
        projector_depth=2,
        num_crops=4,
        hd_layout=False,
        **common,
    )
    llava = LlavaConfig(vision_config=vision, text_config=text, image_token_id=preset["image_token_id"], **common)
    # LLaVA-NeXT's default pinpoints, expressed in crops of this vision tower's size.
    pinpoints = [[crop * a, crop * b] for a, b in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
    llava_next = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=preset["image_token_id"],
        image_grid_pinpoints=pinpoints,
        **common,
    )
    for config in (deepstack, llava, llava_next):
        config._attn_implementation = attn_implementation
    return deepstack, llava, llava_next


def llava_next_num_image_tokens(config: LlavaNextConfig, height: int, width: int) -> int:
    """LlavaNextProcessor._get_number_of_features for one image (no CLS token, default strategy)."""
    crop = config.vision_config.image_size
    patches = crop // config.vision_config.patch_size
    best_h, best_w = select_best_resolution([height, width], config.image_grid_pinpoints)
    scale_h, scale_w = best_h // crop, best_w // crop
    cur_h, cur_w = patches * scale_h, patches * scale_w
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= ((cur_h - new_h) // 2) * 2
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= ((cur_w - new_w) // 2) * 2
    return cur_h * cur_w + cur_h + patches * patches


def llava_next_num_views(config: LlavaNextConfig, height: int, width: int) -> int:
    crop = config.vision_config.image_size
    best_h, best_w = select_best_resolution([height, width], config.image_grid_pinpoints)
    return 1 + (best_h // crop) * (best_w // crop)


# --------------------------------------------------------------------------------------------------- models
def _share_tensors(dst: torch.nn.Module, src: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> list[str]:
    """Points every parameter / buffer of ``dst`` (built on meta) at ``src``'s tensor of the same name.

    Returns the names ``src`` does not have; those get fresh random tensors (LLaVA-NeXT's ``image_newline``).
    """
    src_tensors = dict(src.named_parameters(remove_duplicate=False))
    src_tensors.update(dict(src.named_buffers(remove_duplicate=False)))
    own = []
    for name, tensor in list(dst.named_parameters(remove_duplicate=False)) + list(dst.named_buffers(remove_duplicate=False)):
        module_path, _, leaf = name.rpartition(".")
        module = dst.get_submodule(module_path) if module_path else dst
        if name in src_tensors:
            new = src_tensors[name]
            if new.shape != tensor.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} vs DeepStack's {tuple(new.shape)}")
        else:
            own.append(name)
            new = torch.randn(tensor.shape, dtype=dtype if tensor.is_floating_point() else tensor.dtype, device=device)
            new = new * tensor.shape[-1] ** -0.5
        if leaf in module._parameters:
            module._parameters[leaf] = new if isinstance(new, torch.nn.Parameter) else torch.nn.Parameter(new, False)
        else:
            module._buffers[leaf] = new
    return own


def build_models(preset: dict, dtype: torch.dtype, device: torch.device, attn_implementation: str, text_layers=None):
    ds_config, llava_config, next_config = build_configs(preset, attn_implementation, text_layers)
    torch.manual_seed(0)
    with torch.device(device):
        deepstack = DeepStackForConditionalGeneration._from_config(ds_config, dtype=dtype)
    deepstack.eval().requires_grad_(False)
    models = {"deepstack": deepstack}
    for key, cls, config in (
        ("llava15", LlavaForConditionalGeneration, llava_config),
        ("llava_next", LlavaNextForConditionalGeneration, next_config),
    ):
        with torch.device("meta"):
            model = cls._from_config(config, dtype=dtype)
        own = _share_tensors(model, deepstack, dtype, device)
        if key == "llava15" and own:
            raise RuntimeError(f"LLaVA-1.5 has parameters DeepStack lacks: {own}")
        models[key] = model.eval().requires_grad_(False)
    return models, (ds_config, llava_config, next_config)


# --------------------------------------------------------------------------------------------------- inputs
def _deepstack_pixels(height: int, width: int, crop: int) -> torch.Tensor:
    """A noise image of this size through `DeepStackImageProcessor`: `(1, num_views, 3, crop, crop)`."""
    import numpy as np
    from PIL import Image

    from deepstack_hf import DeepStackImageProcessor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    processor = DeepStackImageProcessor(num_crops=4, crop_size={"height": crop, "width": crop})
    return processor(images=[image], return_tensors="pt")["pixel_values"]


def build_inputs(configs, preset: dict, device: torch.device, dtype: torch.dtype, image_hw=None):
    ds_config, llava_config, next_config = configs
    crop = ds_config.vision_config.image_size
    height, width = image_hw or (2 * crop, 2 * crop)
    side = crop // ds_config.vision_config.patch_size
    grid = select_best_grid(width, height, ds_config.num_crops, crop)
    ds_views = num_views(grid, ds_config.num_crops, ds_config.hd_layout)
    ds_tokens = num_image_tokens(grid, ds_config.hd_layout, side)
    next_tokens = llava_next_num_image_tokens(next_config, height, width)
    next_views = llava_next_num_views(next_config, height, width)

    generator = torch.Generator().manual_seed(0)
    text_len = preset["text_tokens"]
    vocab_hi = min(ds_config.image_token_id, ds_config.text_config.vocab_size) - 1
    text = torch.randint(3, vocab_hi, (text_len,), generator=generator)
    prefix, suffix = text[: text_len // 4], text[text_len // 4 :]

    def ids(num_image_tokens_: int) -> torch.Tensor:
        image = torch.full((num_image_tokens_,), ds_config.image_token_id)
        return torch.cat([torch.tensor([1]), prefix, image, suffix]).unsqueeze(0).to(device)

    all_views = torch.randn(1, max(ds_views, next_views), 3, crop, crop, generator=generator)
    ds_pixels = _deepstack_pixels(height, width, crop)
    image_sizes = torch.tensor([[height, width]], device=device)
    inputs = {
        "deepstack": {
            "input_ids": ids(ds_tokens),
            "pixel_values": ds_pixels.to(device, dtype),
            "image_sizes": image_sizes,
        },
        "llava15": {"input_ids": ids(side * side), "pixel_values": ds_pixels[:, 0].to(device, dtype)},
        "llava_next": {
            "input_ids": ids(next_tokens),
            "pixel_values": all_views[:, :next_views].to(device, dtype),
            "image_sizes": image_sizes,
        },
    }
    meta = {
        "image_hw": [height, width],
        "deepstack_grid_wh": list(grid),
        "views": {"deepstack": ds_views, "llava15": 1, "llava_next": next_views},
        "visual_tokens": {"deepstack": ds_tokens, "llava15": side * side, "llava_next": next_tokens},
    }
    return inputs, meta


# --------------------------------------------------------------------------------------------------- measuring
def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim():
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory above the starting point: CUDA allocator stats, or sampled RSS on CPU (Linux)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        _trim()
        self.base = _rss()
        self._stop = threading.Event()
        self._max = self.base

        def sample():
            while not self._stop.is_set():
                self._max = max(self._max, _rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._max = max(self._max, _rss())
            self._stop.set()
            self._thread.join()
            self.peak = self._max - self.base
        return False


@contextlib.contextmanager
def stacks_not_injected(model: DeepStackForConditionalGeneration):
    """Computes the stacks as usual but hands the decoder none (a kwargs pre-hook on the language model)."""

    def drop(module, args, kwargs):
        kwargs["deepstack_embeds"] = None
        return args, kwargs

    handle = model.model.language_model.register_forward_pre_hook(drop, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def timed_injection(device: torch.device):
    """Wall time spent inside ``add_visual_stack`` (synchronized on CUDA), accumulated in the yielded list."""
    original = modeling_deepstack_text.add_visual_stack
    spent = [0.0]

    def wrapper(*args, **kwargs):
        _sync(device)
        start = time.perf_counter()
        result = original(*args, **kwargs)
        _sync(device)
        spent[0] += time.perf_counter() - start
        return result

    modeling_deepstack_text.add_visual_stack = wrapper
    try:
        yield spent
    finally:
        modeling_deepstack_text.add_visual_stack = original


@torch.inference_mode()
def run_once(model, inputs: dict, new_tokens: int, device: torch.device) -> dict:
    """One prefill (timed) then ``new_tokens`` greedy decode steps on its KV cache (timed together)."""
    input_ids = inputs["input_ids"]
    attention_mask = torch.ones_like(input_ids)
    with PeakMemory(device) as memory:
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        _sync(device)
        start = time.perf_counter()
        out = model(**inputs, attention_mask=attention_mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        next_token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        prefill = time.perf_counter() - start
        tokens = [int(next_token)]
        start = time.perf_counter()
        for _ in range(new_tokens):
            attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)
            out = model(
                input_ids=next_token,
                attention_mask=attention_mask,
                past_key_values=out.past_key_values,
                use_cache=True,
                logits_to_keep=1,
            )
            next_token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(next_token))
        _sync(device)
        decode = time.perf_counter() - start
    return {
        "prefill_s": prefill,
        "decode_tokens_per_s": new_tokens / decode if decode > 0 else float("inf"),
        "peak_memory_bytes": memory.peak,
        "tokens": tokens,
    }


def spread(values: list[float]) -> dict:
    """Median with the min-max spread."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure_interleaved(runners: dict, repeats: int, warmup: int) -> dict[str, list[dict]]:
    """Run every model ``warmup`` times first (all of them), then ``repeats`` rounds of one run each, in turn
    (A, B, C, A, B, C, ...): a warm-up artifact or a load change on a shared machine then hits every model
    alike instead of whichever happened to be measured first."""
    for runner in runners.values():
        for _ in range(warmup):
            runner(warm=True)
    runs = {key: [] for key in runners}
    for _ in range(repeats):
        for key, runner in runners.items():
            runs[key].append(runner(warm=False))
    return runs


def summarise(runs: list[dict], inputs: dict) -> dict:
    prefill = [run["prefill_s"] for run in runs]
    decode = [run["decode_tokens_per_s"] for run in runs]
    return {
        "context_tokens": int(inputs["input_ids"].shape[1]),
        "prefill_s": statistics.median(prefill),
        "prefill_s_spread": spread(prefill),
        "decode_tokens_per_s": statistics.median(decode),
        "decode_tokens_per_s_spread": spread(decode),
        "peak_memory_bytes": max(run["peak_memory_bytes"] for run in runs),
        "prefill_s_all": prefill,
        "first_tokens": runs[0]["tokens"],
    }


def round_ratios(runs: dict[str, list[dict]], key: str, ref: str, metric: str) -> dict:
    """DeepStack over ``ref`` within each round (both measured back to back), median and min-max."""
    return spread([a[metric] / b[metric] for a, b in zip(runs[key], runs[ref]) if b[metric]])


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: the preset's (fp32 tiny, bf16 otherwise)")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"])
    parser.add_argument("--repeats", type=int, help="interleaved timed rounds (median and spread reported); default: the preset's")
    parser.add_argument("--warmup", type=int, help="untimed runs of every model before the rounds; default 1 (0 for the 7b preset)")
    parser.add_argument("--new-tokens", type=int, help="decode steps; default: the preset's")
    parser.add_argument("--text-layers", type=int, help="override the decoder depth (e.g. a 7B-wide slice)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="default: 2x2 crops")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def _fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _fmt_spread(stat: dict, spec: str) -> str:
    return f"{stat['median']:{spec}} [{stat['min']:{spec}}-{stat['max']:{spec}}]"


def report(result: dict) -> str:
    rows = result["models"]
    names = {
        "deepstack": "DeepStack-L",
        "deepstack_not_injected": "DeepStack-L, stacks not injected",
        "llava15": "LLaVA-1.5 (= DeepStack, stacks off)",
        "llava_next": "LLaVA-NeXT",
    }
    lines = [
        f"preset={result['preset']} device={result['device']} dtype={result['dtype']} attn={result['attn_implementation']}"
        f" threads={result['threads']} image={result['image_hw'][0]}x{result['image_hw'][1]}"
        f" grid={result['deepstack_grid_wh']}",
        f"machine: {result['machine']}",
        f"weights (shared by all three): {_fmt_bytes(result['weight_bytes'])}",
        "",
        f"median [min-max] over {result['repeats']} interleaved rounds, after {result['warmup']} warm-up run(s) of every model",
        f"{'model':38s} {'views':>5s} {'vis.tok':>7s} {'context':>7s} {'prefill s':>24s} {'decode tok/s':>24s} {'peak mem':>11s}",
    ]
    for key in ("llava15", "llava_next", "deepstack", "deepstack_not_injected"):
        row = rows[key]
        lines.append(
            f"{names[key]:38s} {row['views']:>5d} {row['visual_tokens']:>7d} {row['context_tokens']:>7d} "
            f"{_fmt_spread(row['prefill_s_spread'], '.4g'):>24s} {_fmt_spread(row['decode_tokens_per_s_spread'], '.4g'):>24s} "
            f"{_fmt_bytes(row['peak_memory_bytes']):>11s}"
        )
    lines.append("")
    for ref, label in (("llava15", "LLaVA-1.5"), ("llava_next", "LLaVA-NeXT")):
        ratio = result["ratios"][f"deepstack_over_{ref}"]
        lines.append(
            f"DeepStack / {label:10s}: visual tokens {ratio['visual_tokens']:.3f}x  "
            f"prefill {_fmt_spread(ratio['prefill_s_spread'], '.3f')}x  "
            f"decode tok/s {_fmt_spread(ratio['decode_tokens_per_s_spread'], '.3f')}x  "
            f"peak memory {ratio['peak_memory_bytes']:.3f}x"
        )
    inj = result["injection"]
    lines.append(
        f"Stacks on vs off: injection (add_visual_stack, timed directly) {inj['timed_s'] * 1e3:.3f} ms = "
        f"{inj['timed_pct_of_prefill']:.3f}% of prefill; prefill(on) - prefill(not injected) = "
        f"{inj['diff_pct_of_prefill']:+.2f}%; extra crop encoding vs LLaVA-1.5 = {inj['crops_vs_llava15_pct']:+.1f}% of prefill"
    )
    targets = result["targets"]
    lines.append(
        "targets: injection <= 1% of prefill: {}; decode >= 0.98x LLaVA-1.5: {}; prefill <= 0.35x LLaVA-NeXT: {}".format(
            *("yes" if targets[k] else "NO" for k in ("injection_le_1pct", "decode_ge_098", "prefill_le_035_next"))
        )
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or preset["dtype"]]
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or preset["repeats"]
    warmup = args.warmup if args.warmup is not None else (0 if args.preset == "7b" else 1)
    new_tokens = args.new_tokens or preset["new_tokens"]

    build_start = time.perf_counter()
    models, configs = build_models(preset, dtype, device, args.attn_implementation, args.text_layers)
    build_s = time.perf_counter() - build_start
    inputs, meta = build_inputs(configs, preset, device, dtype, args.image_size)
    deepstack = models["deepstack"]
    weight_bytes = sum(p.numel() * p.element_size() for p in deepstack.parameters())

    def runner(key: str):
        model_key = "deepstack" if key.startswith("deepstack") else key
        model, model_inputs = models[model_key], inputs[model_key]

        def run(warm: bool) -> dict:
            steps = min(new_tokens, 2) if warm else new_tokens
            if key == "deepstack_not_injected":
                with stacks_not_injected(model):
                    return run_once(model, model_inputs, steps, device)
            return run_once(model, model_inputs, steps, device)

        return run

    keys = ("llava15", "llava_next", "deepstack", "deepstack_not_injected")
    runs = measure_interleaved({key: runner(key) for key in keys}, repeats, warmup)
    rows = {}
    for key in keys:
        model_key = "deepstack" if key.startswith("deepstack") else key
        rows[key] = summarise(runs[key], inputs[model_key])
        if not args.quiet:
            print(f"[{key}] prefill {rows[key]['prefill_s']:.4f}s decode {rows[key]['decode_tokens_per_s']:.2f} tok/s", flush=True)
    with timed_injection(device) as spent:
        timed = [run_once(deepstack, inputs["deepstack"], 0, device) for _ in range(repeats)]
    injection_s = spent[0] / repeats
    for key, row in rows.items():
        model_key = "deepstack" if key.startswith("deepstack") else key
        row["views"] = meta["views"][model_key]
        row["visual_tokens"] = meta["visual_tokens"][model_key]

    ds = rows["deepstack"]
    ratios = {}
    for ref in ("llava15", "llava_next"):
        ratio = {
            metric: (ds[metric] / rows[ref][metric] if rows[ref][metric] else float("nan"))
            for metric in ("visual_tokens", "context_tokens", "peak_memory_bytes")
        }
        for metric in ("prefill_s", "decode_tokens_per_s"):
            per_round = round_ratios(runs, "deepstack", ref, metric)
            ratio[metric] = per_round["median"]
            ratio[f"{metric}_spread"] = per_round
        ratios[f"deepstack_over_{ref}"] = ratio
    prefill_timed = statistics.median(run["prefill_s"] for run in timed)
    injection = {
        "timed_s": injection_s,
        "timed_pct_of_prefill": 100 * injection_s / prefill_timed,
        "diff_pct_of_prefill": 100 * (ds["prefill_s"] - rows["deepstack_not_injected"]["prefill_s"]) / ds["prefill_s"],
        "crops_vs_llava15_pct": 100 * (rows["deepstack_not_injected"]["prefill_s"] - rows["llava15"]["prefill_s"]) / ds["prefill_s"],
        "num_stacks": configs[0].num_stacks,
        "deepstack_layers": configs[0].deepstack_layers,
    }
    result = {
        "preset": args.preset,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": args.attn_implementation,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "text_layers": configs[0].text_config.num_hidden_layers,
        "build_s": build_s,
        "weight_bytes": weight_bytes,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
        **meta,
        "models": rows,
        "ratios": ratios,
        "injection": injection,
        "targets": {
            "injection_le_1pct": injection["timed_pct_of_prefill"] <= 1.0,
            "decode_ge_098": ratios["deepstack_over_llava15"]["decode_tokens_per_s"] >= 0.98,
            "prefill_le_035_next": ratios["deepstack_over_llava_next"]["prefill_s"] <= 0.35,
        },
    }
    if not args.quiet:
        print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
