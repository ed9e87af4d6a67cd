"""lmms-eval with `--model deepstack` on a tiny offline task: answers equal the model's own greedy answers.

Runs only where lmms-eval is installed (the `lmms-eval` extra; docs/evaluation.md records a run and the install
that keeps the CPU torch). A tiny converted checkpoint answers a four-question VQA task whose dataset is saved to
disk and whose yaml is passed with `--include_path`, in batches of three over images of different grids. The
independent expectation is the package used directly, one question at a time. The test reads what lmms-eval wrote
(the results JSON and the samples JSONL): lmms-eval exits 0 and prints its table even when every request failed.
"""

import textwrap

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install '.[lmms-eval]', docs/evaluation.md)")
datasets = pytest.importorskip("datasets", reason="lmms-eval's `datasets` dependency is not installed")

from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import deepstack_hf  # noqa: E402,F401
from deepstack_hf.conversion import convert_checkpoint  # noqa: E402
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint  # noqa: E402
from lmms_eval_run import run_lmms_eval, samples_and_results  # noqa: E402

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
