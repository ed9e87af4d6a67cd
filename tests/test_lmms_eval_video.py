"""lmms-eval with `--model deepstack` on a tiny offline video task: each answer is the model's own answer to the
video's IG-VLM grid given as an image.

Runs only where lmms-eval and PyAV are installed (the `lmms-eval` and `video` extras; docs/evaluation.md). A tiny
converted checkpoint answers a two-question video QA task (videos written with PyAV, their paths in a dataset saved
to disk, the yaml passed with `--include_path`), one at a time and in one batch of two (a landscape and a portrait
grid), as lmms-eval's video tasks give them: one video path per document. The independent expectation is the grid
built here by hand from every decoded frame (frames `k * floor(T / 6)`, two to a row) and given to the package as
an image, one question at a time.
"""

import numpy as np
import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install '.[lmms-eval]', docs/evaluation.md)")
datasets = pytest.importorskip("datasets", reason="lmms-eval's `datasets` dependency is not installed")
pytest.importorskip("av", reason="PyAV is not installed (pip install '.[video]')")

from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import deepstack_hf  # noqa: E402,F401
from lmms_eval_run import (  # noqa: E402
    greedy_answers,
    run_lmms_eval,
    samples_and_results,
    tiny_converted_checkpoint,
    write_task,
)
from synthetic_video import decode_every_frame, write_numbered_video  # noqa: E402

TASK = "deepstack_tiny_video_qa"
QUESTIONS = ["what happens first?", "how many frames change?"]
VIDEOS = [(13, 64, 48), (8, 48, 80)]  # (frames, width, height): a landscape and a portrait clip
SAMPLED = [[0, 2, 4, 6, 8, 10], [0, 1, 2, 3, 4, 5]]  # k * floor(T / 6)

def hand_grid(frames):
    """Two frames to a row, row-major (all frames of a clip share one size)."""
    return np.concatenate([np.concatenate(frames[row : row + 2], axis=1) for row in range(0, len(frames), 2)], axis=0)


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms-video")
    model_dir = tiny_converted_checkpoint(root)
    paths = []
    for index, (frames, width, height) in enumerate(VIDEOS):
        paths.append(str(root / f"clip{index}.mp4"))
        write_numbered_video(paths[-1], frames, width=width, height=height)
    test = datasets.Dataset.from_dict({"video": paths, "question": QUESTIONS, "answer": ["a cat", "two"]})
    write_task(root, TASK, test, visual='doc["video"]')
    return root, model_dir, paths


def one_at_a_time(model_dir, paths):
    """The package itself, batch size 1 (`greedy_answers`), each video's hand-made grid given as an image."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    grids = []
    for path, indices in zip(paths, SAMPLED):
        frames = decode_every_frame(path)
        grids.append(Image.fromarray(hand_grid([frames[i] for i in indices])))
    return greedy_answers(processor, model, grids, QUESTIONS)


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
