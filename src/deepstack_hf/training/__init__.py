"""Training DeepStack the paper's way (docs/training.md): a new model from a CLIP and an LLM checkpoint, the original's
LLaVA-format data with its supervision rule, and the two stage recipes behind `deepstack-train`."""

from .collator import DeepStackDataCollator
from .llava_data import BadSampleError, load_llava_dataset
from .model_builder import build_deepstack_model
from .recipes import apply_stage

__all__ = ["BadSampleError", "DeepStackDataCollator", "apply_stage", "build_deepstack_model", "load_llava_dataset"]
