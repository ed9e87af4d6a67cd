"""Every generation mode, on every supported decoder and DeepStack variant, against one-at-a-time uncached decoding.

The reference for a prompt is a plain loop of full forward passes over that prompt alone (no padding, its own
images, no KV cache, `generate` not involved): the argmax at the last position is appended until `NEW_TOKENS`
tokens or EOS. Batched and left-padded (with a text-only row), cached, static-cache, compiled, chunked, assisted and
prompt-lookup generation must give exactly its tokens, so anything a Transformers release changes in what
`generate` hands the model (the cache's name, the masks, which image inputs reach which step) fails here. Beam search
is compared with uncached beam search one prompt at a time, sampling with uncached sampling from the same seed.

The batch (tests/test_modeling_deepstack.py `ROWS`): a prompt with one image, a text-only prompt, a prompt with two
images of other sizes; left-padded to one length.
"""

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_deepstack_config, tiny_text_config
from transformers import AutoConfig, AutoModelForCausalLM, CompileConfig

from deepstack_hf import DeepStackForConditionalGeneration
from deepstack_hf._compat import (
    CACHE_NAME,
    CHUNKED_PREFILL_GETS_IMAGES,
    GENERATE_ENCODES_IMAGES,
    GENERATE_REPEATS_IMAGE_GROUPS,
)
from test_modeling_deepstack import IMAGE_TOKEN, PAD, ROW_IMAGES, ROWS, batch_inputs, row_inputs

EOS = 2  # conftest's tiny decoders
NEW_TOKENS = 4
# DeepStack-L on each decoder (small windows on the sliding-window ones, so that their windows really cut the
# prompts), DeepStack-L-HD and DeepStack-V.
VARIANTS = {
    "llama": {},
    "mistral": {"text_model_type": "mistral", "text_config": {"sliding_window": 8}},
    "phi3": {"text_model_type": "phi3", "text_config": {"sliding_window": 8}},
    "qwen2": {
        "text_model_type": "qwen2",
        "text_config": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 3},
    },
    "llama-hd": {"hd_layout": True},
    "llama-v": {"deepstack_variant": "V"},
}


def padded(tokens: list[int]) -> list[int]:
    return tokens + [PAD] * (NEW_TOKENS - len(tokens))


def reference_tokens(model, inputs) -> list[int]:
    """Greedy new tokens of one unpadded prompt by full forward passes: no cache, no `generate`."""
    input_ids = inputs["input_ids"]
    images = {key: inputs[key] for key in ("pixel_values", "image_sizes") if key in inputs}
    tokens = []
    with torch.no_grad():
        while len(tokens) < NEW_TOKENS and EOS not in tokens:
            logits = model(input_ids=input_ids, **images).logits[0, -1]
            logits[IMAGE_TOKEN] = -float("inf")  # as `suppress_tokens` below: a new image token would have no image
            tokens.append(int(logits.argmax()))
            input_ids = torch.cat([input_ids, torch.tensor([[tokens[-1]]])], dim=1)
    return padded(tokens)


def generate(model, inputs, **kwargs) -> list[list[int]]:
    """The new tokens of every returned sequence, padded after EOS like the reference."""
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, pad_token_id=PAD, suppress_tokens=[IMAGE_TOKEN], **kwargs
        )
    return [padded(row) for row in output[:, inputs["input_ids"].shape[1] :].tolist()]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def case(request):
    overrides = dict(VARIANTS[request.param])
    overrides["text_config"] = {"initializer_range": 0.1, **overrides.get("text_config", {})}  # clear argmaxes
    config = tiny_deepstack_config(**overrides)
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    batch = batch_inputs(config)
    rows = [row_inputs(config, batch, row, images) for row, images in enumerate(ROW_IMAGES)]
    return SimpleNamespace(
        model=model,
        batch=batch,
        rows=rows,
        references=[reference_tokens(model, row) for row in rows],
        single_image_batch=batch_inputs(config, rows=ROWS[:2]),  # no prompt with two images
    )


@pytest.fixture(scope="module")
def text_assistant():
    """A text-only decoder with the same vocabulary: its candidates are mostly wrong, so many get rejected."""
    torch.manual_seed(1)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**tiny_text_config(num_hidden_layers=2))).eval()


def test_greedy_left_padded_batch(case):
    assert generate(case.model, case.batch, do_sample=False) == case.references


