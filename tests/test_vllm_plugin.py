"""vLLM plugin: offline vLLM generation equals DeepStackForConditionalGeneration's, stacks included.

Runs only where vLLM is installed (a separate venv, see docs/vllm.md); CI skips it. A tiny original-format
checkpoint (head_dim 64: vLLM's CPU attention refuses smaller heads) is converted with the project's converter, then
served by vLLM in-process on the CPU. The reference is the Transformers model on the same converted repo, one prompt
at a time, with the processor's ids.
"""

import gc
import io
import os
from base64 import b64encode
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("vllm", reason="vLLM is not installed (pip install deepstack-hf[vllm]; see docs/vllm.md)")

from transformers import AutoProcessor  # noqa: E402

from deepstack_hf import DeepStackForConditionalGeneration  # noqa: E402
from deepstack_hf.conversion import convert_checkpoint  # noqa: E402
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint  # noqa: E402
from deepstack_hf.grid_layout import select_best_grid  # noqa: E402

MAX_NEW_TOKENS = 8
QUESTION = "A chat. USER: <image>\nWhat is in the picture? ASSISTANT:"
TWO_IMAGES = "A chat. USER: <image>\nand <image>\nCompare them. ASSISTANT:"
TEXT_ONLY = "A chat. USER: Say something. ASSISTANT:"


def _image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# Two sizes with different crop grids (wide 2x1 and tall 1x3 for num_crops=4, crop 56).
WIDE, TALL = _image(100, 50, seed=1), _image(40, 110, seed=2)
BATCH = [
    (QUESTION, [WIDE]),
    (TEXT_ONLY, []),
    (QUESTION, [TALL]),
    (TWO_IMAGES, [TALL, WIDE]),
    (QUESTION, [WIDE]),  # same image and prefix as the first request: encoder and prefix caches are hit
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{"plain", "hd", "phi3"}: converted tiny repos; HD puts its 4 stacks before layers 1, 3, 5, 7, Phi-3 (fused
    qkv_proj / gate_up_proj weights) before layers 1-4."""
    root = tmp_path_factory.mktemp("vllm-deepstack")
    repos = {}
    variants = (
        ("plain", "llama", False, None),
        ("hd", "llama", True, {"deepstack_interval": 2}),
        ("phi3", "phi3", False, None),
    )
    for name, text_model_type, hd, extra in variants:
        synthetic = build_synthetic_checkpoint(
            root / f"src-{name}",
            text_model_type=text_model_type,
            hd=hd,
            hidden_size=256,
            num_hidden_layers=8,
            dtype=torch.float32,
            extra_config=extra,
        )
        convert_checkpoint(synthetic.checkpoint, root / name, progress=False)
        repos[name] = str(root / name)
    return repos


@pytest.fixture(scope="module", autouse=True)
def in_process_cpu_engine():
    """vLLM's engine in this process (no spawned engine core) with a 1 GiB KV cache."""
    saved = {key: os.environ.get(key) for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE")}
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _vllm_generate(repo: str, requests: list, max_num_batched_tokens: int = 2048, repeat: int = 1):
    """Per run of the batch (`repeat` runs in one engine): [(prompt ids, greedy new ids, prefix-cached prompt tokens)].

    Blocks of 32 tokens (the CPU attention's smallest) let the short test prompts hit the prefix cache when repeated.
    """
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=repo,
        dtype="float32",
        max_model_len=2048,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=8,
        block_size=32,
        enforce_eager=True,
        limit_mm_per_prompt={"image": 2},
        seed=0,
    )
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0)
    prompts = [
        {"prompt": prompt, "multi_modal_data": {"image": images}} if images else {"prompt": prompt}
        for prompt, images in requests
    ]
    runs = [
        [
            (list(out.prompt_token_ids), list(out.outputs[0].token_ids), out.num_cached_tokens or 0)
            for out in llm.generate(prompts, params)
        ]
        for _ in range(repeat)
    ]
    del llm
    gc.collect()
    return runs


