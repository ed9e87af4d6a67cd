"""benchmarks/compare_llava.py runs end to end on the tiny preset (no timing is asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_llava.py"


@pytest.fixture(scope="module")
def compare_llava():
    spec = importlib.util.spec_from_file_location("compare_llava", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_preset_runs_and_reports_every_metric(compare_llava, tmp_path, capsys):
    out = tmp_path / "tiny.json"
    result = compare_llava.main(
        ["--preset", "tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--json", str(out)]
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
    for row in rows.values():
        assert row["prefill_s"] > 0 and row["decode_tokens_per_s"] > 0 and len(row["first_tokens"]) == 3
    for ratios in result["ratios"].values():
        assert set(ratios) >= {"visual_tokens", "prefill_s", "decode_tokens_per_s", "peak_memory_bytes"}
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
