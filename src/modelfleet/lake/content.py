"""What "the same content" means for a dataset, and the hash that names its versions.

Two tables hold the same content when, after :func:`normalise`, they have the same column names with
the same types and the same values, row by row, in the same row order. Column order does not count (a
JSONL file's key order is incidental, and a CSV with the same columns swapped holds the same data); row
order does (it decides train/test splits). So the same rows read from a CSV file and from a JSONL file
are one version when their values infer to the same types: ``1`` is an integer in both, but an empty
CSV cell in a text column is the empty string while a key missing from a JSONL line is null.

The hash is over an encoding of our own, not over Parquet or Arrow IPC bytes: those change with the
writer's version and with how the reader happened to chunk the file, and a version name must not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelfleet.lake._deps import pa, pc

ENCODING = b"modelfleet-dataset-content/1\n"
HASH_BATCH_ROWS = 65_536


def normalise(table: Any) -> Any:
    """The table with canonical column types and no schema metadata; the form the lake stores.

    Integers widen to int64 (uint64 stays, it may not fit), floats to float64, large and view strings
    to string, large and view binaries to binary, dictionary columns decode to their values. Nested
    types are kept as read.
    """
    fields = [pa.field(f.name, canonical_type(f.type)) for f in table.schema]
    return table.cast(pa.schema(fields)).replace_schema_metadata(None)


def canonical_type(dtype: Any) -> Any:
    if pa.types.is_dictionary(dtype):
        return canonical_type(dtype.value_type)
    if pa.types.is_integer(dtype):
        return pa.uint64() if dtype == pa.uint64() else pa.int64()
    if pa.types.is_floating(dtype):
        return pa.float64()
    if pa.types.is_large_string(dtype) or dtype == pa.string_view():
        return pa.string()
    if pa.types.is_large_binary(dtype) or dtype == pa.binary_view():
        return pa.binary()
    return dtype


def type_name(dtype: Any) -> str:
    """A short, stable name of a column type for manifests and messages."""
    return str(dtype)


@dataclass
class _ColumnHash:
    """Running hashes of one column: which rows are null, value lengths, and value bytes."""

    name: str
    dtype: Any
    validity: Any = field(default_factory=hashlib.sha256)
    lengths: Any = field(default_factory=hashlib.sha256)
    values: Any = field(default_factory=hashlib.sha256)

    def update(self, array: Any) -> None:
        self.validity.update(_bytes_of(pc.is_valid(array).cast(pa.uint8())))
        dtype = array.type
        if pa.types.is_string(dtype) or pa.types.is_binary(dtype):
            self._update_variable(array)
        elif pa.types.is_boolean(dtype):
            self.values.update(_bytes_of(pc.fill_null(array, False).cast(pa.uint8())))
        elif pa.types.is_floating(dtype):
            values = pc.fill_null(array, 0.0).to_numpy(zero_copy_only=False).astype("<f8")
            # Every NaN is one value, whatever its bit pattern.
            values[np.isnan(values)] = np.nan
            self.values.update(values.tobytes())
        elif pa.types.is_integer(dtype) or pa.types.is_temporal(dtype):
            physical = pa.uint64() if dtype == pa.uint64() else pa.int64()
            self.values.update(_bytes_of(pc.fill_null(array.cast(physical), 0)))
        else:
            for value in array.to_pylist():
                self.values.update(orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS) + b"\n")

    def _update_variable(self, array: Any) -> None:
        large = pc.fill_null(array.cast(pa.large_binary()), b"")
        offsets_buffer, data_buffer = large.buffers()[1:3]
        offsets = np.frombuffer(offsets_buffer, dtype="<i8", count=len(large) + 1, offset=large.offset * 8)
        self.lengths.update(np.diff(offsets).astype("<i8").tobytes())
        if data_buffer is not None and offsets[-1] > offsets[0]:
            self.values.update(memoryview(data_buffer)[int(offsets[0]) : int(offsets[-1])])

    def digest(self) -> bytes:
        header = f"{self.name}\0{type_name(self.dtype)}\0".encode()
        return header + bytes(self.validity.digest() + self.lengths.digest() + self.values.digest())


_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _json_default(value: Any) -> str:
    """Values orjson does not know (bytes, Decimal, timedelta) by a stable text."""
    return value.hex() if isinstance(value, bytes) else str(value)


def _bytes_of(array: Any) -> bytes:
    numbers = array.to_numpy(zero_copy_only=False)
    return bytes(numbers.astype(numbers.dtype.newbyteorder("<")).tobytes())


def content_hash(table: Any) -> str:
    """The sha256 (hex) of a normalised table's content; independent of column order and chunking."""
    columns = {f.name: _ColumnHash(f.name, f.type) for f in table.schema}
    for batch in table.to_batches(max_chunksize=HASH_BATCH_ROWS):
        for index, f in enumerate(batch.schema):
            columns[f.name].update(batch.column(index))
    digest = hashlib.sha256(ENCODING)
    digest.update(f"rows={table.num_rows}\n".encode())
    for name in sorted(columns):
        digest.update(columns[name].digest())
    return digest.hexdigest()
