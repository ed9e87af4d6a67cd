"""DeepStack (NeurIPS 2024) for Hugging Face Transformers.

Importing this package registers the DeepStack config, models, image processor, video processor and processor
with the Auto classes, so ``AutoProcessor``, ``AutoModelForImageTextToText`` and ``pipeline("image-text-to-text")``
load converted checkpoints.

The package's top holds the model: config, image / video processors, processor, tokenizer helpers, modeling. Around
it, `conversion/` (original checkpoints -> Transformers repos), `training/` (the paper's recipes on `Trainer`),
`integrations/` (the server, the vLLM and lmms-eval plugins) and `testing_utils/` (synthetic checkpoints, a tiny
tokenizer, the independent reference of the original: tests and the demo). The model imports none of them
(docs/design.md, "Package layout").
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from . import _moved_modules
from ._compat import AutoImageProcessor, AutoVideoProcessor
from .configuration_deepstack import DeepStackConfig
from .image_processing_deepstack import DeepStackImageProcessor
from .image_processing_deepstack_fast import DeepStackImageProcessorFast
from .modeling_deepstack import DeepStackForConditionalGeneration, DeepStackModel, DeepStackPreTrainedModel
from .modeling_deepstack_text import SUPPORTED_TEXT_MODELS
from .modeling_deepstack_vision import DeepStackVisionModel
from .processing_deepstack import DeepStackProcessor
from .video_processing_deepstack import DeepStackVideoProcessor

AutoConfig.register(DeepStackConfig.model_type, DeepStackConfig, exist_ok=True)
AutoModel.register(DeepStackConfig, DeepStackModel, exist_ok=True)
AutoModelForImageTextToText.register(DeepStackConfig, DeepStackForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(
    DeepStackConfig,
    image_processor_classes={"pil": DeepStackImageProcessor, "torchvision": DeepStackImageProcessorFast},
    exist_ok=True,
)
AutoVideoProcessor.register(DeepStackConfig, DeepStackVideoProcessor, exist_ok=True)
AutoProcessor.register(DeepStackConfig, DeepStackProcessor, exist_ok=True)
_moved_modules.install()

__all__ = [
    "SUPPORTED_TEXT_MODELS",
    "DeepStackConfig",
    "DeepStackForConditionalGeneration",
    "DeepStackImageProcessor",
    "DeepStackImageProcessorFast",
    "DeepStackModel",
    "DeepStackPreTrainedModel",
    "DeepStackProcessor",
    "DeepStackVideoProcessor",
    "DeepStackVisionModel",
]
