"""Round trips through the converter: tiny original-format checkpoints -> Transformers -> from_pretrained.

Every converted model is checked against `original_reference`, an independent plain-torch implementation of the
original DeepStack computed straight from the ORIGINAL files (logits within 1e-4 in fp32, same prompt ids, same
greedy tokens).
"""

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import deepstack_hf  # noqa: F401
from transformers import AutoProcessor
from deepstack_hf.conversion import ConversionError, convert_checkpoint, main, verify_conversion
from deepstack_hf.testing_utils.original_reference import IMAGE_PLACEHOLDER, OriginalDeepStack, original_prompt
from deepstack_hf.conversion.streaming_safetensors import read_header, read_tensor
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint

VARIANTS = {
    # name: (builder kwargs, convert kwargs, dtype the weights were saved in)
    "llama-plain-sharded-bf16": (dict(text_model_type="llama", hd=False, sharded=True, dtype=torch.bfloat16), {}, torch.bfloat16),
    "llama-hd-single-fp32-unfrozen": (
        dict(text_model_type="llama", hd=True, sharded=False, dtype=torch.float32, unfreeze_vision_tower=True),
        {},
        torch.float32,
    ),
    "phi3-plain-single-bf16-to-fp32": (
        dict(text_model_type="phi3", hd=False, sharded=False, dtype=torch.bfloat16, projector_type="linear"),
        {"dtype": "float32"},
        torch.float32,
    ),
    "llama-plain-sharded-fp32-1d": (
        dict(text_model_type="llama", hd=False, sharded=True, dtype=torch.float32, extra_config={"deepstack_sampling": "1d"}),
        {"dtype": "float32", "max_shard_size": "60KB"},
        torch.float32,
    ),
}


