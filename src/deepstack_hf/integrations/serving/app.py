"""The FastAPI app of `deepstack-serve`: OpenAI-compatible chat completions for one DeepStack model.

Routes: `POST /v1/chat/completions` (streamed or not), `GET /v1/models` (the served model), `GET /health` (status
and queue). Nothing else: no route loads, unloads or resets anything.

A chat request goes through, in order:

1. the body, read with a size limit and a deadline, decoded as JSON (`--max-request-bytes`);
2. `chat_request.parse_chat_request`: every field taken as asked or refused by name (HTTP 400);
3. the prompt, rendered by the processor's chat template with the control tokens typed in messages escaped
   (`DeepStackProcessor.escape_control_tokens`): they stay text;
4. a queue place (HTTP 503 when `--max-queue` requests already wait);
5. the media, read at the same time in a thread pool (`media.MediaReader`: deadlines, byte limits, source rules),
   each image's header read there too and checked against the pixel limit;
6. the generation worker (`generation.GenerationQueue`), one request at a time: the visual-token budget from the
   headers against the context, then pixels decoded, processor, exact context check, `generate`; the answer as
   JSON or as server-sent events.

While it waits and while it streams, the handler watches its client: when it disconnects the job is cancelled
(skipped if it has not started; stopped at the next decoding step if it has).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import AsyncTextIteratorStreamer

from ...chat_escaping import control_token_pattern, escape_control_tokens
from .chat_request import ChatRequest, parse_chat_request
from .errors import RequestError
from .generation import Completion, GenerationEngine, GenerationJob, GenerationQueue
from .media import MediaReader
from .responses import Reply, StopStringFilter, event, usage
from .settings import ServerSettings

logger = logging.getLogger("deepstack_hf.integrations.serving")

_POLL_S = 0.1  # how often a waiting handler checks whether its client is still there


class ClientGone(Exception):
    """The client closed its connection; its job was cancelled."""


def context_length(model, settings: ServerSettings) -> int:
    """The context the server allows: `settings.max_model_len`, at most the model's `max_position_embeddings`."""
    limit = model.config.get_text_config().max_position_embeddings
    if settings.max_model_len is not None and settings.max_model_len > limit:
        raise ValueError(f"max_model_len {settings.max_model_len} is more than the model's context of {limit} tokens.")
    return settings.max_model_len or limit


def build_app(model, processor, settings: ServerSettings, model_names: set[str] | None = None) -> FastAPI:
    """The app serving `model` with `processor` under `settings`.

    Args:
        model: a loaded `DeepStackForConditionalGeneration` (in eval mode).
        processor: its `DeepStackProcessor`.
        settings: limits and policies.
        model_names: names a request's `model` may use (default: `settings.served_model_name` only).
    """
    engine = GenerationEngine(model, processor, context_length(model, settings))
    queue = GenerationQueue(engine, settings.max_queue)
    reader = MediaReader(settings)
    names = [settings.served_model_name, *sorted(set(model_names or ()) - {settings.served_model_name})]
    vocab_size = len(processor.tokenizer)
    control = control_token_pattern(processor.control_tokens)  # read once: the worker thread owns the tokenizer

    @asynccontextmanager
    async def lifespan(_app):
        yield
        queue.close()
        reader.close()

    app = FastAPI(title="deepstack-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def request_error(_request, error: RequestError):
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        body = RequestError(str(error.detail), status=error.status_code).body()
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_request, error: Exception):
        logger.exception("Internal error", exc_info=error)
        return JSONResponse(RequestError("Internal server error.", status=500).body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "pending": queue.pending}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.served_model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "deepstack-hf",
                    "max_model_len": engine.context_length,
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, settings)
        chat, prompt = await asyncio.to_thread(_parse_and_render, body, processor, settings, names, vocab_size, control)
        queue.check_capacity()
        media = await reader.read_all(chat.media)
        streamer = None
        if chat.stream:
            streamer = AsyncTextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        job = GenerationJob(
            chat,
            prompt,
            images=[item for item in media if item.reference.kind == "image"],
            videos=[item for item in media if item.reference.kind == "video"],
            streamer=streamer,
        )
        done = queue.submit(job)
        streaming = False
        try:
            prompt_tokens = await _watch(request, asyncio.wrap_future(job.prepared), job)
            reply = Reply(settings.served_model_name)
            if chat.stream:
                streaming = True
                return StreamingResponse(
                    _stream(request, job, done, reply, chat, prompt_tokens), media_type="text/event-stream"
                )
            completion: Completion = await _watch(request, done, job)
            stops = StopStringFilter(chat.stop)
            text = stops.feed(completion.text) + stops.flush()
            finish_reason = "stop" if stops.stopped else completion.finish_reason
            return reply.completion(text, finish_reason, prompt_tokens, len(completion.token_ids))
        except ClientGone:
            return Response(status_code=499)
        finally:
            if not streaming:
                job.cancel.set()  # no-op once finished; stops it if this handler ends any other way

    return app


