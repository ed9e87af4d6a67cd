"""Property-based checks of the converter's validation of open-ended inputs: safetensors headers and configs.

Whatever the bytes or values, the result is either accepted input that honours every bound, or a
`ConversionError` whose message is one short line: never another exception, never a hang, never an echo of the
file beyond a short `repr` of one header value.
"""

import json
import math
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepstack_hf.conversion import ConversionError
from deepstack_hf.conversion.config_bounds import ORIGINAL_FIELDS, check_original_config
from deepstack_hf.conversion.streaming_safetensors import MAX_DIM, MAX_RANK, TORCH_DTYPES, itemsize, read_header

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)

dims = st.one_of(st.integers(-3, 6), st.integers(2**40 - 1, 2**41), st.floats(), st.booleans(), st.text(max_size=3))
entries = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(sorted(TORCH_DTYPES)), st.text(max_size=5), json_scalars),
        "shape": st.one_of(st.lists(dims, max_size=10), json_values),
        "data_offsets": st.one_of(st.lists(st.integers(-4, 400), min_size=2, max_size=2), json_values),
    },
    optional={"extra": json_values},
)
headers = st.dictionaries(st.text(min_size=1, max_size=20), st.one_of(entries, json_values), max_size=5)


def write_file(path, header_bytes: bytes, data_size: int, declared_length=None):
    length = len(header_bytes) if declared_length is None else declared_length
    path.write_bytes(struct.pack("<Q", length) + header_bytes + bytes(data_size))


def check_result(path, data_size):
    try:
        records = read_header(path)
    except ConversionError as error:
        message = str(error)
        assert "\n" not in message and len(message) < 400 + len(str(path)), message
        return
    # Accepted: every record honours every bound and fits in the file, without overlaps.
    spans = []
    for record in records.values():
        assert record.dtype in TORCH_DTYPES and len(record.shape) <= MAX_RANK
        assert all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in record.shape)
        assert record.nbytes == math.prod(record.shape) * itemsize(record.dtype)
        assert record.offset + record.nbytes <= path.stat().st_size
        spans.append((record.offset, record.offset + record.nbytes))
    spans.sort()
    assert all(end <= begin for (_, end), (begin, _) in zip(spans, spans[1:]))


@SETTINGS
@given(header=headers, data_size=st.integers(0, 256))
def test_any_header_is_accepted_within_bounds_or_refused_in_one_line(tmp_path, header, data_size):
    path = tmp_path / "h.safetensors"
    write_file(path, json.dumps(header).encode(), data_size)
    check_result(path, data_size)


@SETTINGS
@given(raw=st.binary(max_size=64), declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)), data_size=st.integers(0, 64))
def test_any_bytes_are_refused_in_one_line_without_echo(tmp_path, raw, declared, data_size):
    path = tmp_path / "b.safetensors"
    write_file(path, raw, data_size, declared)
    check_result(path, data_size)


def test_pathological_headers(tmp_path):
    cases = {
        "deep nesting": (b"[" * 50000 + b"]" * 50000, "JSON nested too deeply"),
        "1e400 dimension": (b'{"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}', "shape=[inf]"),
        "duplicate key": (b'{"w": 1, "w": 2}', "duplicate key 'w'"),
        "rank 9": (json.dumps({"w": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}).encode(),
                   f"allowed: a list of at most {MAX_RANK} integers"),
        "bool dimension": (json.dumps({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}).encode(),
                           "shape=[True]"),
        "overlap": (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), "overlap"),
        "metadata not strings": (b'{"__metadata__": {"format": 1}}', "__metadata__ must be an object of strings"),
    }
    for name, (header, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        write_file(path, header, 16)
        try:
            read_header(path)
        except ConversionError as error:
            assert message in str(error), (name, str(error))
        else:
            raise AssertionError(f"{name} was accepted")


# A base config that passes, then one field replaced by an arbitrary JSON value.
BASE = {"model_type": "deepstack_llama", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 5, "vocab_size": 320, "num_crops": 4, "mm_projector_type": "mlp2x_gelu"}


@SETTINGS
@given(field=st.sampled_from(sorted(ORIGINAL_FIELDS)), value=json_values)
def test_any_config_value_is_within_bounds_or_refused_naming_the_field(field, value):
    config = dict(BASE, **{field: value})
    try:
        check_original_config(config)
    except ConversionError as error:
        message = str(error)
        assert "\n" not in message and len(message) < 300 and message.startswith("config.json: "), message
        return
    kind, low, high = ORIGINAL_FIELDS[field]
    if value is None:
        return
    if kind == "int":
        assert isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    elif kind == "float":
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        assert low <= value <= high
    elif kind == "bool":
        assert isinstance(value, bool)
    elif kind == "str":
        assert isinstance(value, str) and len(value) <= high