def picture(width, height, seed=0):
    image = Image.new("RGB", (width, height), (230 - 20 * seed, 220, 200 + 10 * seed))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 8, height // 6, width // 2, height - 5), fill=(200, 40 + 50 * seed, 40))
    draw.ellipse((width // 2, 5, width - 5, height // 2), fill=(40, 90, 200))
    return image


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert every variant once: {name: (synthetic checkpoint, output dir, result, weight dtype)}."""
    results = {}
    for name, (build_kwargs, convert_kwargs, weight_dtype) in VARIANTS.items():
        root = tmp_path_factory.mktemp(name)
        synthetic = build_synthetic_checkpoint(root / "src", **build_kwargs)
        result = convert_checkpoint(synthetic.checkpoint, root / "out", progress=False, **convert_kwargs)
        results[name] = (synthetic, root / "out", result, weight_dtype)
    return results


@pytest.mark.parametrize("name", list(VARIANTS))
def test_round_trip_matches_original(converted, name):
    synthetic, out, result, weight_dtype = converted[name]
    files = set(result.files)
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    if name.endswith("60KB") or "max_shard_size" in VARIANTS[name][1]:
        assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    vision_weights = "checkpoint" if result.use_checkpoint_vision else "tower"
    report = verify_conversion(synthetic.checkpoint, out, vision_weights=vision_weights, weight_dtype=weight_dtype)
    assert report.prompt_ids_match, report.summary()
    assert report.max_abs_logit_diff <= 1e-4, report.summary()
    assert report.greedy_match, report.summary()


def test_config_tokenizer_and_generation_settings(converted):
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    synthetic, out, result, _ = converted["llama-plain-sharded-bf16"]
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "deepstack"
    assert config.text_config.model_type == "llama"
    assert config.projector_depth == 2 and config.num_crops == 4 and not config.hd_layout
    assert config.deepstack_layers == [1, 2, 3, 4] and config.vision_feature_layer == -2
    assert config.text_config.vocab_size == 320 and config.text_config.vocab_size % 64 == 0
    assert config.dtype == torch.bfloat16 or str(config.dtype).endswith("bfloat16")
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == 300
    assert "USER:" in processor.chat_template
    generation = GenerationConfig.from_pretrained(out)
    assert generation.suppress_tokens == list(range(300, 320))
    assert generation.pad_token_id == processor.tokenizer.pad_token_id

    phi_config = AutoConfig.from_pretrained(converted["phi3-plain-single-bf16-to-fp32"][1])
    assert phi_config.text_config.model_type == "phi3" and phi_config.projector_depth == 1
    assert phi_config.text_config.sliding_window is None
    phi_generation = GenerationConfig.from_pretrained(converted["phi3-plain-single-bf16-to-fp32"][1])
    assert phi_generation.eos_token_id == [300, 307]  # kept from the source's generation_config.json
    assert phi_generation.suppress_tokens == list(range(311, 320))
    hd_config = AutoConfig.from_pretrained(converted["llama-hd-single-fp32-unfrozen"][1])
    assert hd_config.hd_layout and hd_config.dtype in (torch.float32, "float32")


def test_new_embedding_rows_are_the_mean(converted):
    synthetic, out, result, _ = converted["llama-plain-sharded-bf16"]
    records = read_header(out / "model.safetensors")
    embed = read_tensor(records["model.language_model.embed_tokens.weight"]).float()
    source = {}
    for path in synthetic.checkpoint.glob("*.safetensors"):
        source.update(read_header(path))
    original = read_tensor(source["model.embed_tokens.weight"]).float()
    assert torch.equal(embed[:300], original)
    mean = original.double().mean(0).to(torch.bfloat16).float()
    assert torch.equal(embed[300:], mean.expand(20, -1))


def test_clip_weights_follow_the_original_loader_rule(converted, tmp_path):
    synthetic, out, result, _ = converted["llama-plain-sharded-bf16"]
    assert not result.use_checkpoint_vision  # unfreeze_mm_vision_tower is false
    tower = read_header(synthetic.vision_tower / "model.safetensors")
    name = "vision_model.embeddings.patch_embedding.weight"

    def converted_patch(directory):
        records = {}
        for path in Path(directory).glob("*.safetensors"):
            records.update(read_header(path))
        key = next(k for k in records if k.endswith("embeddings.patch_embedding.weight"))
        return read_tensor(records[key])

    assert torch.equal(converted_patch(out), read_tensor(tower[name]).to(torch.bfloat16))
    forced = convert_checkpoint(synthetic.checkpoint, tmp_path / "forced", vision_weights="checkpoint", progress=False)
    assert forced.use_checkpoint_vision
    source = {}
    for path in synthetic.checkpoint.glob("*.safetensors"):
        source.update(read_header(path))
    assert torch.equal(converted_patch(tmp_path / "forced"), read_tensor(source["model.vision_tower.vision_tower." + name]))

    hd_synthetic, hd_out, hd_result, _ = converted["llama-hd-single-fp32-unfrozen"]
    assert hd_result.use_checkpoint_vision  # unfreeze_mm_vision_tower is true


def test_batch_left_padding_and_several_images_match_original(converted):
    """Batch of two prompts (one with two images), left padded, against the reference run per prompt."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for name in ("llama-plain-sharded-bf16", "llama-hd-single-fp32-unfrozen"):
        synthetic, out, result, weight_dtype = converted[name]
        vision = "checkpoint" if result.use_checkpoint_vision else "tower"
        reference = OriginalDeepStack(synthetic.checkpoint, vision_weights=vision, weight_dtype=weight_dtype)
        processor = AutoProcessor.from_pretrained(out)
        model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
        images = [[picture(90, 50)], [picture(40, 100, 1), picture(60, 60, 2)]]
        prompts = [
            original_prompt("deepstack_llama", "What is this?"),
            original_prompt("deepstack_llama", "Compare the two pictures in detail please.", num_images=2),
        ]
        inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
            for row, (prompt, row_images) in enumerate(zip(prompts, images)):
                ids = reference.tokenizer.prompt_ids(prompt)
                expected = reference.logits(ids, row_images)
                length = expected.shape[0]
                assert int(inputs["attention_mask"][row].sum()) == length
                got = logits[row, -length:, : expected.shape[1]]
                assert (got - expected).abs().max() <= 1e-4, name


def _base_checkpoint(tmp_path, **kwargs):
    return build_synthetic_checkpoint(tmp_path / "src", num_hidden_layers=5, **kwargs)


def _with_config(synthetic, tmp_path, **changes):
    """A copy of the checkpoint directory (weights hard-linked) with config.json fields changed."""
    target = tmp_path / "variant"
    target.mkdir()
    for path in synthetic.checkpoint.iterdir():
        if path.name != "config.json":
            os.link(path, target / path.name)
    config = dict(synthetic.config)
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _assert_nothing_left(output: Path):
    assert not output.exists()
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert not leftovers, leftovers


REFUSALS = [
    ({"model_type": "llava_llama"}, "llava_llama"),
    ({"model_type": "deepstack_mistral"}, "deepstack_mistral"),
    ({"twoviews_unshare": True}, "twoviews_unshare"),
    ({"mm_vision_select_feature": "cls_patch"}, "cls_patch"),
    ({"mm_projector_type": "identity"}, "identity"),
    ({"mm_projector_type": "resampler"}, "resampler"),
    ({"image_aspect_ratio": "anyres"}, "anyres"),
    ({"image_aspect_ratio": "pad"}, "image_aspect_ratio"),
    ({"deepstack_sampling": "2d_scaledown"}, "2d_scaledown"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
    ({"s2": True}, "s2"),
    ({"deepstack_start_id": 3}, "deepstack_start_id"),
] + [
    ({"deepstack_args_for_ablation": flag}, flag)
    for flag in (
        "deepstack_vit",
        "hires_local",
        "2xsample+hires_local",
        "dummy_local",
        "only_global_features",
        "global_and_local",
        "string_woglobal",
        "string_withglobal",
        "scaledown_clip",
        "inconsistent",
        "anyres_unpad",
    )
]


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    return _base_checkpoint(tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("changes, named", REFUSALS, ids=[named for _, named in REFUSALS])
def test_refuses_unsupported_options(base_checkpoint, tmp_path, changes, named):
    source = _with_config(base_checkpoint, tmp_path, **changes)
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match=named.split("+")[0]):
        convert_checkpoint(source, output, progress=False)
    _assert_nothing_left(output)


def test_cli_refusal_exits_non_zero(base_checkpoint, tmp_path, capsys):
    source = _with_config(base_checkpoint, tmp_path, deepstack_args_for_ablation="hires_local")
    output = tmp_path / "out"
    assert main([str(source), str(output), "--no-progress"]) == 1
    assert "hires_local" in capsys.readouterr().err
    _assert_nothing_left(output)


def _copy_checkpoint(synthetic, tmp_path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(synthetic.checkpoint, target)
    return target


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory):
    return build_synthetic_checkpoint(tmp_path_factory.mktemp("sharded") / "src", sharded=True, num_hidden_layers=5)


def test_truncated_shard(sharded_checkpoint, tmp_path):
    source = _copy_checkpoint(sharded_checkpoint, tmp_path)
    shard = source / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match="Truncated.*model-00002-of-00003.safetensors"):
        convert_checkpoint(source, output, progress=False)
    _assert_nothing_left(output)


@pytest.mark.parametrize("corruption", ["json", "length"])
def test_corrupt_header(sharded_checkpoint, tmp_path, corruption):
    source = _copy_checkpoint(sharded_checkpoint, tmp_path)
    shard = source / "model-00001-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    if corruption == "json":
        data[8:20] = b"{not json!!!"
    else:
        data[0:8] = (10**12).to_bytes(8, "little")
    shard.write_bytes(bytes(data))
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match="model-00001-of-00003.safetensors"):
        convert_checkpoint(source, output, progress=False)
    _assert_nothing_left(output)


def test_missing_shard(sharded_checkpoint, tmp_path):
    source = _copy_checkpoint(sharded_checkpoint, tmp_path)
    (source / "model-00003-of-00003.safetensors").unlink()
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match="Missing shard.*model-00003-of-00003.safetensors"):
        convert_checkpoint(source, output, progress=False)
    _assert_nothing_left(output)


