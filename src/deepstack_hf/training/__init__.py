"""Training DeepStack the paper's way: LLaVA-format data, the original's supervision, stage recipes (docs/training.md)."""

from .collator import DeepStackDataCollator
from .llava_data import BadSampleError, load_llava_dataset

__all__ = ["BadSampleError", "DeepStackDataCollator", "load_llava_dataset"]
