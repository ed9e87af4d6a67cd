"""Locate an original-format DeepStack checkpoint (Hub id or directory) and index its tensors from headers only.

Accepted layouts: one `*.safetensors` file, or shards listed by `model.safetensors.index.json`. Pickled weights
(`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) are refused: the converter never unpickles anything.

The source is untrusted. Every file read comes from `SourceFolder.file`, which confines it to the folder: a name
is one plain file name (no `..`, no separators, no absolute path), and a symbolic link is followed only when its
target stays inside the folder, or, for a Hub cache snapshot (`models--org--name/snapshots/<rev>/`, whose files
link to `../../blobs/<sha>`), inside that cache repo folder. JSON files are bounded in size and nesting, and error
messages name the file, never its contents.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

try:  # huggingface_hub's HTTP client: httpx2 from huggingface_hub 2, httpx before
    import httpx2
except ImportError:  # pragma: no cover
    import httpx as httpx2

from .errors import ConversionError, parse_json
from .streaming_safetensors import TensorRecord, read_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_INDEX = "model.safetensors.index.json"
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.md"]
MAX_JSON_BYTES = 64 * 1024 * 1024
_PLAIN_NAME = re.compile(r"[^/\\\x00]+")


@dataclass(frozen=True)
class SourceFolder:
    """A source directory and the root its symbolic links may point into (the folder, or its Hub cache repo)."""

    directory: Path
    root: Path

    @classmethod
    def of(cls, directory: Path) -> SourceFolder:
        directory = directory.absolute()
        snapshots = directory.parent
        repo = snapshots.parent
        in_cache = snapshots.name == "snapshots" and repo.name.count("--") >= 2 and (repo / "blobs").is_dir()
        return cls(directory, (repo if in_cache else directory).resolve())

    def file(self, name: str, what: str) -> Path:
        """The confined path of file `name` of this folder; `ConversionError` when it could lead outside."""
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
            raise ConversionError(
                f"{what} {self.directory}: file name {name!r:.80} is not allowed; only plain file names inside the "
                "folder (no '..', '/' or absolute paths) are read."
            )
        path = self.directory / name
        if path.is_symlink() or self.directory.resolve() != self.root:
            target = path.resolve()
            if not target.is_relative_to(self.root):
                raise ConversionError(
                    f"{what} {self.directory}: {name} links outside the folder ({target}); the converter only reads "
                    f"files inside {self.root}."
                )
        return path

    def read_json(self, name: str, what: str, expect: type = dict):
        """A JSON file of the folder (at most `MAX_JSON_BYTES`), checked to be an `expect` (object by default)."""
        path = self.file(name, what)
        if not path.is_file():
            raise ConversionError(f"{what} {self.directory} has no {name}.")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ConversionError(f"{path} is {path.stat().st_size} bytes; JSON files are read up to {MAX_JSON_BYTES}.")
        value = parse_json(path.read_bytes(), str(path))
        if not isinstance(value, expect):
            raise ConversionError(f"{path} must hold a JSON {'object' if expect is dict else expect.__name__}, "
                                  f"not a {type(value).__name__}.")
        return value


@dataclass
class SourceCheckpoint:
    """An original checkpoint: its directory, parsed config.json and every tensor's location."""

    directory: Path
    config: dict
    tensors: dict[str, TensorRecord]
    weight_files: list[Path]
    from_hub: bool = False  # given as a Hub repo id (downloaded, or taken from the Hub cache)

    @property
    def largest_file_bytes(self) -> int:
        return max(path.stat().st_size for path in self.weight_files)


def looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def is_hub_source(source: str | Path) -> bool:
    """Whether `source` is read from the Hub: a repo id that names no existing local path."""
    return looks_like_hub_id(str(source)) and not Path(source).expanduser().exists()


class _TimeoutTransport(httpx2.BaseTransport):
    """Gives every request of the Hub client connect/read/write timeouts where the caller passed none."""

    def __init__(self, seconds: float):
        self.seconds, self.inner = seconds, httpx2.HTTPTransport()

    def handle_request(self, request):
        timeouts = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            key: self.seconds if timeouts.get(key) is None else timeouts[key] for key in ("connect", "read", "write", "pool")
        }
        return self.inner.handle_request(request)

    def close(self):
        self.inner.close()


@contextlib.contextmanager
def hub_timeout(seconds: float):
    """Within the block, every `huggingface_hub` request gives up after `seconds` without an answer.

    `huggingface_hub` sends some requests (e.g. `repo_info` inside `snapshot_download`) with no timeout at all, so
    a server that accepts the connection and never answers would hang the converter forever. The previous client
    factory is restored on exit.
    """
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory():
        default = _http.default_client_factory()
        return httpx2.Client(
            event_hooks=default.event_hooks, follow_redirects=True, transport=_TimeoutTransport(seconds)
        )

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)


