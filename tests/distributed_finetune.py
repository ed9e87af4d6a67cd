"""Tiny DeepStack-V and DeepStack-L fine-tunes, for tests/test_distributed_training.py.

Runs in one process, or under `torchrun --nproc_per_node 2` (CPU, gloo) with the same global batch: every example
has the same number of label tokens, so the per-rank mean losses average to the global mean and the loss
trajectories must agree with the single-process run.

* `--strategy trainer`: `transformers.Trainer` (DDP under torchrun). On CPU, Accelerate runs the Trainer's FSDP
  option as DDP, so FSDP is exercised by the next strategy.
* `--strategy fsdp2`: PyTorch FSDP2 (`fully_shard` on every CLIP layer, every decoder layer, then the whole
  model) with a plain AdamW loop (one process: the same loop unsharded).

Writes `{strategy: {variant: {"losses": [step 1, 2, ...], "wrapper": what trained the model}}}` as JSON (rank 0).

    torchrun --nproc_per_node 2 tests/distributed_finetune.py OUT.json [--strategy trainer fsdp2]
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_IMAGE_SIZE, tiny_deepstack_config  # noqa: E402

from deepstack_hf import DeepStackForConditionalGeneration  # noqa: E402
from deepstack_hf.grid_layout import image_grid, num_views  # noqa: E402

GLOBAL_BATCH, STEPS, IMAGE_TOKEN = 4, 3, 300
# (height, width): different grids (and view counts for DeepStack-L) in every batch
SIZES = [(40, 100), (120, 30), (50, 50), (60, 60), (30, 90), (90, 45), (56, 56), (70, 20)] * 2
VARIANTS = {"deepstack-v": {"deepstack_variant": "V", "vision_split_layer": 1}, "deepstack-l": {}}


def examples(config) -> list[dict]:
    rows = []
    for index, (height, width) in enumerate(SIZES):
        generator = torch.Generator().manual_seed(index)
        text = torch.randint(3, 290, (11,), generator=generator)
        tokens = config.patches_per_side**2
        input_ids = torch.cat([torch.tensor([1]), text[:4], torch.full((tokens,), IMAGE_TOKEN), text[4:]])
        grid = image_grid(width, height, config.num_crops, TINY_IMAGE_SIZE, config.square_grid)
        views = num_views(grid, config.num_crops, config.hd_layout)
        pixels = torch.randn(views, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=generator)
        rows.append({"input_ids": input_ids, "pixel_values": pixels, "image_sizes": torch.tensor([height, width])})
    return rows


def collate(rows: list[dict]) -> dict:
    """Stacks equal-length prompts; pads the view dimension to the batch's largest view count."""
    most = max(row["pixel_values"].shape[0] for row in rows)
    pixel_values = torch.zeros(len(rows), most, *rows[0]["pixel_values"].shape[1:])
    for index, row in enumerate(rows):
        pixel_values[index, : row["pixel_values"].shape[0]] = row["pixel_values"]
    input_ids = torch.stack([row["input_ids"] for row in rows])
    return {
        "input_ids": input_ids,
        # -100 on the image positions (the model ignores them anyway) so that the Trainer's token count is right
        "labels": input_ids.masked_fill(input_ids == IMAGE_TOKEN, -100),
        "pixel_values": pixel_values,
        "image_sizes": torch.stack([row["image_sizes"] for row in rows]),
    }


LEARNING_RATE = 2e-2


def tiny_model(variant: str) -> DeepStackForConditionalGeneration:
    config = tiny_deepstack_config(image_token_id=IMAGE_TOKEN, **VARIANTS[variant])
    torch.manual_seed(0)
    return DeepStackForConditionalGeneration(config)


def trainer_finetune(variant: str, output_dir: str, world_size: int = 1) -> dict:
    model = tiny_model(variant)
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=GLOBAL_BATCH // world_size,
        max_steps=STEPS,
        learning_rate=LEARNING_RATE,
        logging_steps=1,
        train_sampling_strategy="sequential",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        ddp_backend="gloo" if world_size > 1 else None,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples(model.config), data_collator=collate)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"losses": losses, "wrapper": type(trainer.model_wrapped).__name__}


def fsdp2_finetune(variant: str, output_dir: str, world_size: int = 1) -> dict:
    model = tiny_model(variant).train()
    if world_size > 1:
        # FSDP units: each CLIP layer (post_encoder included), each decoder layer, then the rest
        for layer in [*model.model.vision_tower.encoder.layers, *model.model.language_model.layers]:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    rows = examples(model.config)
    rank, per_rank = int(os.environ.get("RANK", 0)), GLOBAL_BATCH // world_size
    losses = []
    for step in range(STEPS):
        start = step * GLOBAL_BATCH + rank * per_rank
        loss = model(**collate(rows[start : start + per_rank])).loss
        loss.backward()  # FSDP2 averages the gradients over the ranks
        optimizer.step()
        optimizer.zero_grad()
        logged = loss.detach()
        if world_size > 1:
            dist.all_reduce(logged)
            logged /= world_size
        losses.append(logged.item())
    return {"losses": losses, "wrapper": type(model).__name__}


STRATEGIES = {"trainer": trainer_finetune, "fsdp2": fsdp2_finetune}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output", help="JSON file for the loss trajectories")
    parser.add_argument("--strategy", nargs="+", choices=sorted(STRATEGIES), default=sorted(STRATEGIES))
    args = parser.parse_args()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    work = Path(args.output).parent
    losses = {}
    for strategy in args.strategy:
        if world_size > 1 and not dist.is_initialized():  # the Trainer initialises it itself
            dist.init_process_group("gloo")
        finetune = STRATEGIES[strategy]
        losses[strategy] = {variant: finetune(variant, str(work / variant), world_size) for variant in VARIANTS}
    if int(os.environ.get("RANK", 0)) == 0:
        Path(args.output).write_text(json.dumps(losses))


if __name__ == "__main__":
    main()
