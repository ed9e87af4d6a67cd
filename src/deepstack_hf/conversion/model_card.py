"""One text source for every DeepStack model card.

`render_model_card(info)` renders the card (YAML metadata + Markdown) that the converter writes as README.md;
`model_cards/deepstack-l-vicuna-7b.md` and `model_cards/deepstack-l-hd-vicuna-7b.md` are the same renderer's
output for the two official checkpoints (regenerate them with
`python -m deepstack_hf.conversion.model_card model_cards/`; a test checks they are in sync).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

# The paper's scores of the released checkpoints (arXiv 2406.04334): VQAv2 / GQA / TextVQA / DocVQA / InfoVQA / SEED / POPE.
BENCHMARKS = ("VQAv2", "GQA", "TextVQA", "DocVQA", "InfoVQA", "SEED", "POPE")
PAPER_SCORES = {
    "menglc/deepstack-l-vicuna-7b": (79.5, 63.1, 62.4, 39.1, 29.8, 60.6, 86.7),
    "menglc/deepstack-l-hd-vicuna-7b": (82.0, 65.2, 66.7, 78.8, 41.2, 63.6, 86.5),
}
OFFICIAL = {
    "deepstack-l-vicuna-7b": dict(source="menglc/deepstack-l-vicuna-7b", hd=False, llm="Vicuna-7B v1.5"),
    "deepstack-l-hd-vicuna-7b": dict(source="menglc/deepstack-l-hd-vicuna-7b", hd=True, llm="Vicuna-7B (from LLaVA-v1.6)"),
}

CITATION = """@inproceedings{meng2024deepstack,
  title     = {DeepStack: Deeply Stacking Visual Tokens is Surprisingly Simple and Effective for LMMs},
  author    = {Meng, Lingchen and Yang, Jianwei and Tian, Rui and Dai, Xiyang and Wu, Zuxuan and Gao, Jianfeng and Jiang, Yu-Gang},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024},
  eprint    = {2406.04334},
  archivePrefix = {arXiv}
}"""

PROMPTS = {
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\\n{question} ASSISTANT:"
    ),
    "phi3_instruct": (
        "<|system|>\\nYou are a helpful AI assistant.<|end|>\\n<|user|>\\n<image>\\n{question}<|end|>\\n<|assistant|>\\n"
    ),
}


@dataclass
class CardInfo:
    """What a card says about one converted checkpoint."""

    repo_id: str  # where the converted model lives (or is meant to), used in the code snippets
    source: str | None  # the original checkpoint (Hub id) or None for local sources
    llm: str
    hd: bool
    template: str  # "vicuna_v1" or "phi3_instruct"
    license: str = "llama2"
    num_crops: int = 4
    deepstack_layers: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    suppressed_ids: tuple[int, int] | None = None  # [first, last] id of `generation_config.suppress_tokens`
    vision_weights: str = "the CLIP tower named by `mm_vision_tower`"
    vision_split_layer: int | None = None  # DeepStack-V: the ViT layer where the crops split off
    extra_notes: list[str] = field(default_factory=list)


def _metadata(info: CardInfo) -> dict:
    data = {
        "license": info.license,
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["deepstack", "llava", "vision-language", "multimodal", "image-text-to-text"],
    }
    if info.source:
        data["base_model"] = info.source
    return data


def _scores(info: CardInfo) -> str:
    header = "| model | " + " | ".join(BENCHMARKS) + " |\n| --- |" + " --- |" * len(BENCHMARKS) + "\n"
    rows = [(repo, scores) for repo, scores in PAPER_SCORES.items() if info.source in (None, repo) or info.source not in PAPER_SCORES]
    if info.source in PAPER_SCORES:
        rows = [(info.source, PAPER_SCORES[info.source])]
    body = "".join(f"| {repo} | " + " | ".join(f"{s:.1f}" for s in scores) + " |\n" for repo, scores in rows)
    note = (
        "Scores reported in the DeepStack paper for the original checkpoint"
        + ("" if info.source in PAPER_SCORES else "s (for reference: this conversion's source is not one of them)")
        + ". The conversion reproduces the original model's logits (fp32, max abs error <= 1e-4) and greedy tokens."
    )
    return header + body + "\n" + note + "\n"


def _provenance(info: CardInfo) -> str:
    source = info.source or "ORIGINAL_CHECKPOINT_DIR"
    return (
        f"`{info.repo_id}` is what the converter of the `deepstack-hf` package (`deepstack-convert`) writes for "
        f"`{source}`:\n\n"
        f"```bash\npip install .  # in a checkout of deepstack-hf\n"
        f"deepstack-convert {source} {info.repo_id.split('/')[-1]} --verify --push-to-hub {info.repo_id}\n```\n\n"
        "`--verify` compares the converted model with an independent implementation of the original on the original "
        "weights (logits within 1e-4 in fp32, same greedy tokens) before the output is moved into place or uploaded."
    )


def render_body(info: CardInfo) -> str:
    name = info.repo_id.split("/")[-1]
    variant = "DeepStack-V" if info.vision_split_layer is not None else "DeepStack-L-HD" if info.hd else "DeepStack-L"
    layout = (
        "the 576 tokens of the global 336x336 view in the sequence; the high-resolution crops (square grid) are "
        f"regrouped into {info.num_crops} stacks of 576 tokens that are added inside the CLIP tower, before its layers "
        f"{info.vision_split_layer}, {info.vision_split_layer + 1}, ... (the decoder gets none); decoder layers with stacks: "
        if info.vision_split_layer is not None
        else
        "LLaVA-NeXT-style sequence without unpadding: the 576 tokens of the global 336x336 view, then the "
        "high-resolution grid map with an `image_newline` token after each row; "
        f"{len(info.deepstack_layers)} stacks drawn from upsampled sub-crops are added before decoder layers "
        if info.hd
        else "the 576 tokens of the global 336x336 view in the sequence; the high-resolution crops are regrouped "
        f"into {info.num_crops} stacks of 576 tokens that are added before decoder layers "
    )
    prompt = PROMPTS[info.template].format(question="What is shown in this image?")
    suppressed = (
        f"ids {info.suppressed_ids[0]}..{info.suppressed_ids[1]}" if info.suppressed_ids else "every id the original lacked"
    )
    notes = "".join(f"- {note}\n" for note in info.extra_notes)
    source_line = f"[`{info.source}`](https://huggingface.co/{info.source})" if info.source else "an original-format DeepStack checkpoint"
    return f"""# {name}