def hub_timeout_seconds() -> float:
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def download_from_hub(repo_id: str, allow_patterns: list[str], what: str) -> Path:
    """`snapshot_download` restricted to `allow_patterns`, each request bounded by `HF_HUB_DOWNLOAD_TIMEOUT`."""
    from huggingface_hub import snapshot_download

    seconds = hub_timeout_seconds()
    try:
        with hub_timeout(seconds):
            return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, etag_timeout=seconds))
    except Exception as error:  # network, auth, missing repo
        chain, timed_out = error, False
        while chain is not None and not timed_out:
            timed_out, chain = isinstance(chain, httpx2.TimeoutException), chain.__cause__ or chain.__context__
        reason = (
            f"the Hub did not answer within {seconds:g} s (set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)"
            if timed_out
            else f"{type(error).__name__}: {str(error)[:300]}"
        )
        raise ConversionError(f"Could not download {what} {repo_id!r} from the Hub: {reason}.") from None


def resolve_directory(source: str | Path, allow_patterns: list[str], what: str, hub_only: bool = False) -> Path:
    """A local directory as is, else a Hub repo id downloaded with `allow_patterns`.

    With `hub_only` (a name that a downloaded file gave, not the user) `source` must be a Hub repo id and is only
    looked up on the Hub (or in its cache), never as a local path, even when a local folder has that name.
    """
    if hub_only:
        if not looks_like_hub_id(str(source)):
            raise ConversionError(f"{what} {str(source)!r:.80} is not a Hub repo id.")
        return download_from_hub(str(source), allow_patterns, what)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{what} {str(source)!r} is a file; expected a directory or a Hub repo id.")
    if looks_like_hub_id(str(source)):
        return download_from_hub(str(source), allow_patterns, what)
    raise ConversionError(f"{what} {str(source)!r} is neither an existing directory nor a Hub repo id.")


def refuse_pickles(directory: Path, what: str) -> None:
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise ConversionError(
        f"{what} {directory} has no safetensors weights"
        + (f" (only pickle files: {', '.join(pickles)})" if pickles else "")
        + ". The converter never unpickles files; convert them to safetensors first with a tool you trust."
    )


def index_weight_files(directory: Path, what: str) -> tuple[dict[str, TensorRecord], list[Path]]:
    """Every tensor of a safetensors checkpoint directory (index + shards, or one file), validated from headers."""
    folder = SourceFolder.of(directory)
    index_path = folder.file(SAFETENSORS_INDEX, what)
    if index_path.is_file():
        weight_map = folder.read_json(SAFETENSORS_INDEX, what).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConversionError(f"Index {index_path}: weight_map must be an object of file names.")
        files = sorted({folder.file(name, what) for name in weight_map.values()})
        for path in files:
            if not path.name.endswith(".safetensors"):
                raise ConversionError(f"Index {index_path} names {path.name!r:.80}; shards must be *.safetensors files.")
            if not path.is_file():
                raise ConversionError(f"Missing shard: {index_path} names {path.name}, which is not in {directory}.")
    else:
        files = sorted(folder.file(path.name, what) for path in directory.glob("*.safetensors"))
        if not files:
            refuse_pickles(directory, what)
        weight_map = None

    tensors: dict[str, TensorRecord] = {}
    for path in files:
        for name, record in read_header(path).items():
            if name in tensors:
                raise ConversionError(f"Tensor {name!r:.80} appears in both {tensors[name].file.name} and {path.name}.")
            tensors[name] = record
    if weight_map is not None:
        missing = sorted(name for name in weight_map if name not in tensors)
        if missing:
            raise ConversionError(
                f"{index_path} lists {len(missing)} tensor(s) absent from the shards' headers, e.g. {missing[0]!r:.80} "
                f"(expected in {weight_map[missing[0]]!r:.80})."
            )
    return tensors, files


def check_source_links(directory: Path, what: str) -> None:
    """Refuse any file the converter may read (CHECKPOINT_PATTERNS) that links outside the folder's root."""
    folder = SourceFolder.of(directory)
    for pattern in CHECKPOINT_PATTERNS + ["*.model"]:
        for path in directory.glob(pattern):
            folder.file(path.name, what)


def load_source_checkpoint(source: str | Path) -> SourceCheckpoint:
    """Resolve SOURCE and index its weights; raises `ConversionError` naming the file for any unreadable part."""
    directory = resolve_directory(source, CHECKPOINT_PATTERNS, "Checkpoint")
    check_source_links(directory, "Checkpoint")
    config = SourceFolder.of(directory).read_json("config.json", "Checkpoint")
    tensors, files = index_weight_files(directory, "Checkpoint")
    return SourceCheckpoint(directory, config, tensors, files, from_hub=is_hub_source(source))


__all__ = [
    "PICKLE_SUFFIXES",
    "SourceCheckpoint",
    "SourceFolder",
    "check_source_links",
    "download_from_hub",
    "hub_timeout",
    "index_weight_files",
    "is_hub_source",
    "load_source_checkpoint",
    "looks_like_hub_id",
    "resolve_directory",
]
