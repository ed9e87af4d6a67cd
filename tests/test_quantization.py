"""bitsandbytes 4-bit (nf4, double quant) and 8-bit: only the language model's Linear layers are quantized.

The policy lives in `deepstack_hf.quantization`; the model's `from_pretrained` applies it without the user passing
a skip list. bitsandbytes' CPU backend runs both paths here.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import single_image_inputs, tiny_deepstack_config
from deepstack_hf import DeepStackForConditionalGeneration, DeepStackModel
from deepstack_hf.quantization import (
    DEFAULT_BNB_SKIP_MODULES,
    apply_default_bnb_skip_modules,
    default_bnb_quantization_config,
    quantized_module_names,
)
from transformers import BitsAndBytesConfig
from transformers.quantizers.quantizers_utils import should_convert_module

bnb = pytest.importorskip("bitsandbytes")

NF4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)


def _config():
    # hidden 64 so that every decoder Linear holds whole 64-value quantization blocks
    return tiny_deepstack_config(text_config={"hidden_size": 64, "intermediate_size": 128})


def _inputs(config, seed=0):
    crop = config.vision_config.image_size
    return single_image_inputs(config, 2 * crop, 2 * crop, text_before=5, text_after=8, seed=seed)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved fp32 tiny model, its inputs, and its fp32 logits and image features (the full-precision reference)."""
    config = _config()
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("fp32")
    model.save_pretrained(path)
    inputs = _inputs(config)
    with torch.no_grad():
        logits = model(**inputs).logits
        features = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    return {"path": path, "inputs": inputs, "logits": logits, "features": features, "model": model}


def _load(path, **kwargs):
    return DeepStackForConditionalGeneration.from_pretrained(path, **kwargs).eval()


def _assert_only_language_model_quantized(model, quant_cls):
    language_linears = [
        name for name, module in model.named_modules() if ".language_model." in name and isinstance(module, nn.Linear)
    ]
    assert language_linears, "the decoder has Linear layers"
    for name in language_linears:
        assert isinstance(model.get_submodule(name), quant_cls), name
    # every q/k/v/o and MLP projection of every decoder layer
    assert len(language_linears) == 7 * model.config.text_config.num_hidden_layers
    for prefix in ("model.vision_tower", "model.multi_modal_projector"):
        linears = [m for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]
        assert linears, prefix
        assert all(type(m) is nn.Linear for m in linears), prefix
    assert type(model.lm_head) is nn.Linear
    groups = quantized_module_names(model)
    assert all(".language_model.layers." in name for name in groups["quantized"])


# ----------------------------------------------------------------------------------------------- the policy itself
def test_default_policy_fills_only_an_unset_skip_list():
    user = BitsAndBytesConfig(**NF4)
    filled = default_bnb_quantization_config(user)
    assert filled.llm_int8_skip_modules == list(DEFAULT_BNB_SKIP_MODULES)
    assert user.llm_int8_skip_modules is None, "the caller's config must not be mutated"
    assert filled.bnb_4bit_quant_type == "nf4" and filled.bnb_4bit_use_double_quant

    explicit = BitsAndBytesConfig(**NF4, llm_int8_skip_modules=["lm_head"])
    assert default_bnb_quantization_config(explicit) is explicit

    as_dict = default_bnb_quantization_config({"load_in_8bit": True})
    assert as_dict["llm_int8_skip_modules"] == list(DEFAULT_BNB_SKIP_MODULES)
    assert default_bnb_quantization_config({"quant_method": "gptq", "bits": 4}) == {"quant_method": "gptq", "bits": 4}
    assert default_bnb_quantization_config(None) is None

    kwargs = {"dtype": torch.float16}
    assert apply_default_bnb_skip_modules(kwargs) == {"dtype": torch.float16}


@pytest.mark.parametrize("model_class", [DeepStackForConditionalGeneration, DeepStackModel])
def test_default_skip_list_matches_transformers_name_matching(model_class):
    """Transformers' own matcher, on the real module names: vision tower / projector / lm_head kept, decoder converted."""
    with torch.device("meta"):
        model = model_class(_config())
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        convert = should_convert_module(name, list(DEFAULT_BNB_SKIP_MODULES))
        assert convert == ("language_model" in name), name


