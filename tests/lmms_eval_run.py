"""The lmms-eval tests' shared steps: a tiny converted checkpoint, a tiny offline task, lmms-eval's command line on
it, what it wrote, and the package's own one-at-a-time answer to compare with.

lmms-eval exits 0 and prints its results table even when every request failed (a plugin error, a dependency that
does not import), so the tests read the files it writes: the samples JSONL (`--log_samples`) and the results JSON.
"""

import json
import os
import subprocess
import sys
import textwrap

import torch

from deepstack_hf.conversion import convert_checkpoint
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint

POST_PROMPT = "\nAnswer the question using a single word or phrase."
NEW_TOKENS = 5

TASK_YAML = """
task: {task}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
output_type: generate_until
test_split: test
doc_to_visual: !function {utils}.doc_to_visual
doc_to_text: !function {utils}.doc_to_text
doc_to_target: answer
process_results: !function {utils}.process_results
generation_kwargs:
  max_new_tokens: {new_tokens}
  temperature: 0
  until:
    - "ASSISTANT:"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = """
def doc_to_visual(doc):
    return [{visual}]


def doc_to_text(doc):
    return doc["question"] + {post_prompt!r}


def process_results(doc, results):
    return {{"exact_match": float(results[0].strip().lower() == doc["answer"])}}
"""


def tiny_converted_checkpoint(root):
    """A tiny DeepStack-L-HD checkpoint in the original's format, converted into `root / "model"`; its folder."""
    synthetic = build_synthetic_checkpoint(
        root / "src", text_model_type="llama", hd=True, dtype=torch.float32, tokenizer_vocab_size=512
    )
    return convert_checkpoint(synthetic.checkpoint, root / "model", progress=False).output_dir


def write_task(root, task: str, dataset, visual: str) -> None:
    """`dataset` (a `datasets.Dataset` with `question` and `answer` columns) saved as the test split of
    `root / "data"`, and lmms-eval's yaml and utils of `task` in `root / "tasks"`: the visual is the Python
    expression `visual` of `doc`, the text the question plus `POST_PROMPT`, greedy up to `NEW_TOKENS` tokens or
    `ASSISTANT:`, scored by exact match."""
    from datasets import DatasetDict

    DatasetDict({"test": dataset}).save_to_disk(str(root / "data"))
    tasks = root / "tasks"
    tasks.mkdir()
    utils = f"{task}_utils"
    (tasks / f"{task}.yaml").write_text(
        TASK_YAML.format(task=task, data=root / "data", utils=utils, new_tokens=NEW_TOKENS)
    )
    (tasks / f"{utils}.py").write_text(textwrap.dedent(TASK_UTILS.format(visual=visual, post_prompt=POST_PROMPT)))


def greedy_answers(processor, model, images, questions) -> list[str]:
    """The package itself, one question at a time: the checkpoint's chat template with the image first, greedy,
    cut at `ASSISTANT:` (as the task's `until`)."""
    answers = []
    for question, image in zip(questions, images, strict=True):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question + POST_PROMPT}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.append(answer.split("ASSISTANT:", 1)[0])
    return answers


def run_lmms_eval(root, task: str, model_args: str, batch_size, out) -> subprocess.CompletedProcess:
    """`python -m lmms_eval --model deepstack` offline on `task` (its yaml in `root / "tasks"`), writing to `out`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(root / "hf_home"))
    command = [
        sys.executable, "-m", "lmms_eval",
        "--model", "deepstack",
        "--model_args", model_args,
        "--tasks", task,
        "--include_path", str(root / "tasks"),
        "--batch_size", str(batch_size),
        "--log_samples",
        "--output_path", str(out),
    ]
    return subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=500)


def written(out, pattern: str, completed: subprocess.CompletedProcess):
    """The one file lmms-eval wrote under `out` matching `pattern`; its output's tail when there is none."""
    files = list(out.rglob(pattern))
    assert len(files) == 1, (pattern, files, completed.stdout[-2000:], completed.stderr[-3000:])
    return files[0]


def samples_and_results(out, task: str, completed: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    """The logged samples of `task`, ordered by document, and the results JSON."""
    lines = written(out, f"*_samples_{task}.jsonl", completed).read_text().splitlines()
    samples = sorted((json.loads(line) for line in lines), key=lambda sample: sample["doc_id"])
    return samples, json.loads(written(out, "*_results.json", completed).read_text())
