"""Converting original DeepStack-V checkpoints (`deepstack_vit` + `lsvit_start_layer_S`), checked against the
independent reference (`original_reference`, plain torch from the original's rules, docs/design.md) and
refused by name where the original cannot run."""

import json

import pytest
import torch

from deepstack_hf.conversion import ConversionError, convert_checkpoint, verify_conversion
from deepstack_hf.conversion.streaming_safetensors import read_header, read_tensor
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint, tiny_vision_config
from test_square_grid import strip as picture

TOWER_LAYERS = tiny_vision_config()["num_hidden_layers"]


def v_checkpoint(root, split, square=True, **kwargs):
    items = ["deepstack_vit", f"lsvit_start_layer_{split}"] + (["2xsample"] if square else [])
    extra = {"deepstack_args_for_ablation": "+".join(items), **kwargs.pop("extra_config", {})}
    post = 5 if split >= TOWER_LAYERS else 0
    return build_synthetic_checkpoint(
        root, num_hidden_layers=5, dtype=torch.float32, post_encoder_layers=post,
        unfreeze_vision_tower=kwargs.pop("unfreeze_vision_tower", bool(post)), extra_config=extra, **kwargs
    )


# (split layer, with 2xsample): the edge cases of docs/design.md "DeepStack-V" on the 3-layer tiny CLIP
CASES = [(0, True), (1, True), (TOWER_LAYERS - 1, True), (TOWER_LAYERS, True), (TOWER_LAYERS + 5, True), (1, False)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    results = {}
    for split, square in CASES:
        root = tmp_path_factory.mktemp(f"v{split}{square}")
        synthetic = v_checkpoint(root / "src", split, square)
        result = convert_checkpoint(synthetic.checkpoint, root / "out", progress=False)
        results[split, square] = (synthetic, root / "out", result)
    return results


@pytest.mark.parametrize("split, square", CASES)
def test_converted_deepstack_v_matches_the_original(converted, split, square):
    synthetic, out, result = converted[split, square]
    config = json.loads((out / "config.json").read_text())
    extra = 5 if split >= TOWER_LAYERS else 0
    assert config["deepstack_variant"] == "V" and config["vision_split_layer"] == split
    assert config["vision_post_layers"] == extra and config["deepstack_layers"] == []
    assert config["square_grid"] is True  # DeepStack-V always uses the square grid, with or without 2xsample
    assert config["vision_feature_layer"] == (-1 if extra else -2)
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["image_processor"]["square_grid"] is True
    # a square image (its best grid is square too, so the original runs it without 2xsample) and a strip
    images = [picture(90, 90)] + ([picture(200, 50)] if square else [])
    for image in images:
        report = verify_conversion(synthetic.checkpoint, out, weight_dtype=torch.float32, max_new_tokens=3, image=image)
        assert report.prompt_ids_match and report.greedy_match, report.summary()
        assert report.max_abs_logit_diff <= 1e-4, report.summary()


def test_extra_layers_are_copied_from_the_checkpoint(converted):
    synthetic, out, _ = converted[TOWER_LAYERS, True]
    source = {}
    for path in synthetic.checkpoint.glob("*.safetensors"):
        source.update(read_header(path))
    converted_tensors = {}
    for path in out.glob("*.safetensors"):
        converted_tensors.update(read_header(path))
    names = sorted(name for name in source if ".post_encoder." in name)
    assert len(names) == 5 * 16
    for name in names:
        assert torch.equal(read_tensor(converted_tensors[name]), read_tensor(source[name])), name


REFUSALS = [
    ({"deepstack_args_for_ablation": "deepstack_vit"}, "bare 'deepstack_vit'"),
    ({"deepstack_args_for_ablation": "deepstack_vit+2xsample"}, "bare 'deepstack_vit'"),
    ({"deepstack_args_for_ablation": "deepstack_vit+lsvit_start_layer_1", "is_anyres_deepstack": True}, "HD layout"),
    ({"deepstack_args_for_ablation": f"deepstack_vit+lsvit_start_layer_{TOWER_LAYERS}"}, "unfreeze_mm_vision_tower"),
    ({"deepstack_args_for_ablation": "lsvit_start_layer_1"}, "without 'deepstack_vit'"),
    ({"deepstack_args_for_ablation": "deepstack_vit+lsvit_start_layer_1+lsvit_start_layer_2"}, "at most one"),
    ({"deepstack_args_for_ablation": "deepstack_vit+lsvit_start_layer_x"}, "lsvit_start_layer_x"),
    ({"deepstack_args_for_ablation": "deepstack_vit+lsvit_start_layer_1", "num_crops": 6}, "square num_crops"),
    ({"deepstack_args_for_ablation": "deepstack_vit+lsvit_start_layer_1+hires_local"}, "hires_local"),
]


@pytest.mark.parametrize("changes, named", REFUSALS, ids=[named for _, named in REFUSALS])
def test_refuses_what_the_original_cannot_run(tmp_path, changes, named):
    synthetic = build_synthetic_checkpoint(tmp_path / "src", num_hidden_layers=7, extra_config=changes)
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match=named):
        convert_checkpoint(synthetic.checkpoint, output, progress=False)
    assert not output.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_extra_layer_weights_without_the_extra_layers_are_refused(tmp_path):
    synthetic = build_synthetic_checkpoint(
        tmp_path / "src", num_hidden_layers=5, post_encoder_layers=5,
        extra_config={"deepstack_args_for_ablation": "deepstack_vit+lsvit_start_layer_1"},
    )
    with pytest.raises(ConversionError, match="post_encoder"):
        convert_checkpoint(synthetic.checkpoint, tmp_path / "out", progress=False)


def test_model_card_describes_deepstack_v(converted):
    _, out, _ = converted[1, True]
    card = (out / "README.md").read_text()
    assert "DeepStack-V" in card and "inside the CLIP tower, before its layers 1, 2" in card
