"""`transformers serve`'s model manager, taught to load DeepStack through the Auto classes."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.serving.utils import Modality

from ..configuration_deepstack import DeepStackConfig


def is_deepstack(model_or_config) -> bool:
    """Whether a model (or config) is DeepStack, by model type (whichever copy of the classes defines it)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) == DeepStackConfig.model_type


class DeepStackModelManager(ModelManager):
    """`ModelManager` that loads DeepStack checkpoints as image-text-to-text models.

    Upstream picks the model class by looking the config's architecture up on the `transformers` module and the
    modality by class name among Transformers' own models; neither knows DeepStack. Other models load as upstream.
    """

    # Adapted from `ModelManager._load_model` (transformers/cli/serving/model_manager.py): the same loading
    # arguments, with the Auto class that knows DeepStack instead of a lookup on the `transformers` module.
    def _load_model(self, model_id_and_revision: str, tqdm_class=None, progress_callback=None, gguf_file=None):
        model_id, revision = model_id_and_revision.split("@", 1)
        config = AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=self.trust_remote_code)
        if gguf_file is not None or not is_deepstack(config):
            return super()._load_model(model_id_and_revision, tqdm_class, progress_callback, gguf_file)
        kwargs = {
            "revision": revision,
            "attn_implementation": self.attn_implementation,
            "dtype": self.dtype,
            "device_map": self.device,
            "trust_remote_code": self.trust_remote_code,
            "tqdm_class": tqdm_class,
        }
        quantization_config = self.get_quantization_config()
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        return AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)

    @staticmethod
    def get_model_modality(model, processor=None) -> Modality:
        if is_deepstack(model):
            return Modality.VLM
        return ModelManager.get_model_modality(model, processor=processor)
