"""`deepstack-train` on tiny models: the stage recipes, what each stage trains, stage 2 from stage 1's output,
resuming, a 2-process torchrun run, and a memorised answer.

Models are built by `build_deepstack_model` from a tiny CLIP and a tiny Llama; the data is LLaVA-format JSON with
colour pictures. Expectations are independent of the code under test: the frozen weights compared tensor for tensor
with the input repository, the trained ones against it; the uninterrupted run's losses for the resumed run; the
single-process run's losses for the 2-process run; the answer the sample teaches.
"""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_deepstack_config
from deepstack_hf import DeepStackForConditionalGeneration, DeepStackProcessor
from deepstack_hf.chat_templates import PLAIN_TEMPLATE
from deepstack_hf.training import BadSampleError, DeepStackDataCollator, load_llava_dataset
from deepstack_hf.training.cli import parse_arguments, train
from deepstack_hf.training.recipes import model_max_length
from training_setup import color_samples, needs_collator, tiny_parts, write_llava_json

pytestmark = needs_collator

FAST = ["--use_cpu", "true", "--report_to", "none", "--dataloader_num_workers", "0", "--save_strategy", "no",
        "--disable_tqdm", "true", "--seed", "0", "--per_device_train_batch_size", "4"]


def run_stage(repo, data, output, stage, *flags):
    """One `deepstack-train` run in this process; returns the Trainer and the logged losses."""
    argv = ["--stage", stage, "--model_name_or_path", str(repo), "--data_path", str(data), "--output_dir", str(output),
            *FAST, *flags]
    trainer = train(*parse_arguments(argv))
    return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def weights(repo) -> dict[str, torch.Tensor]:
    return load_file(Path(repo) / "model.safetensors")


def changed(before, after) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def dataset_loss(repo, data, template=None) -> float:
    """The loss of the whole data set as one batch (deterministic, unlike the logged per-batch losses)."""
    processor = DeepStackProcessor.from_pretrained(repo)
    model = DeepStackForConditionalGeneration.from_pretrained(repo).eval()
    batch = DeepStackDataCollator(processor, chat_template=template)(list(load_llava_dataset(data)))
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from deepstack_hf.training.model_builder import build_deepstack_model

    root = tmp_path_factory.mktemp("stages")
    clip, llm = tiny_parts(root)
    repos = {
        "L": build_deepstack_model(clip, llm, root / "init-l"),
        "V": build_deepstack_model(clip, llm, root / "init-v", variant="V"),
        "V-extra": build_deepstack_model(clip, llm, root / "init-v-extra", variant="V", vision_split_layer=3),
    }
    return root, repos, write_llava_json(root / "data", color_samples(8))


@pytest.fixture(scope="module")
def pretrained(setup):
    """Stage 1 of DeepStack-L (projector only), at a learning rate that moves a tiny model in a few steps."""
    root, repos, data = setup
    trainer, losses = run_stage(repos["L"], data, root / "pretrain-l", "pretrain", "--max_steps", "12",
                                "--learning_rate", "1e-2")
    return root / "pretrain-l", losses