async def _read_body(request: Request, settings: ServerSettings) -> bytes:
    """The request body, at most `max_request_bytes`, received within `request_read_timeout_s`."""
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(f"The request body is larger than the limit of {limit} bytes.", status=413)

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(f"The request body is larger than the limit of {limit} bytes.", status=413)
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), settings.request_read_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(f"The request body did not arrive within {settings.request_read_timeout_s:g} s.") from None


def _parse_and_render(body: bytes, processor, settings: ServerSettings, names: list[str], vocab_size: int, control):
    """The checked request and its prompt (off the event loop: a large body takes a while to decode and render)."""
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("The request body is not valid JSON.") from None
    chat = parse_chat_request(decoded, names, vocab_size)
    if len(chat.media) > settings.max_media_per_request:
        raise RequestError(
            f"The request has {len(chat.media)} images and videos; the limit is {settings.max_media_per_request}.",
            param="messages",
        )
    if chat.videos and getattr(processor, "video_processor", None) is None:
        raise RequestError("This model's processor takes no videos.", param=chat.videos[0].param)
    messages = escape_control_tokens(chat.messages, control)
    return chat, processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


async def _watch(request: Request, future: asyncio.Future, job: GenerationJob):
    """`await future`, cancelling `job` (and raising `ClientGone`) if the client disconnects meanwhile."""
    while True:
        done, _ = await asyncio.wait({future}, timeout=_POLL_S)
        if done:
            return future.result()
        if await request.is_disconnected():
            job.cancel.set()
            raise ClientGone


async def _stream(request, job: GenerationJob, done, reply: Reply, chat: ChatRequest, prompt_tokens: int):
    """Server-sent events of a streamed answer; the job is cancelled if the client goes away."""
    stops = StopStringFilter(chat.stop)
    pieces = job.streamer.__aiter__()
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while not stops.stopped:
            piece = asyncio.ensure_future(pieces.__anext__())
            try:
                text = await _watch(request, piece, job)
            except StopAsyncIteration:
                break
            finally:
                piece.cancel()  # no-op once it has its text
            if out := stops.feed(text):
                yield reply.chunk({"content": out})
        if stops.stopped:
            job.cancel.set()  # the stop string is out: no need for the rest
        elif tail := stops.flush():
            yield reply.chunk({"content": tail})
        try:
            completion: Completion | None = await _watch(request, done, job)
        except ClientGone:
            return
        except Exception:
            logger.exception("Generation failed")
            yield event({"error": RequestError("Internal server error.", status=500).body()["error"]})
            yield event("[DONE]")
            return
        finish_reason = "stop" if stops.stopped or completion.finish_reason == "cancelled" else completion.finish_reason
        yield reply.chunk({}, finish_reason=finish_reason)
        if chat.include_usage:
            yield reply.chunk(usage_counts=usage(prompt_tokens, len(completion.token_ids)))
        yield event("[DONE]")
    except ClientGone:
        return
    finally:
        job.cancel.set()


__all__ = ["build_app", "context_length"]
