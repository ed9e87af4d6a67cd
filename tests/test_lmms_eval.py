"""lmms-eval with `--model deepstack` on a tiny offline task: answers equal the model's own greedy answers.

Runs only where lmms-eval is installed (the `lmms-eval` extra; docs/evaluation.md records a run and the install
that keeps the CPU torch). A tiny converted checkpoint answers a four-question VQA task whose dataset is saved to
disk and whose yaml is passed with `--include_path`, in batches of three over images of different grids. The
independent expectation is the package used directly, one question at a time. The test reads what lmms-eval wrote
(the results JSON and the samples JSONL): lmms-eval exits 0 and prints its table even when every request failed.
"""

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install '.[lmms-eval]', docs/evaluation.md)")
datasets = pytest.importorskip("datasets", reason="lmms-eval's `datasets` dependency is not installed")

from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import deepstack_hf  # noqa: E402,F401
from lmms_eval_run import (  # noqa: E402
    POST_PROMPT,
    greedy_answers,
    run_lmms_eval,
    samples_and_results,
    tiny_converted_checkpoint,
    write_task,
)

TASK = "deepstack_tiny_vqa"
QUESTIONS = ["what is red?", "how many shapes?", "what color is the sky?", "is there a cat?"]
SIZES = [(150, 96), (96, 150), (112, 112), (200, 60)]  # four different crop grids

def picture(size, seed):
    image = Image.new("RGB", size, (230 - 30 * seed, 220, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((5, 5, size[0] // 2, size[1] - 5), fill=(200, 40 + 40 * seed, 40))
    return image


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    model_dir = tiny_converted_checkpoint(root)
    images = [picture(size, seed) for seed, size in enumerate(SIZES)]
    test = datasets.Dataset.from_dict(
        {"image": images, "question": QUESTIONS, "answer": ["red", "two", "blue", "no"]},
        features=datasets.Features(
            {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
        ),
    )
    write_task(root, TASK, test, visual='doc["image"].convert("RGB")')
    return root, model_dir, images


def one_at_a_time(model_dir, images):
    """The package itself, batch size 1 (`greedy_answers`)."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return greedy_answers(processor, model, images, QUESTIONS)


def test_lmms_eval_runs_the_deepstack_plugin_batched(tiny_task):
    root, model_dir, images = tiny_task
    out = root / "results"
    completed = run_lmms_eval(root, TASK, f"pretrained={model_dir},device=cpu,dtype=float32", 3, out)

    expected = one_at_a_time(model_dir, images)
    gold = ["red", "two", "blue", "no"]
    samples, results = samples_and_results(out, TASK, completed)
    assert [sample["doc_id"] for sample in samples] == list(range(len(QUESTIONS)))  # every question, once
    assert [sample["filtered_resps"] for sample in samples] == expected
    assert [sample["input"] for sample in samples] == [question + POST_PROMPT for question in QUESTIONS]
    assert [sample["target"] for sample in samples] == gold
    matches = [float(answer.strip().lower() == truth) for answer, truth in zip(expected, gold)]
    assert [sample["exact_match"] for sample in samples] == matches

    assert results["results"][TASK]["exact_match,none"] == pytest.approx(sum(matches) / len(matches))
    assert results["n-samples"][TASK] == {"original": len(QUESTIONS), "effective": len(QUESTIONS)}
    assert results["config"]["model"] == "deepstack"
    assert str(results["config"]["batch_size"]) == "3"


def test_batch_size_in_model_args_names_the_option_to_use(tiny_task):
    root, model_dir, _ = tiny_task
    out = root / "results-model-args"
    completed = run_lmms_eval(root, TASK, f"pretrained={model_dir},device=cpu,batch_size=4", 1, out)
    assert "`batch_size=4` in --model_args" in completed.stderr + completed.stdout
    assert "run with `--batch_size 4`" in completed.stderr + completed.stdout
    assert not list(out.rglob("*.json*"))  # nothing evaluated, nothing written


@pytest.mark.parametrize(
    "value, message",
    [("auto", "does not search for a batch size"), ("auto:4", "does not search for a batch size"),
     ("0", "expected a whole number >= 1"), ("two", "expected a whole number >= 1")],
)
def test_batch_size_other_than_a_positive_number_is_refused_before_loading(value, message):
    from deepstack_hf.integrations.lmms_eval import DeepStackLMMs

    # The folder does not exist: the refusal must come before anything is loaded.
    with pytest.raises(ValueError, match=message) as refusal:
        DeepStackLMMs(pretrained="no-such-folder", batch_size=value)
    assert "--batch_size 8" in str(refusal.value)


def test_the_plugin_is_found_through_its_entry_point_and_its_old_path():
    from importlib.metadata import entry_points

    import deepstack_hf.integrations.lmms_eval as plugin
    import deepstack_hf.lmms_eval_model as old_path

    assert old_path is plugin
    (entry,) = [entry for entry in entry_points(group="lmms_eval.models") if entry.name == "deepstack"]
    assert entry.value == "deepstack_hf.integrations.lmms_eval:manifest"
    assert entry.load() is plugin.manifest
