"""The loss of a mixed training batch is the token-weighted mean of its samples' own losses.

Each sample's own loss comes from a forward of that sample alone (its mean over its supervised tokens, weighted by
their number); the batch mixes a text-only row, one-image rows, a two-image row, a multi-turn row, images of
different sizes (different crop grids: different numbers of views and, for DeepStack-L-HD, of image tokens), and is
padded on the left or on the right. The original gets this wrong: stacks are indexed by image, not by row, so after
a text-only row every image row receives the previous row's stacks (docs/training.md).
"""

import pytest
import torch

from conftest import tiny_deepstack_config
from deepstack_hf import DeepStackForConditionalGeneration
from deepstack_hf.training import DeepStackDataCollator, load_llava_dataset
from training_setup import needs_collator, tiny_processor, write_llava_json

pytestmark = needs_collator

SAMPLES = [
    {"id": "one", "image": "red.png", "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]},
    {"id": "text", "conversations": [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": "green, like grass"}]},
    {"id": "wide", "image": "yellow.png", "conversations": [{"from": "human", "value": "Shape?\n<image>"}, {"from": "gpt", "value": "a wide strip"}]},
    {"id": "two", "image": ["blue.png", "green.png"], "conversations": [
        {"from": "human", "value": "<image> then <image>\nCompare them."}, {"from": "gpt", "value": "blue, then green"}]},
    {"id": "turns", "image": "blue.png", "conversations": [
        {"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "blue"},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes, the picture is blue"}]},
]
VARIANTS = {"L": {}, "L-HD": {"hd_layout": True}, "V": {"deepstack_variant": "V", "vision_split_layer": 1}}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return list(load_llava_dataset(write_llava_json(tmp_path_factory.mktemp("data"), SAMPLES)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_loss_is_the_token_weighted_mean_of_the_samples_losses(tmp_path, rows, variant, padding_side):
    processor = tiny_processor(tmp_path, hd=variant == "L-HD", square=variant == "V")
    config = tiny_deepstack_config(image_token_id=processor.image_token_id, **VARIANTS[variant])
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    collator = DeepStackDataCollator(processor, padding_side=padding_side)
    batch = collator(rows)
    if variant == "L-HD":  # different grids: different token counts per image
        assert len(set((batch["input_ids"] == processor.image_token_id).sum(1).tolist())) > 2
    sums, counts = [], []
    with torch.no_grad():
        for row in rows:
            alone = collator([row])
            count = int((alone["labels"][:, 1:] != -100).sum())
            sums.append(model(**alone).loss * count)
            counts.append(count)
        batch_loss = model(**batch).loss
    assert batch_loss.item() == pytest.approx((sum(sums) / sum(counts)).item(), rel=1e-5, abs=1e-6)
    # and not the plain mean of the per-sample means (the counts differ)
    assert batch_loss.item() != pytest.approx(torch.stack([s / c for s, c in zip(sums, counts)]).mean().item(), rel=1e-4)