def _transformers_generate(repo: str, requests: list, with_stacks: bool = True):
    """[(prompt ids, greedy new ids)] of DeepStackForConditionalGeneration, one request at a time."""
    processor = AutoProcessor.from_pretrained(repo)
    model = DeepStackForConditionalGeneration.from_pretrained(repo, dtype=torch.float32).eval()
    if not with_stacks:  # the decoder then receives no stacks
        model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: (args, {**kwargs, "deepstack_embeds": None}), with_kwargs=True
        )
    results = []
    for prompt, images in requests:
        inputs = processor(text=prompt, images=images or None, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        prompt_ids = inputs["input_ids"][0].tolist()
        results.append((prompt_ids, output[0, len(prompt_ids) :].tolist()))
    return results


def test_plugin_is_an_entry_point():
    plugins = {plugin.name: plugin.value for plugin in entry_points(group="vllm.general_plugins")}
    assert plugins.get("deepstack") == "deepstack_hf.integrations.vllm:register"


@pytest.mark.parametrize(
    "prompt",
    [QUESTION, TWO_IMAGES, "<image>\nDescribe.", "USER: <image> ASSISTANT: </s>USER: <image>\n\n  two spaces"],
)
@pytest.mark.parametrize("with_bos", [True, False])
def test_prompt_ids_are_the_processors(converted, prompt, with_bos):
    """vLLM's one-piece tokenization (with BOS, or without as its chat path does) -> the processor's ids."""
    from deepstack_hf.integrations.vllm.processing import original_prompt_ids

    processor = AutoProcessor.from_pretrained(converted["plain"])
    tokenizer, image_token_id = processor.tokenizer, processor.image_token_id
    one_piece = tokenizer(prompt, add_special_tokens=with_bos)["input_ids"]
    images = [WIDE] * prompt.count("<image>")
    expected = processor(text=prompt, images=images)["input_ids"][0]
    one_per_image = [
        token for i, token in enumerate(expected) if token != image_token_id or i == 0 or expected[i - 1] != token
    ]
    assert original_prompt_ids(one_piece, tokenizer.bos_token_id) == one_per_image


def test_placeholder_runs_follow_the_spec_token_counts(converted):
    """Each image's placeholder run in vLLM's HD prompt is 16 + 4h(4w + 1) tokens (docs/design.md)."""
    image_token_id = AutoProcessor.from_pretrained(converted["hd"]).image_token_id
    (runs,) = _vllm_generate(converted["hd"], [(QUESTION, [WIDE]), (QUESTION, [TALL])])
    grids = [select_best_grid(image.width, image.height, num_crops=4, crop_size=56) for image in (WIDE, TALL)]
    assert grids[0] != grids[1]
    for (prompt_ids, _, _), (grid_w, grid_h) in zip(runs, grids):
        assert prompt_ids.count(image_token_id) == 16 + 4 * grid_h * (4 * grid_w + 1)


@pytest.mark.parametrize(
    ("name", "max_num_batched_tokens"),
    [("plain", 2048), ("hd", 2048), ("plain", 24), ("hd", 40), ("phi3", 24)],
    ids=["plain", "hd", "plain-chunked", "hd-chunked", "phi3-chunked"],
)
def test_greedy_tokens_match_transformers(converted, name, max_num_batched_tokens):
    """Mixed batch (two image sizes, text only, two images in one prompt, a repeated request), run twice in one
    engine (the second run is served from the prefix and encoder caches). A small token budget cuts images across
    prefill chunks (plain and Phi-3: 16-token images, budget 24; HD: 52- and 76-token images, budget 40)."""
    repo = converted[name]
    expected = _transformers_generate(repo, BATCH)
    first, second = _vllm_generate(repo, BATCH, max_num_batched_tokens=max_num_batched_tokens, repeat=2)
    image_token_id = AutoProcessor.from_pretrained(repo).image_token_id
    start, length = expected[0][0].index(image_token_id), expected[0][0].count(image_token_id)
    if max_num_batched_tokens < 2048:  # the first request is scheduled first: its first chunk ends inside its image
        assert start < max_num_batched_tokens < start + length, "the token budget does not split the first image"
    assert [ids for ids, _, _ in first] == [ids for ids, _ in expected], "vLLM's prompt ids differ from the processor's"
    assert [new for _, new, _ in first] == [new for _, new in expected]
    assert [(ids, new) for ids, new, _ in second] == [(ids, new) for ids, new, _ in first]
    assert second[0][2] > start, "the repeated run took none of the first image's tokens from the prefix cache"


def test_stacks_change_the_tokens(converted):
    """The equality above is not DeepStack-without-stacks: dropping the stacks changes the greedy tokens."""
    requests = [(QUESTION, [WIDE]), (QUESTION, [TALL])]
    with_stacks = _transformers_generate(converted["hd"], requests)
    without_stacks = _transformers_generate(converted["hd"], requests, with_stacks=False)
    assert [new for _, new in with_stacks] != [new for _, new in without_stacks]


def test_videos_are_refused_by_name(converted):
    """The plugin takes images; a video (chat part or offline `multi_modal_data`) is refused with the way round it."""
    from vllm import LLM, SamplingParams

    from deepstack_hf.integrations.vllm.model import DeepStackForConditionalGeneration as VllmDeepStack

    with pytest.raises(ValueError, match="takes images, not videos.*DeepStackVideoProcessor"):
        VllmDeepStack.get_placeholder_str("video", 0)
    llm = LLM(model=converted["plain"], dtype="float32", max_model_len=2048, max_num_seqs=8, enforce_eager=True, seed=0)
    video = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(Exception, match="takes images, not videos.*DeepStackVideoProcessor"):
        llm.generate({"prompt": "USER: <video>\nWhat happens? ASSISTANT:", "multi_modal_data": {"video": video}},
                     SamplingParams(max_tokens=2))
    del llm
    gc.collect()


def test_chat_matches_processor_chat_template(converted):
    """`llm.chat` with an image part renders the repo's chat template, like `processor.apply_chat_template`."""
    from vllm import LLM, SamplingParams

    repo = converted["plain"]
    buffer = io.BytesIO()
    TALL.save(buffer, format="PNG")
    url = "data:image/png;base64," + b64encode(buffer.getvalue()).decode()
    vllm_messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi?"}]}
    ]
    hf_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    processor = AutoProcessor.from_pretrained(repo)
    prompt = processor.apply_chat_template(hf_messages, add_generation_prompt=True)
    (expected,) = _transformers_generate(repo, [(prompt, [TALL])])

    llm = LLM(model=repo, dtype="float32", max_model_len=2048, max_num_seqs=8, enforce_eager=True, seed=0)
    (output,) = llm.chat(vllm_messages, SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0))
    del llm
    gc.collect()
    assert list(output.prompt_token_ids) == expected[0]
    assert list(output.outputs[0].token_ids) == expected[1]