# ------------------------------------------------------------------------------------------------ recipes
def test_stage_recipes_and_explicit_flags(tmp_path):
    base = ["--model_name_or_path", "m", "--data_path", "d.json", "--output_dir", str(tmp_path)]
    script, args = parse_arguments(["--stage", "pretrain", *base])
    assert (script.stage, script.model_max_length, script.data_format) == ("pretrain", None, None)  # 2048 / 4096 HD
    assert (args.learning_rate, args.per_device_train_batch_size, args.save_steps) == (1e-3, 32, 24000)
    assert (args.num_train_epochs, args.lr_scheduler_type.value, args.warmup_steps, args.weight_decay) == (1, "cosine", 0.03, 0.0)
    assert (args.optim.value, args.gradient_checkpointing, args.remove_unused_columns) == ("adamw_torch", True, False)
    _, args = parse_arguments(base)  # finetune is the default stage
    assert (args.learning_rate, args.per_device_train_batch_size, args.save_steps) == (2e-5, 16, 50000)
    script, args = parse_arguments([*base, "--stage", "pretrain", "--learning_rate", "5e-4", "--per_device_train_batch_size=3",
                                    "--gradient_checkpointing", "false", "--remove_unused_columns", "true",
                                    "--model_max_length", "512", "--data_format", "chat"])
    assert (args.learning_rate, args.per_device_train_batch_size, args.gradient_checkpointing) == (5e-4, 3, False)
    assert args.remove_unused_columns is False  # the collator needs the raw rows
    assert (script.model_max_length, script.data_format) == (512, "chat")
    assert [model_max_length(tiny_deepstack_config(hd_layout=hd)) for hd in (False, True)] == [2048, 4096]


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_configs_leave_the_batch_and_precision_to_the_trainer(name, stage):
    config = json.loads((Path(__file__).parents[1] / "examples" / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"


# ------------------------------------------------------------------------------------------------ stages
def test_pretrain_trains_only_the_projector_and_the_loss_falls(setup, pretrained):
    _, repos, data = setup
    output, _ = pretrained
    before, after = weights(repos["L"]), weights(output)
    assert changed(before, after) == {name for name in before if name.startswith("model.multi_modal_projector.")}
    # the decoder is random and frozen: the projector alone moves the loss a little (5.77 -> 5.64 when written)
    assert dataset_loss(output, data, PLAIN_TEMPLATE) < dataset_loss(repos["L"], data, PLAIN_TEMPLATE) - 0.05
    assert (output / "configuration_deepstack.py").is_file() and "auto_map" in json.loads((output / "config.json").read_text())


def test_finetune_starts_from_stage_one_and_trains_projector_and_decoder(setup, pretrained, tmp_path):
    _, _, data = setup
    stage_one, _ = pretrained
    model = DeepStackForConditionalGeneration.from_pretrained(stage_one)
    start = weights(stage_one)
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, start["model.multi_modal_projector.linear_1.weight"])
    run_stage(stage_one, data, tmp_path / "finetune", "finetune", "--max_steps", "8", "--learning_rate", "3e-3")
    after = weights(tmp_path / "finetune")
    moved = changed(start, after)
    assert not any(name.startswith("model.vision_tower.") for name in moved)
    assert {name for name in start if name.startswith(("model.multi_modal_projector.", "model.language_model.layers."))} <= moved
    assert {"lm_head.weight", "model.language_model.embed_tokens.weight"} <= moved
    assert dataset_loss(tmp_path / "finetune", data) < dataset_loss(stage_one, data) - 0.5


@pytest.mark.parametrize("variant", ["V", "V-extra"])
def test_deepstack_v_trains_its_tower_from_the_split_on(setup, tmp_path, variant):
    _, repos, data = setup
    before = weights(repos[variant])
    run_stage(repos[variant], data, tmp_path / "pretrain", "pretrain", "--max_steps", "2", "--learning_rate", "1e-2")
    pretrained = weights(tmp_path / "pretrain")
    run_stage(tmp_path / "pretrain", data, tmp_path / "finetune", "finetune", "--max_steps", "2", "--learning_rate", "1e-2")
    finetuned = weights(tmp_path / "finetune")

    def tower(names):
        return {name.split(".")[2] + "." + name.split(".")[3] for name in names if name.startswith("model.vision_tower.")
                and name.split(".")[2] in ("encoder", "post_encoder")}

    if variant == "V":  # split 1: layer 1 trains in stage 2; layer 2 runs after the layer the projector reads (-2)
        assert tower(changed(before, pretrained)) == set()
        assert tower(changed(pretrained, finetuned)) == {"encoder.layers"}
        assert {name for name in changed(pretrained, finetuned) if ".encoder.layers." in name} == {
            name for name in before if ".encoder.layers.1." in name}
    else:  # split 3: the five extra layers are new; they train with the projector from stage 1 on
        assert tower(changed(before, pretrained)) == {f"post_encoder.{index}" for index in range(5)}
        assert not any(".encoder.layers." in name for name in changed(before, finetuned))


# ------------------------------------------------------------------------------------------------ runs
def test_resuming_from_a_checkpoint_continues_the_same_loss_curve(setup, tmp_path):
    _, repos, data = setup
    flags = ["--max_steps", "6", "--learning_rate", "3e-3", "--per_device_train_batch_size", "2", "--save_strategy", "steps",
             "--save_steps", "3", "--save_total_limit", "3"]
    _, whole = run_stage(repos["L"], data, tmp_path / "whole", "finetune", *flags)
    assert (tmp_path / "whole" / "checkpoint-3").is_dir()
    trainer, resumed = run_stage(repos["L"], data, tmp_path / "resumed", "finetune", *flags,
                                 "--resume_from_checkpoint", str(tmp_path / "whole" / "checkpoint-3"))
    steps = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert steps[-3:] == [4, 5, 6]
    assert resumed[-3:] == pytest.approx(whole[3:], rel=1e-5)
    assert len(set(whole)) == len(whole)  # the curve moves


def test_a_memorised_answer_becomes_the_greedy_answer(setup, tmp_path):
    _, repos, _ = setup
    sample = {"id": "m", "image": "yellow.png",
              "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a yellow bus"}]}
    data = write_llava_json(tmp_path / "data", [sample] * 4)

    def answer(repo):
        processor = DeepStackProcessor.from_pretrained(repo)
        model = DeepStackForConditionalGeneration.from_pretrained(repo).eval()
        image = tmp_path / "data" / "yellow.png"
        messages = [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "What is it?"}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False, use_cache=False)
        return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])

    assert answer(repos["L"]) != "a yellow bus</s>"
    run_stage(repos["L"], data, tmp_path / "out", "finetune", "--max_steps", "50", "--learning_rate", "1e-2",
              "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--gradient_checkpointing", "false")
    assert answer(tmp_path / "out") == "a yellow bus</s>"


