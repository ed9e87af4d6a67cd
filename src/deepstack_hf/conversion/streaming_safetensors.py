"""Safetensors read and write by file offsets, one bounded chunk at a time.

The converter never materialises a state dict. It parses every input file's *header* only, plans the output
(names, dtypes, shapes, byte offsets), writes each output shard's header up front and then streams tensor
bytes from input offsets to output offsets in chunks of at most `CHUNK_BYTES`, converting dtype on the way.
Plain `read()`/`write()` calls are used instead of `mmap`, so the pages of a multi-GB shard never count towards
the process's resident memory: peak RSS is the Python/torch baseline plus a couple of chunks.

File format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data buffer;
offsets are relative to the buffer.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConversionError, parse_json, short_repr

CHUNK_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_RANK = 8  # no DeepStack tensor has more than 4 dimensions
MAX_DIM = 2**40  # bounds every dimension before any arithmetic on it

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def itemsize(dtype: str) -> int:
    return torch.empty((), dtype=TORCH_DTYPES[dtype]).element_size()


@dataclass(frozen=True)
class TensorRecord:
    """Where one tensor's bytes live in a safetensors file (absolute byte offset)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate key {short_repr(duplicate)}")
    return dict(pairs)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(entry) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry; `ValueError` naming the field and its allowed range."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError("entry must be an object with exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype={short_repr(dtype)}, allowed: {', '.join(TORCH_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise ValueError(f"shape={short_repr(shape)}, allowed: a list of at most {MAX_RANK} integers in [0, {MAX_DIM}]")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) for x in offsets)
            and 0 <= offsets[0] <= offsets[1] <= MAX_DIM**2):
        raise ValueError(f"data_offsets={short_repr(offsets)}, allowed: [begin, end], integers, 0 <= begin <= end")
    return dtype, tuple(shape), offsets[0], offsets[1]