# ----------------------------------------------------------------------------------------------- 4-bit nf4
def _disable_cpu_bf16_kernel(model):
    """bitsandbytes >= 0.48 repacks 4-bit weights on the first CPU forward when the CPU has AVX512-BF16 and then
    multiplies in bf16 whatever `bnb_4bit_compute_dtype` says. Turning that off gives the reference kernel
    (dequantize, then matmul in the compute dtype), which is what the exact comparisons below need."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def test_4bit_nf4_quantizes_language_model_only_and_stays_close(checkpoint):
    config = BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.float32)
    model = _load(checkpoint["path"], quantization_config=config)
    _assert_only_language_model_quantized(model, bnb.nn.Linear4bit)
    layer = model.model.language_model.layers[0].self_attn.q_proj
    assert layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.quant_state.nested, "double quantization"
    inputs = checkpoint["inputs"]

    # second path: the fp32 model with the decoder weights replaced by their dequantized nf4 values
    # (dequantized before any forward: bitsandbytes' CPU kernel repacks the weights in place on the first one)
    dequantized = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"]).eval()
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            dequantized.get_submodule(name).weight.data.copy_(weight.reshape(module.out_features, module.in_features))
    with torch.no_grad():
        expected = dequantized(**inputs).logits
        fast = model(**inputs).logits  # whichever kernel bitsandbytes picks on this CPU
        _disable_cpu_bf16_kernel(model)
        # vision tower and projector untouched: identical to the fp32 model
        features = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        for got, want in zip(features.pooler_output, checkpoint["features"].pooler_output):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    model_ref = _disable_cpu_bf16_kernel(_load(checkpoint["path"], quantization_config=config))
    with torch.no_grad():
        logits = model_ref(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert F.cosine_similarity(fast.flatten(), logits.flatten(), dim=0) > 0.9999

    # close to full precision: nf4 on random Gaussian weights perturbs each weight by ~10%, so cos >= 0.95
    reference = checkpoint["logits"]
    for got in (logits, fast):
        assert F.cosine_similarity(got.flatten(), reference.flatten(), dim=0) > 0.95
        assert (got.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.6


def test_4bit_keeps_vision_tower_in_compute_dtype_not_fp32(checkpoint):
    """fp16 load: the skipped parts are fp16 (no `_keep_in_fp32_modules` upcast), generation runs and is finite."""
    config = BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.float16)
    model = _load(checkpoint["path"], quantization_config=config, dtype=torch.float16)
    _assert_only_language_model_quantized(model, bnb.nn.Linear4bit)
    for part in (model.model.vision_tower, model.model.multi_modal_projector, model.lm_head):
        assert {p.dtype for p in part.parameters()} == {torch.float16}
    inputs = dict(checkpoint["inputs"], pixel_values=checkpoint["inputs"]["pixel_values"].half())
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    reference = checkpoint["logits"]
    assert F.cosine_similarity(logits.float().flatten(), reference.flatten(), dim=0) > 0.95
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_4bit_prequantized_save_and_reload(checkpoint, tmp_path):
    config = BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.float32)
    model = _load(checkpoint["path"], quantization_config=config)
    # saved before any forward: on AVX512-BF16 CPUs bitsandbytes repacks the weights on the first forward and its
    # inverse repacking re-quantizes the nested absmax, so a save *after* CPU inference shifts logits by ~1e-3
    state = {key: value.clone() for key, value in model.state_dict().items()}
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["load_in_4bit"] and saved["bnb_4bit_quant_type"] == "nf4" and saved["bnb_4bit_use_double_quant"]
    assert sorted(saved["llm_int8_skip_modules"]) == sorted(DEFAULT_BNB_SKIP_MODULES)

    # the plain loader, no quantization_config: the checkpoint's own config says what is quantized
    reloaded = DeepStackForConditionalGeneration.from_pretrained(tmp_path).eval()
    _assert_only_language_model_quantized(reloaded, bnb.nn.Linear4bit)
    assert quantized_module_names(reloaded) == quantized_module_names(model)
    assert reloaded.model.language_model.layers[0].mlp.down_proj.weight.quant_state.nested
    reloaded_state = reloaded.state_dict()
    assert reloaded_state.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(reloaded_state[key], value), key
    inputs = checkpoint["inputs"]
    with torch.no_grad():
        before, after = model(**inputs).logits, reloaded(**inputs).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_user_skip_list_wins_over_the_default(checkpoint):
    config = BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"])
    model = _load(checkpoint["path"], quantization_config=config)
    assert isinstance(model.model.vision_tower.encoder.layers[0].mlp.fc1, bnb.nn.Linear4bit)
    assert isinstance(model.model.multi_modal_projector.linear_1, bnb.nn.Linear4bit)
    assert type(model.lm_head) is nn.Linear


def test_plain_from_pretrained_applies_the_default(checkpoint):
    """The default comes from the model itself; the caller's config object is left as it was."""
    config = BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.float32)
    model = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"], quantization_config=config)
    _assert_only_language_model_quantized(model, bnb.nn.Linear4bit)
    assert config.llm_int8_skip_modules is None, "the user's config object is not mutated"


# ----------------------------------------------------------------------------------------------- 8-bit
def test_8bit_quantizes_language_model_only_and_stays_close(checkpoint):
    model = _load(checkpoint["path"], quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    _assert_only_language_model_quantized(model, bnb.nn.Linear8bitLt)
    assert model.model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.int8
    inputs = checkpoint["inputs"]
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    reference = checkpoint["logits"]
    # LLM.int8: per-row absmax int8 weights and activations -> much closer than nf4
    assert F.cosine_similarity(logits.flatten(), reference.flatten(), dim=0) > 0.999
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
