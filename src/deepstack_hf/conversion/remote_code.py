"""Make a converted directory self-contained: it loads with plain Transformers and `trust_remote_code=True`.

`write_remote_code(directory, config, processor)` adds, to a converted directory, the
package's own runtime modules (`configuration_deepstack.py`, `modeling_deepstack.py`, `processing_deepstack.py`,
`image_processing_deepstack.py`, `video_processing_deepstack.py` and every module they import relatively, copied
from the installed package) and the `auto_map` entries that point the Auto classes at them:

    config.json             AutoConfig, AutoModel, AutoModelForImageTextToText
    processor_config.json   AutoProcessor, AutoImageProcessor, AutoVideoProcessor (and tokenizer_config.json:
                            AutoProcessor)

Both come from Transformers' own mechanism: the classes are registered with `register_for_auto_class` for the
duration of the call and saved, and `save_pretrained` (through `dynamic_module_utils.custom_object_save`) copies
the module files and writes the `auto_map`. The model card and the weights are not touched.

A user without `deepstack_hf` then loads the repo with `trust_remote_code=True`; with `deepstack_hf` imported, the
registered package classes are used unless `trust_remote_code=True` asks for the repo's copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .._compat import custom_object_save
from ..configuration_deepstack import DeepStackConfig
from ..image_processing_deepstack import DeepStackImageProcessor
from ..modeling_deepstack import DeepStackForConditionalGeneration, DeepStackModel
from ..processing_deepstack import DeepStackProcessor
from ..video_processing_deepstack import DeepStackVideoProcessor

# Each class and the Auto class that loads it from a repo (the same pairs `deepstack_hf/__init__.py` registers).
AUTO_CLASSES = {
    DeepStackConfig: "AutoConfig",
    DeepStackModel: "AutoModel",
    DeepStackForConditionalGeneration: "AutoModelForImageTextToText",
    DeepStackImageProcessor: "AutoImageProcessor",
    DeepStackVideoProcessor: "AutoVideoProcessor",
    DeepStackProcessor: "AutoProcessor",
}
_UNSET = object()


@contextmanager
def registered_for_auto_classes() -> Iterator[None]:
    """Call `register_for_auto_class` on every DeepStack class; restore the previous state on exit.

    While registered, `save_pretrained` of any DeepStack object writes its module files and `auto_map`; outside
    this context, saving a model or processor made with the package writes no code (as before).
    """
    previous = {cls: cls.__dict__.get("_auto_class", _UNSET) for cls in AUTO_CLASSES}
    try:
        for cls, auto_class in AUTO_CLASSES.items():
            cls.register_for_auto_class(auto_class)
        yield
    finally:
        for cls, value in previous.items():
            if value is _UNSET:
                del cls._auto_class
            else:
                cls._auto_class = value


def write_remote_code(directory: str | Path, config: DeepStackConfig, processor: DeepStackProcessor) -> list[str]:
    """Save `config` and `processor` into `directory` again, now with the runtime modules and `auto_map`.

    Args:
        directory: the converted directory (the model card, weights and generation config are left as they are).
        config: the model's config; its `auto_map` is set in place.
        processor: the model's processor (tokenizer, image and video processors), saved with its `auto_map`.

    Returns:
        The names of the Python files now in `directory`, sorted.
    """
    directory = Path(directory)
    with registered_for_auto_classes():
        with torch.device("meta"):  # the model classes only name themselves in config.auto_map: no weights needed
            for model_class in (DeepStackModel, DeepStackForConditionalGeneration):
                custom_object_save(model_class(config), directory, config=config)
        config.save_pretrained(directory)
        processor.save_pretrained(directory)
    return sorted(path.name for path in directory.glob("*.py"))


__all__ = ["AUTO_CLASSES", "registered_for_auto_classes", "write_remote_code"]
