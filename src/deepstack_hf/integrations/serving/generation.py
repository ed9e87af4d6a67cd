"""One generation at a time on the model, in a worker thread, behind a bounded queue; each one cancellable.

[`GenerationQueue.submit`] hands a [`GenerationJob`] to a single worker thread (HTTP 503 when `max_queue` jobs are
already waiting behind the running one). The worker ([`GenerationEngine.run`]) first prepares the job's inputs: it
checks the visual-token budget from the images' headers against the context, decodes the images (one request's
pixels in memory at a time), runs the processor, and checks the exact prompt length against the context
(`max_tokens` refused with HTTP 400 when prompt + `max_tokens` exceed it, as vLLM does; left out, it is the rest of
the context). It reports that stage on `job.prepared`, so a streamed request can still get its HTTP 400, then runs
`model.generate` with the request's settings, Transformers' `AsyncTextIteratorStreamer` for streamed requests, and
a `StoppingCriteria` that ends the generation as soon as `job.cancel` is set (client gone, server shutting down):
at most one more decoding step runs after a client disconnects.

Batch size 1, one after the other: answers are exactly those of `model.generate` on each request alone.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ...chat_escaping import ESCAPED_RUN, unescape
from .chat_request import ChatRequest
from .errors import RequestError
from .media import Media, decode_image

logger = logging.getLogger("deepstack_hf.integrations.serving")

_MAX_ERROR_CHARS = 300


class CancelGeneration(StoppingCriteria):
    """Stops `generate` at the next step once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass(eq=False)  # compared and hashed by identity: jobs live in a set
class GenerationJob:
    """One request's generation.

    Attributes:
        request: the checked request.
        prompt: the rendered prompt (control tokens typed in messages escaped).
        images: the images' media (opened: header read, pixels not decoded yet).
        videos: the videos' media (encoded bytes, as the video processor takes them).
        streamer: for streamed requests, where the text goes as it is generated.
        cancel: set to stop the generation (or skip it, if it has not started).
        prepared: resolves to the prompt's token count once the inputs are ready, or to the request's error.
    """

    request: ChatRequest
    prompt: str
    images: list[Media] = field(default_factory=list)
    videos: list[Media] = field(default_factory=list)
    streamer: object | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    prepared: Future = field(default_factory=Future)

    def fail(self, error: BaseException) -> None:
        try:
            self.prepared.set_exception(error)
        except InvalidStateError:  # already settled (the server closed it meanwhile)
            pass

    def ready(self, prompt_tokens: int) -> None:
        try:
            self.prepared.set_result(prompt_tokens)
        except InvalidStateError:
            pass