def test_greedy_without_cache(case):
    """The uncached path of `generate` (images at every step), which the beam and sampling tests compare with."""
    assert generate(case.model, case.batch, do_sample=False, use_cache=False) == case.references


def test_static_cache_and_compiled_decoding(case):
    graphs = []

    def eager_backend(graph_module, example_inputs):  # traces as inductor would, without building kernels
        graphs.append(graph_module)
        return graph_module.forward

    assert generate(case.model, case.batch, do_sample=False, cache_implementation="static") == case.references
    compile_config = CompileConfig(fullgraph=True, backend=eager_backend, mode=None)
    compile_config._compile_all_devices = True  # GenerationMixin compiles on accelerators only unless told
    compiled = generate(case.model, case.batch, do_sample=False, cache_implementation="static", compile_config=compile_config)
    torch._dynamo.reset()
    assert graphs, "the decode steps really ran compiled"
    assert compiled == case.references


def test_chunked_prefill(case):
    lengths = []
    hook = case.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        if CHUNKED_PREFILL_GETS_IMAGES:
            assert generate(case.model, case.batch, do_sample=False, prefill_chunk_size=16) == case.references
            assert lengths.count(16) >= 2, "the prefill really ran in chunks"
        else:
            with pytest.raises(ValueError, match="chunks of a chunked prefill without the images"):
                generate(case.model, case.batch, do_sample=False, prefill_chunk_size=16)
        text_only = case.rows[1]
        assert generate(case.model, text_only, do_sample=False, prefill_chunk_size=4) == [case.references[1]]
    finally:
        hook.remove()


def test_beam_search_with_several_returned_sequences(case):
    kwargs = {"do_sample": False, "num_beams": 3, "num_return_sequences": 2}
    batch, rows = case.batch, case.rows
    if not GENERATE_REPEATS_IMAGE_GROUPS:  # this release repeats images one by one: a prompt with two is refused
        for inputs in (batch, rows[2]):
            with pytest.raises(ValueError, match="several images"):
                generate(case.model, inputs, **kwargs)
        batch, rows = case.single_image_batch, rows[:2]
    expected = [sequence for row in rows for sequence in generate(case.model, row, use_cache=False, **kwargs)]
    assert generate(case.model, batch, **kwargs) == expected


def test_sampling_from_a_seed(case):
    def sample(inputs, **kwargs):
        torch.manual_seed(7)
        return generate(case.model, inputs, do_sample=True, num_return_sequences=2, **kwargs)

    batch, rows = (case.batch, case.rows) if GENERATE_REPEATS_IMAGE_GROUPS else (case.single_image_batch, case.rows[:2])
    for row in rows:
        assert sample(row) == sample(row, use_cache=False)
    assert sample(batch) == sample(batch, use_cache=False)


@pytest.mark.parametrize("assistant_kind", ["deepstack", "text-only"])
def test_assisted_decoding(case, assistant_kind, text_assistant):
    """Greedy assisted decoding keeps only what the model itself would pick (batch size 1, as generate requires).

    The DeepStack assistant has the model's configuration and other weights; 5.17's `generate` hands a text-only
    assistant the images too (which it refuses), so there the text-only assistant only gets the text-only prompt.
    """
    if assistant_kind == "deepstack":
        torch.manual_seed(1)
        assistant = DeepStackForConditionalGeneration(case.model.config).eval()
    else:
        assistant = text_assistant
    rows = [1] if assistant_kind == "text-only" and not GENERATE_ENCODES_IMAGES else range(len(case.rows))
    for row in rows:
        assert generate(case.model, case.rows[row], do_sample=False, assistant_model=assistant) == [case.references[row]]


def test_prompt_lookup_decoding(case):
    for row, expected in zip(case.rows, case.references):
        assert generate(case.model, row, do_sample=False, prompt_lookup_num_tokens=2) == [expected]


def test_continuing_from_the_callers_cache(case):
    """`generate` continues from a KV cache the caller filled and passes under the release's own name: the one-image
    prompt with all but its last two tokens (image included) already in the cache."""
    row = case.rows[0]
    with torch.no_grad():
        prefix = case.model(**dict(row, input_ids=row["input_ids"][:, :-2]), use_cache=True)
    cache = getattr(prefix, CACHE_NAME)
    assert cache.get_seq_length() == row["input_ids"].shape[1] - 2
    continued = generate(case.model, {"input_ids": row["input_ids"]}, do_sample=False, **{CACHE_NAME: cache})
    assert continued == [case.references[0]]
