"""The benchmark scripts run end to end, tiny (no timing is asserted)."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare_llava():
    return load_script("compare_llava")


def test_tiny_preset_runs_and_reports_every_metric(compare_llava, tmp_path, capsys):
    out = tmp_path / "tiny.json"
    result = compare_llava.main(
        ["--preset", "tiny", "--device", "cpu", "--repeats", "2", "--warmup", "0", "--new-tokens", "2", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert "DeepStack / LLaVA-1.5" in printed and "DeepStack / LLaVA-NeXT" in printed and "injection" in printed
    assert json.loads(out.read_text())["preset"] == "tiny"

    rows = result["models"]
    assert set(rows) == {"deepstack", "deepstack_not_injected", "llava15", "llava_next"}
    # a 112x112 image with 56-pixel crops: 2x2 grid, 5 views; 4x4 patches per view
    assert result["deepstack_grid_wh"] == [2, 2]
    assert rows["deepstack"]["views"] == rows["llava_next"]["views"] == 5 and rows["llava15"]["views"] == 1
    assert rows["deepstack"]["visual_tokens"] == rows["llava15"]["visual_tokens"] == 16
    # LLaVA-NeXT: base 16 + an 8x8 grid map with one newline per row (square image: nothing unpadded)
    assert rows["llava_next"]["visual_tokens"] == 16 + 8 * 8 + 8
    assert rows["deepstack"]["context_tokens"] == rows["llava15"]["context_tokens"]
    assert rows["llava_next"]["context_tokens"] - rows["deepstack"]["context_tokens"] == 72
    assert "median [min-max] over 2 interleaved rounds" in printed
    for row in rows.values():
        assert row["prefill_s"] > 0 and row["decode_tokens_per_s"] > 0 and len(row["first_tokens"]) == 3
        assert len(row["prefill_s_all"]) == 2
        spread = row["prefill_s_spread"]
        assert spread["min"] <= spread["median"] == row["prefill_s"] <= spread["max"]
    for ratios in result["ratios"].values():
        assert set(ratios) >= {"visual_tokens", "prefill_s", "decode_tokens_per_s", "peak_memory_bytes"}
        assert ratios["prefill_s_spread"]["min"] <= ratios["prefill_s"] <= ratios["prefill_s_spread"]["max"]
    assert result["injection"]["num_stacks"] == 4 and result["injection"]["timed_s"] > 0
    assert set(result["targets"]) == {"injection_le_1pct", "decode_ge_098", "prefill_le_035_next"}


def test_models_share_weights_and_the_stacks_matter(compare_llava):
    """The three models are built on one set of tensors; DeepStack with stacks dropped is LLaVA-1.5 on those weights
    when it is given the global view only, so both must produce the same logits (second, independent code path)."""
    import torch

    preset = compare_llava.PRESETS["tiny"]
    models, configs = compare_llava.build_models(preset, torch.float32, torch.device("cpu"), "sdpa")
    inputs, meta = compare_llava.build_inputs(configs, preset, torch.device("cpu"), torch.float32)
    deepstack, llava = models["deepstack"], models["llava15"]
    assert llava.lm_head.weight.data_ptr() == deepstack.lm_head.weight.data_ptr()
    assert models["llava_next"].model.language_model.layers[0].mlp.up_proj.weight.data_ptr() == (
        deepstack.model.language_model.layers[0].mlp.up_proj.weight.data_ptr()
    )
    with torch.no_grad():
        reference = llava(**inputs["llava15"]).logits
        with compare_llava.stacks_not_injected(deepstack):
            without = deepstack(**inputs["deepstack"]).logits
        with_stacks = deepstack(**inputs["deepstack"]).logits
    torch.testing.assert_close(without, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_stacks, reference, atol=1e-3)


def test_interleaving_warms_every_model_before_any_round(compare_llava):
    calls = []

    def runner(name):
        def run(warm):
            calls.append((name, warm))
            return {"prefill_s": 1.0}

        return run

    runs = compare_llava.measure_interleaved({"a": runner("a"), "b": runner("b")}, repeats=2, warmup=1)
    assert calls == [("a", True), ("b", True), ("a", False), ("b", False), ("a", False), ("b", False)]
    assert [len(value) for value in runs.values()] == [2, 2]


def test_image_preprocessing_benchmark_runs_tiny(tmp_path, capsys):
    image_preprocessing = load_script("image_preprocessing")
    out = tmp_path / "images.json"
    result = image_preprocessing.main(
        ["--sizes", "40x30", "90x60", "--batch-size-image", "50x40", "--batches", "1", "2", "--repeats", "2",
         "--batch-repeats", "1", "--crop", "28", "--loader-images", "4", "--loader-batch-size", "2",
         "--workers", "1", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert "ratio" in printed and "DataLoader" in printed and "targets" in printed
    names = set(image_preprocessing.build_processors(28))
    assert set(result["per_image"]) == {"40x30", "90x60"} and set(result["batches"]) == {"1", "2"}
    for rows in [*result["per_image"].values(), *result["batches"].values(), result["dataloader"]]:
        assert set(rows) == names
        for name, row in rows.items():
            assert ("ratio" in row or "ratio_time" in row) == (name != image_preprocessing.REFERENCE)
    assert result["per_image"]["40x30"]["deepstack_hd_pil"]["ms"]["n"] == 2
    assert json.loads(out.read_text())["reference"] == image_preprocessing.REFERENCE


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="slow (two servers, a minute or more): set RUN_SLOW=1")
def test_serving_load_reports_every_figure():
    pytest.importorskip("fastapi", reason="serving needs the `serving` extra")
    result = load_script("serving_load").main(["--requests", "8", "--memory-requests", "16", "--context", "4096"])
    assert result["load"]["correct"] == 8 and result["memory"]["requests"] == 16
    assert result["trickle"]["hostile_status"] == 400 and result["queue"]["full_queue_status"] == 503
    assert result["runaway"]["tokens_before_stop"] > 0
