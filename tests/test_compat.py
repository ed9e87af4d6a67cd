"""What the package relies on for each non-public Transformers name it uses (all of them come from `_compat`).

One test per name or flag, stating the behaviour the package needs from the installed release, so that a release
that changes one of them fails here first; and a check that no other package module imports a non-public
Transformers name itself.
"""

import ast
import dataclasses
import inspect
import math
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_deepstack_config, tiny_vision_config
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, GenerationMixin, LlamaModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from deepstack_hf import DeepStackForConditionalGeneration, _compat

PACKAGE = Path(_compat.__file__).parent
# Modules whose names count as public besides the top-level exports: those Transformers' reference documentation
# covers for model, processor, image- and video-processor authors.
PUBLIC_MODULES = {
    "transformers.modeling_outputs",
    "transformers.cache_utils",
    "transformers.generation",
    "transformers.processing_utils",
    "transformers.image_processing_utils",
    "transformers.image_utils",
    "transformers.image_transforms",
    "transformers.video_processing_utils",
    "transformers.video_utils",
}


def non_public_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("transformers.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers":
            if node.module in PUBLIC_MODULES:
                continue
            top_level = [alias.name for alias in node.names if alias.name in transformers.__all__ or (
                hasattr(transformers, alias.name) and not inspect.ismodule(getattr(transformers, alias.name)))]
            same_object = [
                name for name in top_level
                if node.module == "transformers" or getattr(transformers, name) is getattr(__import__(node.module, fromlist=[name]), name)
            ]
            found += [f"{node.module}.{alias.name}" for alias in node.names if alias.name not in same_object]
    return found


def test_only_compat_imports_non_public_transformers_names():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.name == "_compat.py":
            continue
        if names := non_public_imports(path):
            offenders[str(relative)] = names
    assert offenders == {}


# ---------------------------------------------------------------- the cache's name


def test_cache_name_is_the_releases_own():
    """`CACHE_NAME` is the field of the release's output classes that holds the KV cache, the keyword argument its
    decoders and `prepare_inputs_for_generation` take, and where a cached forward of the model returns the cache."""
    name = _compat.CACHE_NAME
    assert name in {field.name for field in dataclasses.fields(BaseModelOutputWithPast)}
    assert name in {field.name for field in dataclasses.fields(CausalLMOutputWithPast)}
    assert name in inspect.signature(LlamaModel.forward).parameters
    assert name in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    model = DeepStackForConditionalGeneration(tiny_deepstack_config()).eval()
    with torch.no_grad():
        output = model(input_ids=torch.tensor([[1, 5, 6]]), use_cache=True)
    assert isinstance(getattr(output, name), Cache) and getattr(output, name).get_seq_length() == 3
    assert name in output.keys()  # what generation's `"cache" in outputs` / `outputs.past_key_values` read


def test_multimodal_output_classes():
    """The model's outputs derive from these: the release's own fields (the cache under `CACHE_NAME`) plus
    `image_outputs`, the image encoder's output (from 5.24 the release's multimodal outputs, before that the plain
    ones with that one field added)."""
    for output_class, plain in (
        (_compat.MultimodalBaseModelOutputWithPast, BaseModelOutputWithPast),
        (_compat.MultimodalCausalLMOutputWithPast, CausalLMOutputWithPast),
    ):
        names = [field.name for field in dataclasses.fields(output_class)]
        assert "image_outputs" in names and _compat.CACHE_NAME in names
        assert set(field.name for field in dataclasses.fields(plain)) <= set(names)


# ---------------------------------------------------------------- what generate does with images


def record_model_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def image_prompt(config):
    from test_modeling_deepstack import ROWS, batch_inputs

    return batch_inputs(config, rows=ROWS[:1])


def test_generate_encodes_images_flag():
    """True: `generate` encodes `pixel_values` into `mm_encoder_outputs` before the prefill and hands the prefill
    those. False (5.17): the prefill gets `pixel_values` itself (and `generate` repeats them image by image)."""
    model = DeepStackForConditionalGeneration(tiny_deepstack_config()).eval()
    calls = record_model_calls(model)
    with torch.no_grad():
        model.generate(**image_prompt(model.config), max_new_tokens=2, do_sample=False)
    prefill = calls[0]
    if _compat.GENERATE_ENCODES_IMAGES:
        assert prefill.get("pixel_values") is None and prefill["mm_encoder_outputs"]["image"] is not None
    else:
        assert prefill["pixel_values"] is not None and prefill.get("mm_encoder_outputs") is None
    assert all(call.get("pixel_values") is None and call.get("mm_encoder_outputs") is None for call in calls[1:])


def test_generate_repeats_image_groups_flag():
    """True: for `num_return_sequences` `generate` repeats a prompt's whole group of images (`[A, B] -> [A, B, A,
    B]`). False: image by image (`[A, A, B, B]`), in `pixel_values` (5.17) or in the encoder outputs (5.18). Seen
    by the prefill of a prompt with two images of different sizes (called past the model's own refusal, through
    `GenerationMixin.generate`)."""
    from test_modeling_deepstack import ROWS, batch_inputs

    model = DeepStackForConditionalGeneration(tiny_deepstack_config()).eval()
    inputs = batch_inputs(model.config, rows=ROWS[2:])
    calls = record_model_calls(model)
    with torch.no_grad():
        GenerationMixin.generate(model, **inputs, max_new_tokens=1, do_sample=True, num_return_sequences=2)
    prefill = calls[0]
    if _compat.GENERATE_ENCODES_IMAGES:
        with torch.no_grad():
            a, b = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        given = list(prefill["mm_encoder_outputs"]["image"].pooler_output)
    else:
        a, b = inputs["pixel_values"]
        given = list(prefill["pixel_values"])
    order = [[torch.equal(item, reference) for reference in (a, b)].index(True) for item in given]
    assert order == ([0, 1, 0, 1] if _compat.GENERATE_REPEATS_IMAGE_GROUPS else [0, 0, 1, 1])


def test_chunked_prefill_gets_images_flag():
    """True: each chunk of a chunked prefill gets the image rows of its own placeholder tokens. False: every chunk runs
    without images (called past the model's own refusal, through `GenerationMixin.generate`)."""
    model = DeepStackForConditionalGeneration(tiny_deepstack_config()).eval()
    inputs = image_prompt(model.config)
    calls = record_model_calls(model)
    with torch.no_grad():
        GenerationMixin.generate(model, **inputs, max_new_tokens=1, do_sample=False, prefill_chunk_size=8)
    chunks = [call for call in calls if call["input_ids"].shape[1] == 8]
    assert len(chunks) >= 2
    rows = []
    for chunk in chunks:
        images = (chunk.get("mm_encoder_outputs") or {}).get("image")
        rows.append(0 if images is None else sum(len(features) for features in images.pooler_output))
    image_tokens = [int((chunk["input_ids"] == model.config.image_token_id).sum()) for chunk in chunks]
    assert any(image_tokens)
    assert rows == (image_tokens if _compat.CHUNKED_PREFILL_GETS_IMAGES else [0] * len(chunks))


# ---------------------------------------------------------------- building blocks


def test_act2fn_maps_config_names_to_activation_modules():
    assert "gelu" in _compat.ACT2FN and "quick_gelu" in _compat.ACT2FN and "no-such-act" not in _compat.ACT2FN
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(_compat.ACT2FN["gelu"](x), nn.functional.gelu(x))
    assert isinstance(_compat.ACT2FN["gelu"], nn.Module)


def test_init_normal_fills_in_place():
    tensor = torch.empty(20000)
    assert _compat.init.normal_(tensor, mean=0.0, std=0.5) is tensor
    assert math.isclose(tensor.std().item(), 0.5, rel_tol=0.05)


def test_clip_layers_are_the_clip_vision_models():
    """DeepStack-V's tower is made of CLIP's embeddings, encoder and encoder layers: same weight names as
    `CLIPVisionModel`, layers `(batch, tokens, C) -> (batch, tokens, C)` called with `(hidden_states, attention_mask)`,
    attention modules of class `CLIPAttention` (what output capture records)."""
    config = CLIPVisionConfig(**{k: v for k, v in tiny_vision_config().items() if k != "model_type"})
    clip = CLIPVisionModel(config)
    embeddings, encoder = _compat.CLIPVisionEmbeddings(config), _compat.CLIPEncoder(config)
    assert embeddings.state_dict().keys() == clip.embeddings.state_dict().keys()
    assert encoder.state_dict().keys() == clip.encoder.state_dict().keys()
    assert all(type(layer) is _compat.CLIPEncoderLayer for layer in encoder.layers)
    assert isinstance(encoder.layers[0].self_attn, _compat.CLIPAttention)
    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    states = embeddings(pixels)
    assert states.shape == (2, 1 + (config.image_size // config.patch_size) ** 2, config.hidden_size)
    out = encoder.layers[0](states, None)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == states.shape


def test_custom_object_save_copies_the_module_and_its_relative_imports(tmp_path):
    from deepstack_hf.conversion.remote_code import registered_for_auto_classes

    config = tiny_deepstack_config()
    with registered_for_auto_classes(), torch.device("meta"):
        _compat.custom_object_save(DeepStackForConditionalGeneration(config), tmp_path, config=config)
    files = {path.name for path in tmp_path.glob("*.py")}
    assert {"modeling_deepstack.py", "_compat.py", "modeling_deepstack_text.py"} <= files
    assert config.auto_map["AutoModelForImageTextToText"].endswith("modeling_deepstack.DeepStackForConditionalGeneration")


# ---------------------------------------------------------------- forward decorators and checks


def test_can_return_tuple_and_merge_with_config_defaults():
    model = DeepStackForConditionalGeneration(tiny_deepstack_config()).eval()
    with torch.no_grad():
        as_tuple = model(input_ids=torch.tensor([[1, 5, 6]]), return_dict=False)
        as_output = model(input_ids=torch.tensor([[1, 5, 6]]))
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_output.logits)

    class Probe(nn.Module):
        config = tiny_deepstack_config()

        @_compat.merge_with_config_defaults
        def forward(self, vision_feature_layer=None, **kwargs):
            return vision_feature_layer

    assert Probe()() == Probe.config.vision_feature_layer and Probe()(vision_feature_layer=-1) == -1


def test_capture_outputs_and_select_hidden_states():
    """The DeepStack-V tower records attentions through `capture_outputs`; `get_image_features` asks, through
    `select_hidden_states`, for (at least) the hidden state `vision_feature_layer`."""
    model = DeepStackForConditionalGeneration(tiny_deepstack_config(deepstack_variant="V", attn_implementation="eager"))
    model.eval()
    tower = model.model.vision_tower
    with torch.no_grad():
        output = tower(torch.randn(5, 3, 56, 56), output_attentions=True)
    assert len(output.attentions) == len(tower.layers)
    seen = []
    hook = tower.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("output_hidden_states")), with_kwargs=True)
    with torch.no_grad():
        model.model.get_image_features(torch.randn(1, 5, 3, 56, 56), torch.tensor([[56, 56]]))
    hook.remove()
    requested = seen[0]
    assert requested is True or model.config.vision_feature_layer in (requested if isinstance(requested, (list, tuple, set)) else [requested])


def test_compilable_check_dynamo_flag_and_kwargs_type():
    with pytest.raises(ValueError, match="rows: 3"):
        _compat.torch_compilable_check(torch.tensor(2) == 3, lambda: "rows: 3")
    _compat.torch_compilable_check(torch.tensor(3) == 3, lambda: "never")
    assert _compat.is_torchdynamo_compiling() is False
    assert {"output_attentions", "output_hidden_states"} <= set(_compat.TransformersKwargs.__annotations__)


def test_slice_logits_to_keep():
    hidden = torch.arange(24.0).view(1, 6, 4)
    torch.testing.assert_close(_compat.slice_logits_to_keep(hidden, 0), hidden)
    torch.testing.assert_close(_compat.slice_logits_to_keep(hidden, 2), hidden[:, -2:])
    torch.testing.assert_close(_compat.slice_logits_to_keep(hidden, torch.tensor([0, 3])), hidden[:, [0, 3]])


def test_auto_image_processor_is_the_real_class():
    assert hasattr(_compat.AutoImageProcessor, "register") and hasattr(_compat.AutoImageProcessor, "from_pretrained")
