"""lmms-eval model plugin: `--model deepstack` evaluates any DeepStack checkpoint, batched.

Installed with the `lmms-eval` extra; lmms-eval finds it through the `lmms_eval.models` entry point
(`deepstack = "deepstack_hf.integrations.lmms_eval:manifest"` in pyproject.toml), so no file of lmms-eval is edited.

    python -m lmms_eval --model deepstack \
        --model_args pretrained=deepstack-hf/deepstack-l-hd-vicuna-7b,dtype=float16 \
        --tasks textvqa_val --batch_size 8

The model and processor load through the Auto classes, so `pretrained` is any converted repo (Hub id or folder),
with or without the module files the converter adds; the classes that run are this package's (Transformers prefers
classes registered in the process over a repo's code). Each request's images and videos
(`doc_to_visual`: PIL images, and video file paths for video tasks) and text (`doc_to_text`) become one user turn of
the checkpoint's chat template, visuals first, as the original evaluation put `<image>` before the question; a
video becomes IG-VLM's 6-frame grid image, as in the paper's video QA (docs/video.md; decoding needs the `video`
extra). A batch is padded on the left and generated at once.
With `accelerate launch`, each process evaluates its shard of the requests on its own GPU.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

import deepstack_hf  # noqa: F401  (registers DeepStack with the Auto classes)

MODEL_NAME = "deepstack"
DEFAULT_MAX_NEW_TOKENS = 1024


def manifest() -> ModelManifest:
    """The `lmms_eval.models` entry point: `--model deepstack` -> `DeepStackLMMs`."""
    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.DeepStackLMMs")


def positive_batch_size(value: int | str) -> int:
    """lmms-eval's `--batch_size` as a number >= 1; `auto` / `auto:N` (a search for the largest batch) is refused."""
    text = str(value).strip()
    if text.startswith("auto"):
        raise ValueError(
            f"--batch_size {text}: the `{MODEL_NAME}` model does not search for a batch size; give a number, "
            "e.g. `--batch_size 8` (lower it if memory runs out)."
        )
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--batch_size {text}: expected a whole number >= 1, e.g. `--batch_size 8`.")
    return int(text)


class DeepStackLMMs(lmms):
    """lmms-eval's `generate_until` for DeepStack.

    Model arguments (`--model_args key=value,...`): `pretrained` (repo id or folder), `revision`, `device`
    (default: the accelerate process's GPU, else `cpu`), `dtype` (`auto`, `float16`, `bfloat16`, `float32`),
    `attn_implementation`. The batch size is lmms-eval's own `--batch_size N` (a number: `auto` is refused).
    """

    is_simple = True

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "DeepStackLMMs":
        """lmms-eval's constructor: refuses a `--model_args` key that lmms-eval also passes (`batch_size` always)."""
        model_args = utils.simple_parse_args_string(arg_string)
        for key, value in (additional_config or {}).items():
            if key in model_args and value is not None:
                raise ValueError(
                    f"`{key}={model_args[key]}` in --model_args: lmms-eval passes its own `--{key}` ({value}) to every "
                    f"model; drop it from --model_args and run with `--{key} {model_args[key]}`."
                )
        return super().create_from_arg_string(arg_string, additional_config)

    def __init__(
        self,
        pretrained: str,
        revision: str = "main",
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        attn_implementation: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"Unknown model arguments for `{MODEL_NAME}`: {sorted(kwargs)}")
        self.batch_size_per_gpu = positive_batch_size(batch_size)
        accelerator = Accelerator()
        if device is None:
            device = str(accelerator.device)
        self._device = torch.device(device)
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        self.accelerator = accelerator

        self.processor = AutoProcessor.from_pretrained(pretrained, revision=revision)
        self.processor.tokenizer.padding_side = "left"
        self._model = AutoModelForImageTextToText.from_pretrained(
            pretrained, revision=revision, dtype=dtype, attn_implementation=attn_implementation, device_map=self._device
        )
        self._model.eval()

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @staticmethod
    def visual_type(visual) -> str:
        """`"video"` for a file path (lmms-eval's video tasks give paths), `"image"` for anything else."""
        return "video" if isinstance(visual, (str, os.PathLike)) else "image"

    def prompt(self, context: str, visual_types: list[str]) -> str:
        """One user turn: the request's visuals (`"image"` or `"video"` each, in order), then the task's text,
        rendered by the checkpoint's chat template."""
        content = [{"type": kind} for kind in visual_types] + [{"type": "text", "text": context}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        # Requests with the same generation arguments are batched, longest text first (lmms-eval's Collator).
        longest_first = lambda args: (-len(args[0]), args[0])  # noqa: E731
        batches = utils.Collator([request.args for request in requests], longest_first, grouping=True)
        results = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="DeepStack responding")
        for chunk in batches.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
            visuals = [
                list(to_visual(self.task_dict[task][split][doc_id]) or [])
                for to_visual, doc_id, task, split in zip(doc_to_visual, doc_ids, tasks, splits)
            ]
            texts = self.generate_batch(contexts, visuals, dict(all_gen_kwargs[0]))
            for context, gen_kwargs, text in zip(contexts, all_gen_kwargs, texts):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.extend(texts)
            progress.update(len(chunk))
        progress.close()
        return batches.get_original(results)

    def generate_batch(self, contexts, visuals, gen_kwargs: dict) -> list[str]:
        """Answers for one batch: `contexts[i]` with the PIL images and video paths `visuals[i]`; lmms-eval's
        generation keys."""
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.pop("temperature", 0) or 0)
        generate_kwargs = {
            "max_new_tokens": int(gen_kwargs.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            "num_beams": int(gen_kwargs.pop("num_beams", 1)),
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            generate_kwargs["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                generate_kwargs["top_p"] = float(gen_kwargs["top_p"])

        types = [[self.visual_type(visual) for visual in per_request] for per_request in visuals]
        prompts = [self.prompt(context, kinds) for context, kinds in zip(contexts, types)]
        flat = [pair for per_request, kinds in zip(visuals, types) for pair in zip(per_request, kinds)]
        images = [visual for visual, kind in flat if kind == "image"]
        videos = [visual for visual, kind in flat if kind == "video"]
        inputs = self.processor(
            images=images or None, videos=videos or None, text=prompts, padding=True, return_tensors="pt"
        )
        inputs = inputs.to(self.device, self.model.dtype)  # casts floating tensors (pixels) only
        with torch.inference_mode():
            output = self.model.generate(**inputs, **generate_kwargs)
        answers = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [self.cut_at_stop(answer, until) for answer in answers]

    @staticmethod
    def cut_at_stop(text: str, until: list[str]) -> str:
        """The text before the first of the task's stop strings (lmms-eval's `until`)."""
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text

    def loglikelihood(self, requests):
        raise NotImplementedError("The DeepStack lmms-eval model implements generate_until tasks only.")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("The DeepStack lmms-eval model implements single-round generate_until only.")


__all__ = ["DeepStackLMMs", "manifest"]