def test_bad_samples_stop_training_or_are_skipped_and_counted(setup, tmp_path, caplog):
    _, repos, _ = setup
    samples = color_samples(4) + [{"id": "lost", "image": "missing.png", "conversations": [
        {"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}]}]
    data = write_llava_json(tmp_path / "data", samples)
    with pytest.raises(BadSampleError, match="Sample id 'lost': image file 'missing.png' not found"):
        run_stage(repos["L"], data, tmp_path / "stop", "finetune", "--max_steps", "1")
    assert not (tmp_path / "stop" / "model.safetensors").exists()
    with caplog.at_level(logging.WARNING, logger="deepstack_hf.training"):
        trainer, _ = run_stage(repos["L"], data, tmp_path / "skip", "finetune", "--max_steps", "1", "--skip_bad_samples", "true")
    assert len(trainer.train_dataset) == 4
    assert "Skipped 1 bad sample(s) of 5" in caplog.text and "Sample id 'lost'" in caplog.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_follow_the_single_process_losses(setup, tmp_path):
    _, repos, data = setup
    flags = ["--max_steps", "3", "--learning_rate", "3e-3", "--warmup_steps", "0", "--train_sampling_strategy",
             "sequential", "--gradient_checkpointing", "false"]
    _, single = run_stage(repos["L"], data, tmp_path / "single", "finetune", *flags)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "deepstack_hf.training.cli",
               "--stage", "finetune", "--model_name_or_path", str(repos["L"]), "--data_path", str(data),
               "--output_dir", str(tmp_path / "double"), *FAST, "--per_device_train_batch_size", "2", *flags,
               "--ddp_backend", "gloo"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    state = json.loads((tmp_path / "double" / "trainer_state.json").read_text())
    double = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(double) == len(single) == 3
    assert double == pytest.approx(single, rel=1e-5)  # about 1e-7 when written
    assert len(set(single)) == 3  # the parameters did move
