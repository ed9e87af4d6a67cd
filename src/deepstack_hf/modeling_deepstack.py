"""PLACEHOLDER: replaced by the modeling work (issue 2)."""

from transformers import PreTrainedModel

from .configuration_deepstack import DeepStackConfig


class DeepStackPreTrainedModel(PreTrainedModel):
    config_class = DeepStackConfig


class DeepStackModel(DeepStackPreTrainedModel):
    pass


class DeepStackForConditionalGeneration(DeepStackPreTrainedModel):
    pass
