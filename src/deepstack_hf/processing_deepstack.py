"""PLACEHOLDER: replaced by the processor work (issue 3)."""

from transformers import ProcessorMixin


class DeepStackProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"