{variant} ({info.llm}) from [DeepStack: Deeply Stacking Visual Tokens is Surprisingly Simple and Effective for LMMs](https://arxiv.org/abs/2406.04334)
(Meng et al., NeurIPS 2024), converted from {source_line} to the native
Transformers format of the `deepstack_hf` package (original code:
[MengLcool/DeepStack-VL](https://github.com/MengLcool/DeepStack-VL)).

DeepStack is a LLaVA-style model (CLIP ViT-L/14-336 -> MLP projector -> LLM). Instead of appending
high-resolution tokens to the context it *stacks* them: {layout}{info.deepstack_layers}.
The context stays as short as LLaVA-1.5's while the model sees 4x more pixels.

## Usage

This repository carries its own code (the `deepstack_hf` package's modules and an `auto_map`), so plain
Transformers (>= 5.17) loads it with `trust_remote_code=True`. With the `deepstack-hf` package installed, use
`import deepstack_hf` instead: the installed package's classes then run and no code from the repository does.

### Pipeline

```python
from transformers import pipeline

pipe = pipeline("image-text-to-text", model="{info.repo_id}", trust_remote_code=True, dtype="auto", device_map="auto")
messages = [{{"role": "user", "content": [
    {{"type": "image", "url": "https://llava-vl.github.io/static/images/view.jpg"}},
    {{"type": "text", "text": "What is shown in this image?"}},
]}}]
print(pipe(text=messages, max_new_tokens=64, return_full_text=False)[0]["generated_text"])
```

### fp16 with the model class

```python
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained("{info.repo_id}", trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(
    "{info.repo_id}", trust_remote_code=True, dtype=torch.float16, device_map="auto"
)

messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown in this image?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open("photo.jpg"), text=prompt, return_tensors="pt").to(model.device, torch.float16)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Batches (left padding is the saved default) and several images per prompt work as well.

### 4-bit (bitsandbytes)

```python
import torch
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_quant_type="nf4")
model = AutoModelForImageTextToText.from_pretrained(
    "{info.repo_id}", trust_remote_code=True, quantization_config=quantization, device_map="auto"
)
```

The language model's Linear layers are quantized; the CLIP tower, the projector and `lm_head` stay in the compute
dtype by default (they feed every stack, so their error would be added several times).

### Serving and evaluation (the `deepstack-hf` package with its `serving` / `lmms-eval` extra)

```bash
deepstack-serve {info.repo_id} --port 8000   # OpenAI-compatible /v1/chat/completions, images as image_url
python -m lmms_eval --model deepstack --model_args pretrained={info.repo_id},dtype=float16 --tasks textvqa_val --batch_size 8
```

## Prompt format

`{info.template}` (the chat template saved with the processor renders it):

```
{prompt}
```

As in the original, the prompt is tokenized chunk by chunk around `<image>` (BOS only on the first chunk), so the
text after an image starts with SentencePiece's word-boundary piece; the processor reproduces these ids and
replaces `<image>` with the image's visual tokens.

## Evaluation

{_scores(info)}
## Conversion notes

{_provenance(info)}

- Weights: decoder, projector{", `image_newline`" if info.hd else ""} and lm_head from the original checkpoint; CLIP
  weights from {info.vision_weights} (the original loader's rule: the checkpoint's copy of CLIP only when
  `unfreeze_mm_vision_tower` is true).
- Tokenizer: the original SentencePiece model as a fast tokenizer with the original ids; `<image>` is added after
  the original vocabulary and the embedding matrix is padded to a multiple of 64 (new rows = mean of the old rows).
- `generation_config.suppress_tokens` lists {suppressed}: every token the original model could not emit (the added
  `<image>` and the padding rows). Greedy decoding therefore yields exactly the original's tokens. Remove them from
  `suppress_tokens` only if you fine-tune the model to emit such tokens.
{notes}
## Limitations

- The original code only handles batch size 1 with one image per prompt; this port handles batches, left padding
  and several images per prompt (each image's stacks are added at its own visual tokens), which the original
  checkpoints were not evaluated with.
- Inherits the limitations and biases of {info.llm}, CLIP ViT-L/14-336 and the LLaVA training data; it can
  hallucinate objects and text. Not for safety-critical use.
- The paper's scores above were obtained with the original code; they were not re-run on the converted model.

## Citation

```bibtex
{CITATION}
```
"""


def build_model_card(info: CardInfo):
    """The card as a `huggingface_hub.ModelCard` (metadata validated by `ModelCardData`)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(**_metadata(info))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{render_body(info)}")


def render_model_card(info: CardInfo) -> str:
    return str(build_model_card(info))


def official_card_info(name: str) -> CardInfo:
    spec = OFFICIAL[name]
    return CardInfo(
        repo_id=f"deepstack-hf/{name}",
        source=spec["source"],
        llm=spec["llm"],
        hd=spec["hd"],
        template="vicuna_v1",
        license="llama2",
        num_crops=4,
        deepstack_layers=[1, 2, 3, 4],
        suppressed_ids=(32000, 32063),
    )


def write_official_cards(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in OFFICIAL:
        path = directory / f"{name}.md"
        path.write_text(render_model_card(official_card_info(name)))
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    for path in write_official_cards(sys.argv[1] if len(sys.argv) > 1 else "model_cards"):
        print(path)
