"""DeepStack in the tools around a model, each behind its optional extra (docs/design.md, "Package layout"):

* `serving`: `deepstack-serve`, an OpenAI-compatible chat-completions server (extra `serving`; docs/serving.md);
* `vllm`: the vLLM plugin that serves converted repos with their stacks (extra `vllm`; docs/vllm.md);
* `lmms_eval`: the lmms-eval model plugin, `--model deepstack` (extra `lmms-eval`; docs/evaluation.md).

They use the model through its public classes; the model imports nothing from here.
"""
