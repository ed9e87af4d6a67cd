"""Locate an original-format DeepStack checkpoint (Hub id or directory) and index its tensors from headers only.

Accepted layouts: one `*.safetensors` file, or shards listed by `model.safetensors.index.json`. Pickled weights
(`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) are refused: the converter never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError
from .streaming_safetensors import TensorRecord, read_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_INDEX = "model.safetensors.index.json"
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.md"]


@dataclass
class SourceCheckpoint:
    """An original checkpoint: its directory, parsed config.json and every tensor's location."""

    directory: Path
    config: dict
    tensors: dict[str, TensorRecord]
    weight_files: list[Path]

    @property
    def largest_file_bytes(self) -> int:
        return max(path.stat().st_size for path in self.weight_files)


def looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def download_from_hub(repo_id: str, allow_patterns: list[str], what: str) -> Path:
    """`snapshot_download` restricted to `allow_patterns` (never run by the tests: they have no network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as error:  # network, auth, missing repo
        raise ConversionError(f"Could not download {what} {repo_id!r} from the Hub: {error}") from error


def resolve_directory(source: str | Path, allow_patterns: list[str], what: str) -> Path:
    """A local directory as is, else a Hub repo id downloaded with `allow_patterns`."""
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
    index_path = directory / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as error:
            raise ConversionError(f"Index {index_path} does not parse: {error}") from None
        files = sorted({directory / name for name in weight_map.values()})
        for path in files:
            if not path.is_file():
                raise ConversionError(f"Missing shard: {index_path} names {path.name}, which is not in {directory}.")
    else:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            refuse_pickles(directory, what)
        weight_map = None

    tensors: dict[str, TensorRecord] = {}
    for path in files:
        for name, record in read_header(path).items():
            if name in tensors:
                raise ConversionError(f"Tensor {name!r} appears in both {tensors[name].file.name} and {path.name}.")
            tensors[name] = record
    if weight_map is not None:
        missing = sorted(name for name in weight_map if name not in tensors)
        if missing:
            raise ConversionError(
                f"{index_path} lists {len(missing)} tensor(s) absent from the shards' headers, e.g. {missing[0]!r} "
                f"(expected in {weight_map[missing[0]]})."
            )
    return tensors, files


def load_source_checkpoint(source: str | Path) -> SourceCheckpoint:
    """Resolve SOURCE and index its weights; raises `ConversionError` naming the file for any unreadable part."""
    directory = resolve_directory(source, CHECKPOINT_PATTERNS, "Checkpoint")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"Checkpoint {directory} has no config.json.")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ConversionError(f"{config_path} does not parse: {error}") from None
    tensors, files = index_weight_files(directory, "Checkpoint")
    return SourceCheckpoint(directory=directory, config=config, tensors=tensors, weight_files=files)


__all__ = [
    "PICKLE_SUFFIXES",
    "SourceCheckpoint",
    "index_weight_files",
    "load_source_checkpoint",
    "looks_like_hub_id",
    "resolve_directory",
]
