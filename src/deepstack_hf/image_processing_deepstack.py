"""PLACEHOLDER: replaced by the image-processor work (issue 3)."""

from transformers.image_processing_utils import BaseImageProcessor


class DeepStackImageProcessor(BaseImageProcessor):
    pass
