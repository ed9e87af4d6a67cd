"""Fine-tuning with `transformers.Trainer`: processor batches in, the LM loss (image positions ignored) goes down."""

import torch
from PIL import Image
from transformers import Trainer, TrainingArguments

from conftest import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_deepstack_config, trainer_checkpointing_argument
from deepstack_hf import DeepStackForConditionalGeneration, DeepStackImageProcessor, DeepStackProcessor
from deepstack_hf.chat_templates import VICUNA_V1_TEMPLATE
from deepstack_hf.testing_utils.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece

EXAMPLES = [
    ((60, 40), (220, 30, 30), "What color is the picture?", "red"),
    ((40, 90), (30, 30, 220), "What color is the picture?", "blue"),
    ((80, 80), (30, 200, 30), "What color is the picture?", "green"),
    ((120, 30), (220, 220, 30), "What color is the picture?", "yellow"),
]


def make_processor(tmp_path):
    tokenizer = tokenizer_from_sentencepiece(train_tiny_sentencepiece(tmp_path / "tiny.model"))
    image_processor = DeepStackImageProcessor(crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    return DeepStackProcessor(image_processor, tokenizer, chat_template=VICUNA_V1_TEMPLATE)


def collate(processor, examples):
    """Chat-formatted prompt + answer per example; loss on every real text token. Image positions get -100 here
    too (the model ignores them anyway): the Trainer normalises the loss by the labels it counts."""
    texts, images = [], []
    for size, color, question, answer in examples:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer},
        ]
        texts.append(processor.apply_chat_template(messages))
        images.append(Image.new("RGB", size, color))
    batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    ignored = (batch["attention_mask"] == 0) | (batch["input_ids"] == processor.image_token_id)
    batch["labels"] = batch["input_ids"].masked_fill(ignored, -100)
    return batch


def test_trainer_fine_tunes_with_gradient_checkpointing(tmp_path):
    processor = make_processor(tmp_path)
    config = tiny_deepstack_config(image_token_id=processor.image_token_id)
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config)
    batch = collate(processor, EXAMPLES)
    with torch.no_grad():
        loss_before = model(**batch).loss.item()

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=20,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        remove_unused_columns=False,
        **trainer_checkpointing_argument(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=EXAMPLES, data_collator=lambda rows: collate(processor, rows))
    result = trainer.train()

    model.eval()
    with torch.no_grad():
        loss_after = model(**batch).loss.item()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert loss_after < 0.75 * loss_before, (loss_before, loss_after)