def test_pickle_only_checkpoint_is_refused_without_unpickling(sharded_checkpoint, tmp_path):
    source = _copy_checkpoint(sharded_checkpoint, tmp_path)
    for path in list(source.glob("*.safetensors")) + [source / "model.safetensors.index.json"]:
        path.unlink()
    # Not even a valid pickle: loading it would raise something else than our message.
    (source / "pytorch_model.bin").write_bytes(b"\x80\x04this would run code if unpickled")
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match="pytorch_model.bin.*never unpickles"):
        convert_checkpoint(source, output, progress=False)
    _assert_nothing_left(output)


def test_unexpected_tensor_is_refused(base_checkpoint, tmp_path):
    from deepstack_hf.conversion.streaming_safetensors import write_tensors

    source = _copy_checkpoint(base_checkpoint, tmp_path)
    records = read_header(source / "model.safetensors")
    state = {name: read_tensor(record) for name, record in records.items()}
    state["model.vision_tower.post_encoder.0.weight"] = torch.zeros(2)
    write_tensors(source / "model.safetensors", state)
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match="post_encoder"):
        convert_checkpoint(source, output, progress=False)
    _assert_nothing_left(output)


def test_non_empty_output_needs_overwrite(base_checkpoint, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match="not empty.*--overwrite"):
        convert_checkpoint(base_checkpoint.checkpoint, output, progress=False)
    assert (output / "keep.txt").read_text() == "precious"
    assert main([str(base_checkpoint.checkpoint), str(output), "--no-progress"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]

    assert main([str(base_checkpoint.checkpoint), str(output), "--overwrite", "--no-progress", "-q"]) == 0
    assert not (output / "keep.txt").exists() and (output / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_dry_run_lists_files(base_checkpoint, tmp_path, capsys):
    output = tmp_path / "out"
    code = main([str(base_checkpoint.checkpoint), str(output), "--no-progress", "--push-to-hub", "someone/deepstack-tiny", "--dry-run"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Would upload" in printed and "someone/deepstack-tiny" in printed
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"):
        assert name in printed
    assert main([str(base_checkpoint.checkpoint), str(tmp_path / "x"), "--dry-run"]) == 2  # needs --push-to-hub


def test_generated_card_metadata(converted):
    from huggingface_hub import ModelCard

    _, out, result, _ = converted["llama-plain-sharded-bf16"]
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers"
    assert card.data.license == "llama2"
    text = card.text
    for needle in ("2406.04334", "suppress_tokens", "USER: <image>", "BitsAndBytesConfig", "79.5", "@inproceedings"):
        assert needle in text
    phi_card = ModelCard.load(converted["phi3-plain-single-bf16-to-fp32"][1] / "README.md")
    assert phi_card.data.license == "mit" and "<|assistant|>" in phi_card.text


def test_card_for_hub_source_has_base_model():
    from huggingface_hub import ModelCard

    from deepstack_hf.conversion.model_card import official_card_info, render_model_card

    card = ModelCard(render_model_card(official_card_info("deepstack-l-hd-vicuna-7b")))
    assert card.data.base_model == "menglc/deepstack-l-hd-vicuna-7b"
    assert "82.0" in card.text and "78.8" in card.text


def test_official_model_cards_are_rendered_from_the_template():
    from deepstack_hf.conversion.model_card import OFFICIAL, official_card_info, render_model_card

    root = Path(__file__).resolve().parents[1] / "model_cards"
    for name in OFFICIAL:
        assert (root / f"{name}.md").read_text() == render_model_card(official_card_info(name)), (
            f"model_cards/{name}.md is stale: run `python -m deepstack_hf.conversion.model_card model_cards`"
        )


def test_reference_prompt_ids_follow_the_chunk_rule(base_checkpoint):
    reference = OriginalDeepStack(base_checkpoint.checkpoint)
    ids = reference.tokenizer.prompt_ids(original_prompt("deepstack_llama", "What is this?"))
    assert ids.count(IMAGE_PLACEHOLDER) == 1 and ids[0] == 1 and ids.count(1) == 1
    after = ids[ids.index(IMAGE_PLACEHOLDER) + 1 :]
    assert reference.tokenizer.with_prefix.id_to_piece(after[0]) == "\u2581"  # word-boundary piece before "\n"


@pytest.mark.parametrize("listed_as_special", [False, True])
def test_phi3_prompt_start_follows_the_slow_tokenizer(tmp_path, listed_as_special):
    """The original's slow tokenizer (transformers 4.39.3, measured on this synthetic Phi-3 tokenizer) gives
    [<s>, ▁, <|system|>, ...] for the phi3_instruct prompt, and [<s>, <|system|>, ...] once tokenizer_config.json
    lists the chat tokens as additional_special_tokens. Converter and reference must both follow."""
    synthetic = build_synthetic_checkpoint(tmp_path / "src", text_model_type="phi3", num_hidden_layers=5)
    if listed_as_special:
        config_path = synthetic.checkpoint / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config["additional_special_tokens"] = ["<|system|>", "<|end|>", "<|user|>", "<|assistant|>"]
        config_path.write_text(json.dumps(tokenizer_config))
    convert_checkpoint(synthetic.checkpoint, tmp_path / "out", progress=False)
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=[picture(60, 40)], text=prompt)["input_ids"][0]

    system_id = processor.tokenizer.convert_tokens_to_ids("<|system|>")
    boundary_id = processor.tokenizer.convert_tokens_to_ids("\u2581")
    expected_start = [1, system_id] if listed_as_special else [1, boundary_id, system_id]
    assert ids[: len(expected_start)] == expected_start
    reference_ids = OriginalDeepStack(synthetic.checkpoint).tokenizer.prompt_ids(original_prompt("deepstack_phi", "What is this?"))
    assert reference_ids[: len(expected_start)] == expected_start
