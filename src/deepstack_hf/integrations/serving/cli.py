"""`deepstack-serve MODEL`: an OpenAI-compatible chat-completions server for one DeepStack model.

    deepstack-serve deepstack-hf/deepstack-l-vicuna-7b [--host 127.0.0.1] [--port 8000] [--device auto]
        [--allowed-local-media-path DIR] [--allowed-media-domains example.com ...] [--max-queue 16] ...

MODEL is a converted repo (Hub id or folder), with or without the module files the converter adds: the server runs
this package's classes. `deepstack-serve --help` lists every limit with its default; docs/serving.md says what
they guard against. SIGTERM or Ctrl-C stops the server cleanly: no new connections, requests in flight get
`--shutdown-timeout` seconds to finish, then their generations are stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .settings import MIB, ServerSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def load_model(model: str, device: str = "auto", dtype: str = "auto"):
    """The model (eval mode) and processor of a converted repo, with the package's classes."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import deepstack_hf  # noqa: F401  (registers the DeepStack classes with the Auto classes)

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    device_map = None if device == "cpu" else device
    loaded = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype, device_map=device_map)
    return loaded.eval(), AutoProcessor.from_pretrained(model)


def build_parser() -> argparse.ArgumentParser:
    defaults = ServerSettings(served_model_name="")
    parser = argparse.ArgumentParser(
        prog="deepstack-serve", description="OpenAI-compatible chat completions for a DeepStack model."
    )
    parser.add_argument("model", help="converted DeepStack repo: Hub id or local folder")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"listen address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})")
    parser.add_argument("--device", default="auto", help="device map: auto, cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float16, bfloat16 or float32")
    parser.add_argument("--served-model-name", help="the name clients use (default: MODEL as given)")
    parser.add_argument("--max-model-len", type=int, help="context in tokens, prompt + answer (default: the model's)")
    media = parser.add_argument_group("media")
    media.add_argument(
        "--allowed-local-media-path", type=Path,
        help="folder that file:// image and video URLs may read from (default: local files refused)",
    )  # fmt: skip
    media.add_argument(
        "--allowed-media-domains", nargs="+", metavar="DOMAIN",
        help="hosts http(s) media may come from, subdomains included (default: any host)",
    )  # fmt: skip
    media.add_argument(
        "--media-follow-redirects", action="store_true", help="follow HTTP redirects of media URLs (default: refused)"
    )
    media.add_argument(
        "--media-timeout", type=float, default=defaults.media_timeout_s,
        help=f"seconds to read one image or video, download included (default {defaults.media_timeout_s:g})",
    )  # fmt: skip
    media.add_argument(
        "--max-media-mb", type=float, default=defaults.max_media_bytes / MIB,
        help=f"MiB per image or video (default {defaults.max_media_bytes / MIB:g})",
    )  # fmt: skip
    media.add_argument(
        "--max-image-pixels", type=int, default=defaults.max_image_pixels,
        help=f"pixels (width x height) per image, checked before decoding (default {defaults.max_image_pixels})",
    )  # fmt: skip
    media.add_argument(
        "--max-media-per-request", type=int, default=defaults.max_media_per_request,
        help=f"images and videos per request (default {defaults.max_media_per_request})",
    )  # fmt: skip
    load = parser.add_argument_group("load")
    load.add_argument(
        "--max-queue", type=int, default=defaults.max_queue,
        help=f"requests that may wait while one generates; more get HTTP 503 (default {defaults.max_queue})",
    )  # fmt: skip
    load.add_argument(
        "--max-connections", type=int, default=256,
        help="open connections; more get HTTP 503 from Uvicorn (default 256)",
    )  # fmt: skip
    load.add_argument(
        "--max-request-mb", type=float, default=defaults.max_request_bytes / MIB,
        help=f"MiB per request body (default {defaults.max_request_bytes / MIB:g})",
    )  # fmt: skip
    load.add_argument(
        "--request-timeout", type=float, default=defaults.request_read_timeout_s,
        help=f"seconds a client has to send its request body (default {defaults.request_read_timeout_s:g})",
    )  # fmt: skip
    load.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds requests in flight get to finish on SIGTERM before they are stopped (default 10)",
    )
    parser.add_argument("--log-level", default="warning", help="log level (default warning)")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        served_model_name=args.served_model_name or args.model,
        max_model_len=args.max_model_len,
        media_timeout_s=args.media_timeout,
        max_media_bytes=int(args.max_media_mb * MIB),
        max_image_pixels=args.max_image_pixels,
        max_media_per_request=args.max_media_per_request,
        follow_redirects=args.media_follow_redirects,
        allowed_media_domains=tuple(args.allowed_media_domains) if args.allowed_media_domains else None,
        allowed_local_media_path=args.allowed_local_media_path,
        max_request_bytes=int(args.max_request_mb * MIB),
        request_read_timeout_s=args.request_timeout,
        max_queue=args.max_queue,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from .app import build_app
    except ImportError as error:
        print(f"error: serving needs FastAPI and Uvicorn (the package's `serving` extra): {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
        app = build_app(model, processor, settings, model_names={args.model})
    except (OSError, ValueError) as error:
        print(f"error: cannot serve {args.model}: {error}", file=sys.stderr)
        return 1
    if settings.allowed_media_domains is None:
        logging.getLogger("deepstack_hf.integrations.serving").warning(
            "Media URLs may point at any host, loopback and private addresses included; restrict them with "
            "--allowed-media-domains when clients are not trusted."
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        limit_concurrency=args.max_connections,
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
