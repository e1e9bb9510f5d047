"""Reading the file a dataset version is made from: CSV, TSV, JSONL or Parquet, local or at an fsspec URL.

Type inference is pyarrow's, over the whole file where it fits in one block, so a column's type does
not depend on where the reader happened to split the file. A text column of a CSV or TSV file is read
as strings whatever it looks like (a text column of digits is still text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.errors import DatasetRejected
from modelfleet.lake._deps import pa, pa_csv, pa_json, pq, url_to_fs

FORMATS = ("csv", "tsv", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_LABELS = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSONL", "parquet": "Parquet"}
# One block up to this size: inference then sees every row, and error row numbers are absolute.
MAX_BLOCK_BYTES = 64 << 20
HASH_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset version came from: the original file, its own sha256, and how it was read."""

    path: str
    sha256: str
    format: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "format": self.format,
            "size_bytes": self.size_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSource:
        return cls(str(data["path"]), str(data["sha256"]), str(data["format"]), int(data["size_bytes"]))


def detect_format(path: str, given: str | None = None) -> str:
    """``given`` if set, else the format its suffix names; raises DatasetRejected for anything else."""
    if given is not None:
        if given not in FORMATS:
            raise DatasetRejected(f"unknown format {given!r}; use one of {', '.join(FORMATS)}")
        return given
    suffix = Path(path.rstrip("/")).suffix.lower()
    found = _SUFFIXES.get(suffix)
    if found is None:
        raise DatasetRejected(
            f"cannot tell the format of {path!r} from its suffix {suffix or '(none)'!r}; "
            f"use .csv, .tsv, .jsonl, .ndjson or .parquet, or give the format"
        )
    return found


def read_source(
    path: str | Path,
    fmt: str | None = None,
    *,
    header: bool = True,
    column_names: Sequence[str] | None = None,
    text_columns: Sequence[str] = (),
) -> tuple[Any, DatasetSource]:
    """Read a whole file into a pyarrow Table, and describe it; raises DatasetRejected with the reason.

    ``header=False`` reads a CSV/TSV file whose first line is data; its columns are ``column_names``,
    or ``f0, f1, ...`` when none are given. ``text_columns`` are read as strings from CSV/TSV.
    """
    location = str(path) if "://" in str(path) else str(Path(path).resolve())
    fmt = detect_format(location, fmt)
    fs, fs_path = url_to_fs(location)
    try:
        size = int(fs.size(fs_path))
        digest = _sha256_of(fs, fs_path)
    except FileNotFoundError:
        raise DatasetRejected(f"{location}: file not found") from None
    except IsADirectoryError:
        raise DatasetRejected(f"{location}: is a folder, not a file") from None
    except OSError as err:
        raise DatasetRejected(f"{location}: cannot read: {err}") from None
    if size == 0:
        raise DatasetRejected("file is empty")
    if fmt in ("jsonl", "parquet") and (not header or column_names):
        raise DatasetRejected("a missing header and column names apply to CSV and TSV files only")
    if column_names and header:
        raise DatasetRejected("column names can only be given for a file without a header line")
    try:
        with fs.open(fs_path, "rb") as stream:
            table = _read(stream, fmt, size, header, column_names, text_columns)
    except pa.ArrowInvalid as err:
        message = str(err)
        if message.startswith(("Empty CSV file", "Empty JSON file")):
            raise DatasetRejected("file is empty") from None
        raise DatasetRejected(f"not valid {_LABELS[fmt]}: {message}") from None
    if table.num_rows == 0:
        raise DatasetRejected("file is empty: it has no rows")
    return table, DatasetSource(location, digest, fmt, size)


def _read(
    stream: Any,
    fmt: str,
    size: int,
    header: bool,
    column_names: Sequence[str] | None,
    text_columns: Sequence[str],
) -> Any:
    block_size = max(1 << 20, min(size + 1, MAX_BLOCK_BYTES))
    if fmt == "parquet":
        return pq.read_table(stream)
    if fmt == "jsonl":
        return pa_json.read_json(stream, read_options=pa_json.ReadOptions(block_size=block_size))
    read_options = pa_csv.ReadOptions(
        block_size=block_size,
        column_names=list(column_names) if column_names else None,
        autogenerate_column_names=not header and not column_names,
    )
    if fmt == "tsv":
        # Tab-separated files do not quote: a '"' inside a message is just a character.
        parse_options = pa_csv.ParseOptions(delimiter="\t", quote_char=False)
    else:
        parse_options = pa_csv.ParseOptions(newlines_in_values=True)
    convert_options = pa_csv.ConvertOptions(column_types={name: pa.string() for name in text_columns})
    return pa_csv.read_csv(
        stream, read_options=read_options, parse_options=parse_options, convert_options=convert_options
    )


def _sha256_of(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as stream:
        while block := stream.read(HASH_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()
