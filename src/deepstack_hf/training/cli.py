"""`deepstack-train`: one training stage of a DeepStack model on LLaVA-format data, with `transformers.Trainer`.

    deepstack-train --stage pretrain --model_name_or_path deepstack-l-init --data_path blip_laion_cc_sbu_558k.json \\
        --image_folder images --output_dir deepstack-l-pretrain --bf16 true [any TrainingArguments flag]

The arguments are parsed by `HfArgumentParser` into `DeepStackTrainingArguments` (below) and Transformers' own
`TrainingArguments`, so every `TrainingArguments` flag works (`--deepspeed`, `--fsdp`, `--bf16`,
`--resume_from_checkpoint`, `--report_to`...). `--stage` sets the recipe (`recipes.py`): the modules that train,
the learning rate, batch size, schedule and the data format; a flag given on the command line overrides the
recipe's value. The output directory receives the trained model, its processor and the package's modules
(`auto_map`), so it loads with plain Transformers, and it is the next stage's `--model_name_or_path`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch

from .recipes import DATA_FORMATS, STAGES, apply_stage, model_max_length, recipe_arguments

logger = logging.getLogger(__name__)


@dataclass
class DeepStackTrainingArguments:
    """The arguments of `deepstack-train` besides `TrainingArguments`."""

    model_name_or_path: str = field(
        metadata={"help": "DeepStack repository to train: build_deepstack_model's output, a converted checkpoint or "
                  "the previous stage's output_dir."}
    )
    data_path: str = field(metadata={"help": "LLaVA-format JSON (a list of {id, image, conversations})."})
    image_folder: str | None = field(
        default=None, metadata={"help": "Folder the samples' image paths are relative to (default: the JSON's)."}
    )
    stage: Literal["pretrain", "finetune"] = field(
        default="finetune", metadata={"help": "pretrain: the projector on captions; finetune: projector and decoder."}
    )
    model_max_length: int | None = field(
        default=None,
        metadata={"help": "Longest sample in tokens, image tokens included (default: 2048, LLaVA-1.5's; 4096, "
                  "LLaVA-NeXT's, for DeepStack-L-HD, whose images take up to 2928 tokens)."},
    )
    data_format: Literal["plain", "chat"] | None = field(
        default=None,
        metadata={"help": "plain: <image> + caption (LLaVA's pretraining format); chat: the model's chat template. "
                  "Default: plain for pretrain, chat for finetune."},
    )
    skip_bad_samples: bool = field(
        default=False, metadata={"help": "Leave out bad samples (counted in the log) instead of stopping."}
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Open every image's header before training (false: unreadable files are found when the "
                  "collator decodes them, still named or skipped)."},
    )
    model_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "dtype the weights are loaded in (bfloat16 halves the memory; the original loads bf16 "
                  "with --bf16, DeepSpeed keeps fp32 master weights either way)."},
    )


def given_options(argv: list[str]) -> set[str]:
    """Option names on the command line, without `--` (and without the `no_` of a negated boolean)."""
    names = {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}
    return names | {name[3:] for name in names if name.startswith("no_")}


def parse_arguments(argv: list[str]):
    """`(DeepStackTrainingArguments, TrainingArguments)` with the stage's recipe under the user's flags."""
    from transformers import HfArgumentParser, TrainingArguments

    stage_parser = argparse.ArgumentParser(add_help=False)
    stage_parser.add_argument("--stage", choices=STAGES, default="finetune")
    stage = stage_parser.parse_known_args(argv)[0].stage
    parser = HfArgumentParser((DeepStackTrainingArguments, TrainingArguments))
    script, training = parser.parse_args_into_dataclasses(args=recipe_arguments(stage, given_options(argv)) + argv)
    if training.remove_unused_columns:  # the collator needs the raw rows (messages, images, id)
        training.remove_unused_columns = False
    return script, training


def train(script: DeepStackTrainingArguments, training):
    """Runs one stage; returns the `Trainer` after training and saving."""
    from transformers import AutoProcessor, Trainer

    from ..chat_templates import PLAIN_TEMPLATE
    from ..conversion.remote_code import write_remote_code
    from ..modeling_deepstack import DeepStackForConditionalGeneration
    from .collator import DeepStackDataCollator
    from .llava_data import load_llava_dataset

    processor = AutoProcessor.from_pretrained(script.model_name_or_path)
    model = DeepStackForConditionalGeneration.from_pretrained(
        script.model_name_or_path, dtype=getattr(torch, script.model_dtype)
    )
    trained = apply_stage(model, script.stage)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"Stage {script.stage}: training {', '.join(trained)} ({count:,} of {total:,} parameters).")

    data_format = script.data_format or DATA_FORMATS[script.stage]
    dataset = load_llava_dataset(
        script.data_path, script.image_folder, skip_bad_samples=script.skip_bad_samples, check_images=script.check_images
    )
    collator = DeepStackDataCollator(
        processor,
        max_length=script.model_max_length or model_max_length(model.config),
        chat_template=PLAIN_TEMPLATE if data_format == "plain" else None,
        padding_side="right",
        skip_bad_samples=script.skip_bad_samples,
    )
    trainer = Trainer(
        model=model, args=training, train_dataset=dataset, data_collator=collator, processing_class=processor
    )
    resume = training.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest checkpoint-* in output_dir
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_remote_code(training.output_dir, model.config, processor)
    return trainer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script, training = parse_arguments(argv)
    logging.basicConfig(level=training.get_process_log_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("deepstack_hf").setLevel(training.get_process_log_level())
    train(script, training)
    return 0


__all__ = ["DeepStackTrainingArguments", "main", "parse_arguments", "train"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
