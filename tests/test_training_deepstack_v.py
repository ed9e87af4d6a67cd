"""Fine-tuning DeepStack-V with `transformers.Trainer`, fully and with PEFT LoRA: the loss moves and the saved model
(or adapter) reloads to the same logits."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

import test_training as recipe  # the processor and collator of the DeepStack-L training test
from conftest import tiny_deepstack_config, trainer_checkpointing_argument
from deepstack_hf import DeepStackForConditionalGeneration


def v_setup(tmp_path, split=1, **overrides):
    processor = recipe.make_processor(tmp_path)
    processor.image_processor.square_grid = True  # DeepStack-V's grid
    if split >= 3:
        overrides["vision_feature_layer"] = -1
    config = tiny_deepstack_config(
        image_token_id=processor.image_token_id, deepstack_variant="V", vision_split_layer=split, **overrides
    )
    torch.manual_seed(0)
    return processor, DeepStackForConditionalGeneration(config)


def train(model, processor, tmp_path, steps=20, learning_rate=1e-2, **arguments):
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=learning_rate,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        remove_unused_columns=False,
        **arguments,
    )
    collate = lambda rows: recipe.collate(processor, rows)  # noqa: E731
    trainer = Trainer(model=model, args=args, train_dataset=recipe.EXAMPLES, data_collator=collate)
    trainer.train()
    return trainer


def loss_of(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_trainer_fine_tunes_deepstack_v_and_the_saved_model_reloads(tmp_path):
    # split at the last CLIP layer: the stacks go into the 5 extra layers, which train and reload too
    processor, model = v_setup(tmp_path, split=3)
    batch = recipe.collate(processor, recipe.EXAMPLES)
    assert batch["pixel_values"].shape[1] == 5  # every image: the global view and the 2x2 square grid
    before = loss_of(model, batch)
    extra_layer = model.model.vision_tower.post_encoder[0].mlp.fc1.weight.detach().clone()
    trainer = train(model, processor, tmp_path, steps=10, learning_rate=2e-2, **trainer_checkpointing_argument())
    after = loss_of(model, batch)
    assert after < 0.75 * before, (before, after)  # 5.75 -> 3.47 when written
    assert not torch.equal(model.model.vision_tower.post_encoder[0].mlp.fc1.weight, extra_layer)
    trainer.save_model(tmp_path / "saved")
    reloaded = DeepStackForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_peft_lora_fine_tunes_deepstack_v_and_the_adapter_reloads(tmp_path):
    peft = pytest.importorskip("peft")
    processor, model = v_setup(tmp_path)
    model.save_pretrained(tmp_path / "base")
    batch = recipe.collate(processor, recipe.EXAMPLES)
    before = loss_of(model, batch)
    # LoRA on the attention of both the CLIP tower (which receives the stacks) and the decoder, projector trained
    lora = peft.LoraConfig(
        r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, modules_to_save=["multi_modal_projector"]
    )
    peft_model = peft.get_peft_model(model, lora)
    adapted = {name for name, _ in peft_model.named_modules() if name.endswith("q_proj.lora_A")}
    assert any(".vision_tower.encoder." in name for name in adapted)
    assert any(".language_model." in name for name in adapted)
    train(peft_model, processor, tmp_path, steps=8, learning_rate=1e-1)
    after = loss_of(peft_model, batch)
    assert after < before - 0.05, (before, after)  # the deterministic full-batch loss: 5.78 -> 5.66 when written

    peft_model.save_pretrained(tmp_path / "adapter")
    base = DeepStackForConditionalGeneration.from_pretrained(tmp_path / "base")
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, peft_model(**batch).logits, rtol=1e-6, atol=1e-6)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, peft_model(**batch).logits, rtol=1e-4, atol=1e-4)