def _transparent(width: int, height: int, seed: int, mode: str) -> Image.Image:
    """Random colours under a random alpha (fully transparent and fully opaque pixels included)."""
    rng = np.random.default_rng(seed)
    alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
    alpha[0, :2] = [0, 255]
    colour = rng.integers(0, 256, (height, width, 3 if mode == "RGBA" else 1), dtype=np.uint8)
    return Image.fromarray(np.dstack([colour, alpha]))  # 4 channels: RGBA, 2: LA


def test_transparent_images_give_the_same_tokens_as_transformers(converted):
    """One transparency rule: an RGBA / LA image, given as a PIL image (`generate`) or as a PNG data URL (`chat`),
    gives vLLM the tokens Transformers' processor gives (both composite onto white; the original drops alpha)."""
    from vllm import LLM, SamplingParams

    repo = converted["plain"]
    rgba, la = _transparent(100, 50, seed=5, mode="RGBA"), _transparent(40, 110, seed=6, mode="LA")
    processor = AutoProcessor.from_pretrained(repo)
    dropped = processor.image_processor(rgba.convert("RGB"))["pixel_values"]
    assert not np.allclose(processor.image_processor(rgba)["pixel_values"], dropped)  # the rule changes the pixels
    requests = [(QUESTION, [rgba]), (QUESTION, [la])]
    expected = _transformers_generate(repo, requests)

    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    url = "data:image/png;base64," + b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "Hi?"}]}]
    hf_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    (chat_expected,) = _transformers_generate(
        repo, [(processor.apply_chat_template(hf_messages, add_generation_prompt=True), [rgba])])

    llm = LLM(model=repo, dtype="float32", max_model_len=2048, max_num_seqs=8, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"image": 1})
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0)
    outputs = llm.generate([{"prompt": p, "multi_modal_data": {"image": images[0]}} for p, images in requests], params)
    (chat,) = llm.chat(messages, params)
    del llm
    gc.collect()
    assert [(list(out.prompt_token_ids), list(out.outputs[0].token_ids)) for out in outputs] == expected
    assert (list(chat.prompt_token_ids), list(chat.outputs[0].token_ids)) == chat_expected
