"""lmms-eval with `--model deepstack` on a tiny offline video task: each answer is the model's own answer to the
video's IG-VLM grid given as an image.

Runs only where lmms-eval and PyAV are installed (the `lmms-eval` and `video` extras; docs/evaluation.md). A tiny
converted checkpoint answers a two-question video QA task (videos written with PyAV, their paths in a dataset saved
to disk, the yaml passed with `--include_path`), one at a time and in one batch of two (a landscape and a portrait
grid), as lmms-eval's video tasks give them: one video path per document. The independent expectation is the grid
built here by hand from every decoded frame (frames `k * floor(T / 6)`, two to a row) and given to the package as
an image, one question at a time.
"""

import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install '.[lmms-eval]', docs/evaluation.md)")
datasets = pytest.importorskip("datasets", reason="lmms-eval's `datasets` dependency is not installed")
pytest.importorskip("av", reason="PyAV is not installed (pip install '.[video]')")

from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import deepstack_hf  # noqa: E402,F401
from deepstack_hf.conversion import convert_checkpoint  # noqa: E402
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint  # noqa: E402
from lmms_eval_run import run_lmms_eval, samples_and_results  # noqa: E402
from synthetic_video import decode_every_frame, write_numbered_video  # noqa: E402

TASK = "deepstack_tiny_video_qa"
POST_PROMPT = "\nAnswer the question using a single word or phrase."
NEW_TOKENS = 5
QUESTIONS = ["what happens first?", "how many frames change?"]
VIDEOS = [(13, 64, 48), (8, 48, 80)]  # (frames, width, height): a landscape and a portrait clip
SAMPLED = [[0, 2, 4, 6, 8, 10], [0, 1, 2, 3, 4, 5]]  # k * floor(T / 6)

TASK_YAML = f"""
task: {TASK}
dataset_path: {{data}}
dataset_kwargs:
  load_from_disk: true
output_type: generate_until
test_split: test
doc_to_visual: !function tiny_video_utils.doc_to_visual
doc_to_text: !function tiny_video_utils.doc_to_text
doc_to_target: answer
process_results: !function tiny_video_utils.process_results
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
    return [doc["video"]]


def doc_to_text(doc):
    return doc["question"] + {POST_PROMPT!r}


def process_results(doc, results):
    return {{"exact_match": float(results[0].strip().lower() == doc["answer"])}}
'''


def hand_grid(frames):
    """Two frames to a row, row-major (all frames of a clip share one size)."""
    return np.concatenate([np.concatenate(frames[row : row + 2], axis=1) for row in range(0, len(frames), 2)], axis=0)


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms-video")
    synthetic = build_synthetic_checkpoint(
        root / "src", text_model_type="llama", hd=True, dtype=torch.float32, tokenizer_vocab_size=512
    )
    model_dir = convert_checkpoint(synthetic.checkpoint, root / "model", progress=False).output_dir
    paths = []
    for index, (frames, width, height) in enumerate(VIDEOS):
        paths.append(str(root / f"clip{index}.mp4"))
        write_numbered_video(paths[-1], frames, width=width, height=height)
    test = datasets.Dataset.from_dict({"video": paths, "question": QUESTIONS, "answer": ["a cat", "two"]})
    datasets.DatasetDict({"test": test}).save_to_disk(str(root / "data"))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(data=root / "data"))
    (tasks / "tiny_video_utils.py").write_text(textwrap.dedent(TASK_UTILS))
    return root, model_dir, paths


def one_at_a_time(model_dir, paths):
    """The package itself, batch size 1, each video's hand-made grid given as an image, greedy, cut at ASSISTANT:."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    answers = []
    for question, path, indices in zip(QUESTIONS, paths, SAMPLED):
        frames = decode_every_frame(path)
        grid = Image.fromarray(hand_grid([frames[i] for i in indices]))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question + POST_PROMPT}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=grid, text=prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.append(answer.split("ASSISTANT:", 1)[0])
    return answers


@pytest.mark.parametrize("batch_size", [1, 2])
def test_lmms_eval_answers_a_video_task_through_the_grid(tiny_task, batch_size):
    root, model_dir, paths = tiny_task
    out = root / f"results-{batch_size}"
    completed = run_lmms_eval(root, TASK, f"pretrained={model_dir},device=cpu,dtype=float32", batch_size, out)

    samples, results = samples_and_results(out, TASK, completed)
    assert [sample["doc_id"] for sample in samples] == list(range(len(QUESTIONS)))  # every question, once
    assert [sample["filtered_resps"] for sample in samples] == one_at_a_time(model_dir, paths)
    assert results["n-samples"][TASK] == {"original": len(QUESTIONS), "effective": len(QUESTIONS)}
    assert str(results["config"]["batch_size"]) == str(batch_size)
