"""The bounded-memory safetensors writer: exact bytes, dtype casts, appended mean rows, shard planning."""

import pytest
import torch
from safetensors import safe_open

from deepstack_hf.conversion.convert_deepstack_to_hf import parse_size
from deepstack_hf.conversion.errors import ConversionError
from deepstack_hf.conversion.streaming_safetensors import (
    FileReaders,
    PlannedTensor,
    plan_shards,
    read_header,
    write_index,
    write_shard,
    write_tensors,
)


@pytest.mark.parametrize("target", ["F16", "BF16", "F32"])
def test_chunked_copy_matches_safetensors(tmp_path, target):
    generator = torch.Generator().manual_seed(0)
    source = {
        "a": torch.randn(37, 11, generator=generator, dtype=torch.float32),
        "b": torch.randn(5, generator=generator).to(torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "ids": torch.arange(7, dtype=torch.int64),
    }
    write_tensors(tmp_path / "in.safetensors", source)
    records = read_header(tmp_path / "in.safetensors")
    planned = [
        PlannedTensor("x.a", target, records["a"], extra_rows=3),
        PlannedTensor("x.b", target, records["b"]),
        PlannedTensor("x.scalar", target, records["scalar"]),
        PlannedTensor("x.ids", "I64", records["ids"]),
    ]
    shards = plan_shards(planned, max_shard_bytes=10**9)
    with FileReaders() as readers:
        write_shard(shards[0], tmp_path / shards[0].filename, readers, chunk_bytes=100)  # many tiny chunks
    dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[target]
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        a = handle.get_tensor("x.a")
        assert a.dtype == dtype and a.shape == (40, 11)
        assert torch.equal(a[:37], source["a"].to(dtype))
        assert torch.equal(a[37:], source["a"].double().mean(0).to(dtype).expand(3, -1))
        assert torch.equal(handle.get_tensor("x.b"), source["b"].to(dtype))
        assert torch.equal(handle.get_tensor("x.scalar"), source["scalar"].to(dtype))
        assert torch.equal(handle.get_tensor("x.ids"), source["ids"])
        assert handle.metadata() == {"format": "pt"}


def test_plan_shards_and_index(tmp_path):
    write_tensors(tmp_path / "in.safetensors", {f"t{i}": torch.zeros(100) for i in range(5)})
    records = read_header(tmp_path / "in.safetensors")
    planned = [PlannedTensor(name, "F32", record) for name, record in records.items()]
    shards = plan_shards(planned, max_shard_bytes=900)
    assert [len(s.tensors) for s in shards] == [2, 2, 1]
    assert [s.filename for s in shards][0] == "model-00001-of-00003.safetensors"
    write_index(shards, tmp_path / "model.safetensors.index.json")
    assert "t4" in (tmp_path / "model.safetensors.index.json").read_text()


def test_header_checks(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(ConversionError, match="Truncated.*bad.safetensors"):
        read_header(path)
    with pytest.raises(ConversionError, match="Missing.*nothere.safetensors"):
        read_header(tmp_path / "nothere.safetensors")


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 5 * 10**8
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(123) == 123
    with pytest.raises(ConversionError):
        parse_size("lots")
