"""vLLM plugin: serves converted DeepStack-L and DeepStack-L-HD repos with their stacks (see docs/vllm.md).

vLLM discovers [`register`] through the `vllm.general_plugins` entry point of this package and calls it in every
process it starts (API server, engine core, workers), so `vllm serve <converted repo>` and `vllm.LLM(...)` find the
`DeepStackForConditionalGeneration` architecture without any flag. vLLM itself is an optional dependency
(`pip install deepstack-hf[vllm]`): nothing here imports it until vLLM calls the plugin.
"""

ARCHITECTURE = "DeepStackForConditionalGeneration"


def register() -> None:
    """Registers DeepStack's config with Transformers' Auto classes and its vLLM model with vLLM's registry.

    Safe to call several times (vLLM loads plugins once per process, tests may call it again).
    """
    from vllm import ModelRegistry

    import deepstack_hf  # noqa: F401  (registers model_type "deepstack" with AutoConfig / AutoProcessor)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            ARCHITECTURE, "deepstack_hf.integrations.vllm.model:DeepStackForConditionalGeneration"
        )


__all__ = ["ARCHITECTURE", "register"]
