"""dtypes: fp32 / fp16 / bf16 load and generate, `dtype="auto"` follows the checkpoint, and fp16 stays finite and close
to fp32 through the vision tower and every stack addition (the fp32 model is the independent reference).

All of this runs on CPU (torch 2.13: fp16 and bf16 matmul, layer norm, GELU, SDPA and softmax all have CPU kernels).
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import single_image_inputs, tiny_deepstack_config
from deepstack_hf import DeepStackForConditionalGeneration

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# cosine of logits vs fp32 on the tiny random model (measured: fp16 1.00000, bf16 0.99997)
MIN_COSINE = {torch.float32: 0.999999, torch.float16: 0.9995, torch.bfloat16: 0.995}


def _inputs(config, hd=False, seed=0):
    crop = config.vision_config.image_size
    return single_image_inputs(config, 2 * crop, 3 * crop, text_before=4, text_after=6, seed=seed)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "hd"])
def checkpoint(request, tmp_path_factory):
    config = tiny_deepstack_config(hd_layout=request.param)
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("fp32")
    model.save_pretrained(path)
    inputs = _inputs(config)
    with torch.no_grad():
        logits = model(**inputs).logits
    return {"path": path, "config": config, "inputs": inputs, "logits": logits}


def _cast(inputs, dtype):
    return dict(inputs, pixel_values=inputs["pixel_values"].to(dtype))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_load_and_generate_in_dtype(checkpoint, dtype_name):
    dtype = DTYPES[dtype_name]
    model = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"], dtype=dtype).eval()
    assert model.dtype == dtype
    # every floating parameter, vision tower and projector included (no silent fp32 islands)
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {dtype}
    inputs = _cast(checkpoint["inputs"], dtype)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    cosine = F.cosine_similarity(logits.float().flatten(), checkpoint["logits"].flatten(), dim=0)
    assert cosine >= MIN_COSINE[dtype], float(cosine)

    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("saved_dtype", [torch.bfloat16, torch.float16])
def test_dtype_auto_takes_the_checkpoint_dtype(checkpoint, tmp_path, saved_dtype):
    source = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"]).to(saved_dtype)
    source.save_pretrained(tmp_path)
    model = DeepStackForConditionalGeneration.from_pretrained(tmp_path, dtype="auto")
    assert model.dtype == saved_dtype
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {saved_dtype}
    # an explicit dtype still wins over the checkpoint's
    assert DeepStackForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32


def _capture(model):
    """Records every CLIP encoder layer's output, the projected stacks, and the decoder input at every layer."""
    records = {"vision": [], "decoder_in": {}, "stacks": None}
    handles = []
    for layer in model.model.vision_tower.encoder.layers:
        handles.append(
            layer.register_forward_hook(
                lambda m, a, out: records["vision"].append((out[0] if isinstance(out, tuple) else out).detach().float())
            )
        )
    for index, layer in enumerate(model.model.language_model.layers):

        def pre(module, args, kwargs, index=index):
            hidden = args[0] if args else kwargs["hidden_states"]
            records["decoder_in"].setdefault(index, hidden.detach().float())

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))

    def lm_pre(module, args, kwargs):
        if kwargs.get("deepstack_embeds"):
            records["stacks"] = {k: v.detach().float() for k, v in kwargs["deepstack_embeds"].items()}

    handles.append(model.model.language_model.register_forward_pre_hook(lm_pre, with_kwargs=True))
    return records, handles


def _cos(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("projector_peak", [None, 2000.0], ids=["as-initialized", "large-activations"])
def test_fp16_vision_tower_and_stack_additions_stay_finite_and_close_to_fp32(checkpoint, projector_peak):
    """`large-activations` rescales the projector so that its largest output is 2000 (real CLIP-L -> Vicuna visual
    tokens have outliers in the hundreds to thousands): the residual stream at the stack layers then sums several such
    values, far from fp16's comfortable range but below its 65504 limit. Additions must neither overflow nor drift."""
    scale = 1.0
    if projector_peak is not None:
        probe = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"]).eval()
        inputs = checkpoint["inputs"]
        outputs = []
        handle = probe.model.multi_modal_projector.register_forward_hook(lambda m, a, out: outputs.append(out))
        with torch.no_grad():
            probe.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        handle.remove()
        scale = projector_peak / float(outputs[0].abs().max())
    results = {}
    for dtype in (torch.float32, torch.float16):
        model = DeepStackForConditionalGeneration.from_pretrained(checkpoint["path"], dtype=dtype).eval()
        last = model.model.multi_modal_projector.linear_2
        with torch.no_grad():
            last.weight.mul_(scale)
            last.bias.mul_(scale)
        records, handles = _capture(model)
        with torch.no_grad():
            records["logits"] = model(**_cast(checkpoint["inputs"], dtype)).logits.float()
        for handle in handles:
            handle.remove()
        results[dtype] = records

    ref, half = results[torch.float32], results[torch.float16]
    assert len(half["vision"]) == len(ref["vision"]) == checkpoint["config"].vision_config.num_hidden_layers
    for got, want in zip(half["vision"], ref["vision"]):
        assert torch.isfinite(got).all()
        assert _cos(got, want) > 0.9999
    assert half["stacks"] is not None and half["stacks"].keys() == ref["stacks"].keys()
    assert sorted(half["stacks"]) == checkpoint["config"].deepstack_layers
    for layer, stack in half["stacks"].items():
        assert torch.isfinite(stack).all()
        assert _cos(stack, ref["stacks"][layer]) > 0.9999
    for layer, hidden in half["decoder_in"].items():
        # a layer's input is taken after the stack addition that precedes it, so every stack-layer sum is checked
        assert torch.isfinite(hidden).all(), layer
        assert _cos(hidden, ref["decoder_in"][layer]) > 0.9995, layer
    assert torch.isfinite(half["logits"]).all()
    assert _cos(half["logits"], ref["logits"]) > 0.999
    if projector_peak is not None:
        peak = max(float(h.abs().max()) for h in half["decoder_in"].values())
        assert peak > 1000, "the stress case must actually reach large magnitudes"
