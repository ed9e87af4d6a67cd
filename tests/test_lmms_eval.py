"""lmms-eval with `--model deepstack` on a tiny offline task: answers equal the model's own greedy answers.

Runs only where lmms-eval is installed (the `lmms-eval` extra; docs/evaluation.md records a run and the install
that keeps the CPU torch). A tiny converted checkpoint answers a four-question VQA task whose dataset is saved to
disk and whose yaml is passed with `--include_path`, in batches of three over images of different grids. The
independent expectation is the package used directly, one question at a time.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install '.[lmms-eval]', docs/evaluation.md)")
datasets = pytest.importorskip("datasets", reason="lmms-eval's `datasets` dependency is not installed")

from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import deepstack_hf  # noqa: E402,F401
from deepstack_hf.conversion import convert_checkpoint  # noqa: E402
from deepstack_hf.conversion.synthetic_checkpoint import build_synthetic_checkpoint  # noqa: E402

TASK = "deepstack_tiny_vqa"
POST_PROMPT = "\nAnswer the question using a single word or phrase."
NEW_TOKENS = 5
QUESTIONS = ["what is red?", "how many shapes?", "what color is the sky?", "is there a cat?"]
SIZES = [(150, 96), (96, 150), (112, 112), (200, 60)]  # four different crop grids

TASK_YAML = f"""
task: {TASK}
dataset_path: {{data}}
dataset_kwargs:
  load_from_disk: true
output_type: generate_until
test_split: test
doc_to_visual: !function tiny_vqa_utils.doc_to_visual
doc_to_text: !function tiny_vqa_utils.doc_to_text
doc_to_target: answer
process_results: !function tiny_vqa_utils.process_results
generation_kwargs:
  max_new_tokens: {NEW_TOKENS}
  temperature: 0
  until:
    - "ASSISTANT:"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = f'''
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc):
    return doc["question"] + {POST_PROMPT!r}


def process_results(doc, results):
    return {{"exact_match": float(results[0].strip().lower() == doc["answer"])}}
'''


def picture(size, seed):
    image = Image.new("RGB", size, (230 - 30 * seed, 220, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((5, 5, size[0] // 2, size[1] - 5), fill=(200, 40 + 40 * seed, 40))
    return image


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    synthetic = build_synthetic_checkpoint(
        root / "src", text_model_type="llama", hd=True, dtype=torch.float32, tokenizer_vocab_size=512
    )
    model_dir = convert_checkpoint(synthetic.checkpoint, root / "model", progress=False).output_dir
    images = [picture(size, seed) for seed, size in enumerate(SIZES)]
    test = datasets.Dataset.from_dict(
        {"image": images, "question": QUESTIONS, "answer": ["red", "two", "blue", "no"]},
        features=datasets.Features(
            {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
        ),
    )
    datasets.DatasetDict({"test": test}).save_to_disk(str(root / "data"))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(data=root / "data"))
    (tasks / "tiny_vqa_utils.py").write_text(textwrap.dedent(TASK_UTILS))
    return root, model_dir, images


def one_at_a_time(model_dir, images):
    """The package itself, batch size 1: the checkpoint's chat template, image first, greedy, cut at ASSISTANT:."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    answers = []
    for question, image in zip(QUESTIONS, images):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question + POST_PROMPT}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.append(answer.split("ASSISTANT:", 1)[0])
    return answers


def test_lmms_eval_runs_the_deepstack_plugin_batched(tiny_task):
    root, model_dir, images = tiny_task
    out = root / "results"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(root / "hf_home"))
    command = [
        sys.executable, "-m", "lmms_eval",
        "--model", "deepstack",
        "--model_args", f"pretrained={model_dir},device=cpu,dtype=float32",
        "--tasks", TASK,
        "--include_path", str(root / "tasks"),
        "--batch_size", "3",
        "--log_samples",
        "--output_path", str(out),
    ]
    completed = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=500)
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    assert TASK in completed.stdout  # the results table

    sample_files = list(out.rglob(f"*samples_{TASK}.jsonl"))
    assert len(sample_files) == 1, list(out.rglob("*"))
    samples = [json.loads(line) for line in sample_files[0].read_text().splitlines()]
    answers = {sample["doc_id"]: sample["filtered_resps"] for sample in samples}
    assert [answers[i] for i in range(len(QUESTIONS))] == one_at_a_time(model_dir, images)
