"""`deepstack-serve MODEL`: `transformers serve`'s OpenAI-compatible app, pinned to one DeepStack model.

    deepstack-serve deepstack-hf/deepstack-l-vicuna-7b [--host 127.0.0.1] [--port 8000] [--device auto] [--dtype auto]

MODEL is a converted repo, with or without the module files the converter adds: the server always runs this
package's classes (Transformers prefers classes registered in the process over a repo's code).

Endpoints (Transformers' `build_server`): POST /v1/chat/completions (streaming and not; images as `image_url`:
http(s) URL, `data:image/...;base64,` URI or a path on the server), POST /v1/responses, GET /v1/models, GET /health.
"""

from __future__ import annotations

import argparse
import sys

from transformers.utils.import_utils import is_serve_available

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def build_app(model: str, device: str = "auto", dtype: str = "auto"):
    """The FastAPI app of `transformers serve` for `model` (loaded now), with DeepStack's manager and handler."""
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    from .chat_completion import DeepStackChatCompletionHandler
    from .model_manager import DeepStackModelManager

    manager = DeepStackModelManager(device=device, dtype=dtype, force_model=model)
    state = GenerationState()
    return build_server(
        manager,
        DeepStackChatCompletionHandler(model_manager=manager, generation_state=state),
        completion_handler=CompletionHandler(model_manager=manager, generation_state=state),
        response_handler=ResponseHandler(model_manager=manager, generation_state=state),
        transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(model_manager=manager, generation_state=state),
        generation_state=state,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepstack-serve", description="OpenAI-compatible chat completions for a DeepStack model."
    )
    parser.add_argument("model", help="converted DeepStack repo: Hub id or local folder")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"listen address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})")
    parser.add_argument("--device", default="auto", help="device map: auto, cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float16, bfloat16 or float32")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not is_serve_available():
        print("error: serving needs FastAPI, Uvicorn and openai: the package's `serving` extra", file=sys.stderr)
        return 2
    import uvicorn

    try:
        app = build_app(args.model, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as error:
        print(f"error: cannot load {args.model}: {error}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