def read_header(path: str | os.PathLike) -> dict[str, TensorRecord]:
    """Parse and validate a safetensors header without reading any tensor data.

    Every field is checked for type and range before anything is allocated: header length, JSON (no duplicate
    keys, bounded nesting), `__metadata__` (string to string), each tensor's dtype, shape (at most `MAX_RANK`
    integer dims in [0, `MAX_DIM`]) and data offsets (inside the file, matching dtype and shape, not overlapping).
    Raises `ConversionError` naming the file and the field; messages never quote more than a short `repr` of a
    header value, and nothing of a file that is not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Missing safetensors file: {path}")
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if header_len is None or not 2 <= header_len <= min(MAX_HEADER_BYTES, file_size - 8):
            raise ConversionError(
                f"Truncated or not a safetensors file {path} ({file_size} bytes): its first 8 bytes are not a header "
                f"length in [2, {min(MAX_HEADER_BYTES, max(file_size - 8, 0))}]."
            )
        raw = handle.read(header_len)
    header = parse_json(raw, f"Safetensors header of {path}", object_pairs_hook=_unique_keys)
    if not isinstance(header, dict):
        raise ConversionError(f"Safetensors header of {path} does not parse: the header is not a JSON object.")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ConversionError(f"Safetensors header of {path}: __metadata__ must be an object of strings.")
    data_start = 8 + header_len
    records: dict[str, TensorRecord] = {}
    for name, entry in header.items():
        try:
            dtype, shape, begin, end = _check_entry(entry)
        except ValueError as error:
            raise ConversionError(f"Safetensors header of {path}, tensor {short_repr(name)}: {error}.") from None
        nbytes = math.prod(shape) * itemsize(dtype)
        if end - begin != nbytes:
            raise ConversionError(
                f"Corrupt safetensors header in {path}: tensor {short_repr(name)} spans {end - begin} bytes but its dtype "
                f"and shape need {nbytes}."
            )
        if data_start + end > file_size:
            raise ConversionError(
                f"Truncated safetensors file {path}: tensor {short_repr(name)} ends at byte {data_start + end} but the "
                f"file has {file_size} bytes."
            )
        records[name] = TensorRecord(name, dtype, shape, path, data_start + begin, nbytes)
    spans = sorted((record.offset, record.offset + record.nbytes, name) for name, record in records.items())
    for (_, first_end, first), (second_begin, _, second) in zip(spans, spans[1:]):
        if second_begin < first_end:
            raise ConversionError(
                f"Corrupt safetensors header in {path}: tensors {short_repr(first)} and {short_repr(second)} overlap."
            )
    return records


class FileReaders:
    """Open input files on demand (one handle per file) and read byte ranges with positional reads."""

    def __init__(self):
        self._handles: dict[Path, int] = {}

    def read_into(self, path: Path, offset: int, buffer: memoryview) -> None:
        fd = self._handles.get(path)
        if fd is None:
            fd = self._handles[path] = os.open(path, os.O_RDONLY)
        done = 0
        while done < len(buffer):
            count = os.preadv(fd, [buffer[done:]], offset + done)
            if count <= 0:
                raise ConversionError(f"Truncated safetensors file {path}: short read at byte {offset + done}.")
            done += count

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_tensor(record: TensorRecord, readers: FileReaders | None = None) -> torch.Tensor:
    """Read one whole tensor (for small tensors and the independent reference implementation)."""
    own = readers is None
    readers = readers or FileReaders()
    try:
        buffer = bytearray(record.nbytes)
        if record.nbytes:
            readers.read_into(record.file, record.offset, memoryview(buffer))
        if not record.nbytes:
            return torch.empty(record.shape, dtype=TORCH_DTYPES[record.dtype])
        return torch.frombuffer(buffer, dtype=TORCH_DTYPES[record.dtype]).reshape(record.shape)
    finally:
        if own:
            readers.close()


def _row_chunks(record: TensorRecord, chunk_bytes: int) -> Iterable[tuple[int, int]]:
    """(first_row, row_count) slices of a tensor's leading dimension, each at most `chunk_bytes` (one row minimum)."""
    rows = record.shape[0] if record.shape else 1
    row_bytes = record.nbytes // rows if rows else 0
    per_chunk = max(1, chunk_bytes // row_bytes) if row_bytes else rows
    for first in range(0, rows, per_chunk):
        yield first, min(per_chunk, rows - first)


def iter_tensor_chunks(
    record: TensorRecord, readers: FileReaders, chunk_bytes: int = CHUNK_BYTES
) -> Iterable[torch.Tensor]:
    """Yield the tensor as consecutive row blocks (leading dimension), each read straight from its file offset."""
    dtype = TORCH_DTYPES[record.dtype]
    rows = record.shape[0] if record.shape else 1
    row_bytes = record.nbytes // rows if rows else 0
    trailing = record.shape[1:] if record.shape else ()
    for first, count in _row_chunks(record, chunk_bytes):
        buffer = bytearray(count * row_bytes)
        if buffer:
            readers.read_into(record.file, record.offset + first * row_bytes, memoryview(buffer))
            block = torch.frombuffer(buffer, dtype=dtype)
        else:
            block = torch.empty(0, dtype=dtype)
        yield block.reshape((count, *trailing)) if record.shape else block.reshape(())


@dataclass
class PlannedTensor:
    """One output tensor: taken from `source`, cast to `dtype`, with `extra_rows` rows appended.

    Appended rows (vocabulary growth) are all equal to the mean of the source rows, computed in float64.
    """

    name: str
    dtype: str
    source: TensorRecord
    extra_rows: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        if not self.extra_rows:
            return self.source.shape
        return (self.source.shape[0] + self.extra_rows, *self.source.shape[1:])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


@dataclass
class PlannedShard:
    filename: str
    tensors: list[PlannedTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)


def plan_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[PlannedShard]:
    """Greedy in-order packing into shards of at most `max_shard_bytes` (a bigger tensor gets a shard of its own).

    File names follow `save_pretrained`: `model.safetensors` for one shard, else `model-0000i-of-0000n.safetensors`.
    """
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    if len(groups) == 1:
        return [PlannedShard("model.safetensors", groups[0])]
    total = len(groups)
    return [PlannedShard(f"model-{i + 1:05d}-of-{total:05d}.safetensors", group) for i, group in enumerate(groups)]


def shard_header(shard: PlannedShard, metadata: dict[str, str] | None = None) -> bytes:
    """The complete header (length prefix + JSON padded with spaces to 8 bytes) of an output shard."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for tensor in shard.tensors:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


FP16_OVERFLOW = 65520.0  # the smallest magnitude float16 rounds to infinity (65504 is its largest finite value)
FP16_MAX = 65504.0
UNDERFLOW_LIMIT = 1e-3  # a tensor may lose at most this fraction of its non-zero values to float16 underflow


@dataclass
class CastReport:
    """What casting to float16 does to each tensor: finite values that overflow, non-zero values that flush to 0.

    With `clamp`, overflowing values are clamped to +-65504 (and counted) instead of becoming infinite.
    `refusal()` names the tensors that make the cast unsafe: any overflow without `clamp`, or more than
    `UNDERFLOW_LIMIT` of a tensor's non-zero values flushed to zero.
    """

    clamp: bool = False
    overflow: dict[str, int] = field(default_factory=dict)
    underflow: dict[str, int] = field(default_factory=dict)
    nonzero: dict[str, int] = field(default_factory=dict)

    def cast(self, name: str, block: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if dtype != torch.float16 or block.dtype == torch.float16 or not block.is_floating_point():
            return block.to(dtype)
        too_big = block.isfinite() & (block.abs() >= FP16_OVERFLOW)
        if self.clamp and bool(too_big.any()):  # clamp in fp32: +-65504 rounds up to 65536 in bfloat16
            wide = block.to(torch.float32)
            block = torch.where(too_big, wide.clamp(-FP16_MAX, FP16_MAX), wide)
        out = block.to(dtype)
        for counts, value in (
            (self.overflow, int(too_big.sum())),
            (self.underflow, int(((out == 0) & (block != 0)).sum())),
            (self.nonzero, int((block != 0).sum())),
        ):
            counts[name] = counts.get(name, 0) + value
        return out

    def _worst(self, counts: dict[str, int], keep) -> str:
        names = [name for name, count in counts.items() if count and keep(name)]
        shown = ", ".join(f"{name} ({counts[name]} values)" for name in names[:5])
        return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    def refusal(self) -> str | None:
        """Why the float16 output must not be published, or `None`."""
        overflow = "" if self.clamp else self._worst(self.overflow, lambda name: True)
        underflow = self._worst(
            self.underflow, lambda name: self.underflow[name] > UNDERFLOW_LIMIT * max(self.nonzero[name], 1)
        )
        if not overflow and (self.clamp or not underflow):
            return None
        parts = [f"values beyond +-{FP16_MAX:g} that would become inf in {overflow}"] if overflow else []
        parts += [f"more than {UNDERFLOW_LIMIT:.1%} of the non-zero values flush to 0 in {underflow}"] if underflow else []
        return (
            "Converting to float16 is unsafe: " + "; ".join(parts) + ". Convert to bfloat16 or float32, or pass "
            "--clamp-fp16 to clamp to +-65504 (the clamped and flushed counts are reported)."
        )

    def summary(self) -> str:
        clamped = sum(self.overflow.values()) if self.clamp else 0
        flushed = sum(self.underflow.values())
        return f"float16 cast: {clamped} values clamped to +-{FP16_MAX:g}, {flushed} tiny values flushed to 0"


def _write_block(handle, block: torch.Tensor) -> int:
    block = block.contiguous()
    raw = block.reshape(-1).view(torch.uint8).numpy()
    handle.write(memoryview(raw))
    return raw.nbytes


def write_planned_tensor(
    tensor: PlannedTensor,
    handle,
    readers: FileReaders,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    report: CastReport | None = None,
) -> int:
    """Stream one planned tensor into the open output `handle`; returns the number of bytes written.

    Casts go through `report` (a fresh `CastReport` when `None`), which counts float16 overflow and underflow.
    """
    source = tensor.source
    target_dtype = TORCH_DTYPES[tensor.dtype]
    report = report if report is not None else CastReport()
    written = 0
    row_mean = None
    if tensor.extra_rows:
        total = torch.zeros(source.shape[1:], dtype=torch.float64)
        for block in iter_tensor_chunks(source, readers, chunk_bytes):
            total += block.to(torch.float64).sum(dim=0)
        row_mean = report.cast(tensor.name, total / source.shape[0], target_dtype)
    for block in iter_tensor_chunks(source, readers, chunk_bytes):
        if block.dtype != target_dtype:
            block = report.cast(tensor.name, block, target_dtype)
        count = _write_block(handle, block)
        written += count
        if progress:
            progress(count)
        del block
    if row_mean is not None:
        extra = row_mean.unsqueeze(0).expand(tensor.extra_rows, *row_mean.shape)
        count = _write_block(handle, extra)
        written += count
        if progress:
            progress(count)
    if written != tensor.nbytes:  # pragma: no cover - guards the planner against itself
        raise ConversionError(f"Internal error: wrote {written} bytes for {tensor.name}, planned {tensor.nbytes}.")
    return written


def write_shard(
    shard: PlannedShard,
    path: Path,
    readers: FileReaders,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    report: CastReport | None = None,
) -> None:
    """Write one output shard: header first, then every tensor streamed in order (casts counted in `report`)."""
    with open(path, "wb") as handle:
        handle.write(shard_header(shard))
        for tensor in shard.tensors:
            write_planned_tensor(tensor, handle, readers, chunk_bytes, progress, report)


def write_index(shards: list[PlannedShard], path: Path) -> None:
    """`model.safetensors.index.json` for a sharded output (`total_size` in bytes, `weight_map`)."""
    index = {
        "metadata": {"total_size": sum(shard.nbytes for shard in shards)},
        "weight_map": {tensor.name: shard.filename for shard in shards for tensor in shard.tensors},
    }
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """Write a small in-memory state dict as one safetensors file (used by the synthetic checkpoint builder)."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    blobs = []
    for name, value in tensors.items():
        value = value.detach().contiguous().cpu()
        nbytes = value.numel() * value.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        blobs.append(value)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for value in blobs:
            if value.numel():
                _write_block(handle, value)


__all__ = [
    "CHUNK_BYTES",
    "CastReport",
    "FileReaders",
    "PlannedShard",
    "PlannedTensor",
    "TensorRecord",
    "TORCH_DTYPES",
    "SAFETENSORS_DTYPES",
    "iter_tensor_chunks",
    "plan_shards",
    "read_header",
    "read_tensor",
    "shard_header",
    "write_index",
    "write_shard",
    "write_tensors",
]