@dataclass
class Completion:
    """What a job generated: the new token ids (the end token included), their text, why it stopped, the
    prompt's length."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end token or stop string), "length" (max tokens) or "cancelled"
    prompt_tokens: int


class GenerationEngine:
    """The model, its processor and the context they allow; runs jobs in the worker thread."""

    def __init__(self, model, processor, context_length: int):
        self.model, self.processor, self.context_length = model, processor, context_length
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])

    def check_context(self, prompt_tokens: int, max_tokens: int | None, about: bool = False) -> int:
        """The number of tokens to generate for a prompt of `prompt_tokens`; `RequestError` when it does not fit.

        vLLM's rule: `max_tokens` left out means the rest of the context; prompt + `max_tokens` over the context
        is refused, not cut.
        """
        context, prompt = self.context_length, f"{'about ' if about else ''}{prompt_tokens}"
        if max_tokens is None and prompt_tokens >= context:
            raise RequestError(
                f"This model's maximum context length is {context} tokens. However, your messages take {prompt} "
                "tokens. Please reduce the length of the messages or the number of images.",
                param="messages",
            )
        if max_tokens is not None and prompt_tokens + max_tokens > context:
            raise RequestError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{'about ' if about else ''}{prompt_tokens + max_tokens} tokens ({prompt} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion.",
                param="max_tokens",
            )
        return context - prompt_tokens if max_tokens is None else max_tokens

    def run(self, job: GenerationJob) -> Completion | None:
        """Prepare and generate (in the worker thread); `None` when the job was cancelled before it started or
        its inputs were refused (the reason is on `job.prepared`)."""
        if job.cancel.is_set():
            job.fail(RequestError("The request was cancelled.", status=499))
            return None
        try:
            self._check_budget(job)
            inputs = self._inputs(job)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            max_new_tokens = self.check_context(prompt_tokens, job.request.max_tokens)
        except RequestError as error:
            job.fail(error)
            return None
        except ValueError as error:  # the processor's refusals
            job.fail(RequestError(str(error)[:_MAX_ERROR_CHARS]))
            return None
        except Exception as error:  # anything else: the handler answers 500 and logs it
            job.fail(error)
            return None
        job.ready(prompt_tokens)
        try:
            if job.request.seed is not None:
                torch.manual_seed(job.request.seed)
            output = self.model.generate(
                **inputs,
                generation_config=self._generation_config(job.request, max_new_tokens),
                streamer=job.streamer,
                stopping_criteria=StoppingCriteriaList([CancelGeneration(job.cancel)]),
                tokenizer=self.processor.tokenizer,
            )
        except BaseException:
            if job.streamer is not None:
                job.streamer.end()
            raise
        new_tokens = output[0, prompt_tokens:].tolist()
        if job.cancel.is_set():
            logger.info("Generation cancelled after %d tokens.", len(new_tokens))
            reason = "cancelled"
        elif new_tokens and new_tokens[-1] in self.eos_token_ids:
            reason = "stop"
        else:
            reason = "length" if len(new_tokens) >= max_new_tokens else "stop"  # a stop string ended it
        text = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return Completion(new_tokens, text, reason, prompt_tokens)

    def _check_budget(self, job: GenerationJob) -> None:
        """Refuse, before any pixel is decoded, a prompt whose text and visual tokens (from the images' headers)
        do not fit the context (videos count after processing: their size is only known then)."""
        processor = self.processor
        prompt = ESCAPED_RUN.sub(lambda run: unescape(run.group(0)), job.prompt)  # typed tokens count as one each
        text_tokens = len(processor.tokenizer(prompt)["input_ids"]) - job.prompt.count(processor.image_token)
        visual_tokens = sum(
            processor.image_processor.get_number_of_image_tokens(media.image.height, media.image.width)
            for media in job.images
        )
        self.check_context(text_tokens + visual_tokens, job.request.max_tokens, about=True)

    def _inputs(self, job: GenerationJob):
        images = [decode_image(media) for media in job.images]
        videos = [media.data for media in job.videos]
        inputs = self.processor(text=[job.prompt], images=images or None, videos=videos or None, return_tensors="pt")
        return inputs.to(self.model.device, self.model.dtype)

    def _generation_config(self, request: ChatRequest, max_new_tokens: int):
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = max_new_tokens
        greedy = request.temperature == 0 or (
            request.temperature is None and request.top_p is None and not config.do_sample
        )
        if greedy:
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        else:
            config.do_sample = True
            if request.temperature is not None:
                config.temperature = request.temperature
            if request.top_p is not None:
                config.top_p = request.top_p
        if request.logit_bias:
            config.sequence_bias = {(token,): bias for token, bias in request.logit_bias.items()}
        if request.stop:
            config.stop_strings = list(request.stop)
        return config


class GenerationQueue:
    """A single worker thread for the engine and at most `max_queue` jobs waiting for it."""

    def __init__(self, engine: GenerationEngine, max_queue: int):
        self.engine, self.max_queue = engine, max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepstack-generate")
        self._jobs: set[GenerationJob] = set()
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Jobs accepted and not finished (the running one included)."""
        return len(self._jobs)

    def check_capacity(self) -> None:
        """`RequestError` 503 when a new job would not be taken."""
        if len(self._jobs) > self.max_queue:
            raise RequestError(
                f"The server is busy ({self.max_queue} requests already wait for the model); retry later.", status=503
            )

    def submit(self, job: GenerationJob) -> asyncio.Future:
        """Queue `job`; its `Completion` (or `None`) once it has run. `RequestError` 503 when the queue is full."""
        with self._lock:
            self.check_capacity()
            self._jobs.add(job)
        future = asyncio.get_running_loop().run_in_executor(self._executor, self.engine.run, job)
        future.add_done_callback(lambda _: self._jobs.discard(job))
        return future

    def close(self) -> None:
        """Cancel every job (the running one stops at its next step) and let the worker thread end."""
        for job in list(self._jobs):
            job.cancel.set()
            job.fail(RequestError("The server is shutting down.", status=503))
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["CancelGeneration", "Completion", "GenerationEngine", "GenerationJob", "GenerationQueue"]
