"""Batch files: streaming readers for the input, and writers that turn the finished parts into the output.

Readers yield one row at a time so a file of any size is processed in constant memory. A row the
reader cannot decode (a JSONL line that is not JSON) is yielded as an `UnreadableRow`, so it becomes
that row's error in the output instead of stopping the whole batch.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelfleet.errors import ConfigError

# orjson reads integers past 64 bits back as floats; lines holding one are read with the json module.
_BIG_INT = re.compile(r"\d{19}")

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
PARQUET_BATCH_ROWS = 4096


class BatchConfigError(ConfigError):
    """Raised when a batch cannot start: unknown format, missing file, or parts left by other arguments."""


@dataclass(frozen=True)
class UnreadableRow:
    """A row the reader could not decode; `message` becomes the row's error."""

    message: str


@dataclass(frozen=True)
class RowResult:
    """One row's answer: `output` when it succeeded, `error` (a message) when it did not."""

    row: int
    output: Any = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "output": self.output, "error": self.error}


def detect_format(path: Path, given: str = "auto") -> str:
    """The file format: `given` unless it is `auto`, else from the suffix; raises BatchConfigError."""
    if given != "auto":
        if given not in FORMATS:
            raise BatchConfigError(f"unknown format {given!r}; use one of auto, {', '.join(FORMATS)}")
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise BatchConfigError(
            f"cannot tell the format of {str(path)!r} from its suffix; "
            f"use .csv, .jsonl or .parquet, or pass --format"
        )
    return found


def _parquet() -> Any:
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise BatchConfigError("Parquet files need pyarrow: pip install 'modelfleet[batch]'") from None


def read_rows(path: Path, fmt: str) -> Iterator[Any]:
    """Yield the input's rows in order: dicts (CSV values are strings), or UnreadableRow for a bad line."""
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as stream:
            yield from csv.DictReader(stream)
    elif fmt == "jsonl":
        with path.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as err:
                    yield UnreadableRow(f"line {number} is not valid JSON: {err}")
    elif fmt == "parquet":
        parquet_file = _parquet().ParquetFile(path)
        try:
            for batch in parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield from batch.to_pylist()
        finally:
            parquet_file.close()
    else:
        raise BatchConfigError(f"unknown format {fmt!r}")


def estimate_rows(path: Path, fmt: str) -> int | None:
    """Roughly how many rows the input has, for the progress bar's ETA; reads in blocks, not into memory.

    Exact for Parquet (from the footer) and for JSONL without blank lines; CSV values with line breaks
    make the estimate high, which only makes the ETA pessimistic.
    """
    if fmt == "parquet":
        parquet_file = _parquet().ParquetFile(path)
        try:
            return int(parquet_file.metadata.num_rows)
        finally:
            parquet_file.close()
    lines = 0
    last = b"\n"
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(0, lines - 1) if fmt == "csv" else lines


def chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Group rows into lists of `size` (the last may be shorter)."""
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write text to `path` so a reader (or a resumed run) sees the whole file or none of it."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("w", encoding="utf-8") as stream:
            stream.writelines(lines)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def write_part(path: Path, results: Iterable[RowResult]) -> None:
    """One finished chunk's results as JSON lines, written atomically."""
    write_atomically(path, (_json_line(r.to_dict()) for r in results))


def _json_line(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE).decode()
    except TypeError:
        # Integers past 64 bits, which orjson does not write; the json module does.
        return json.dumps(value, ensure_ascii=False) + "\n"


def read_part(path: Path) -> Iterator[RowResult]:
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            item = json.loads(line) if _BIG_INT.search(line) else orjson.loads(line)
            yield RowResult(item["row"], item.get("output"), item.get("error"))


def _flatten(output: Any) -> dict[str, str]:
    """One level: a dict's keys become columns; anything else goes in a single `output` column."""
    if output is None:
        return {}
    if not isinstance(output, dict):
        output = {"output": output}
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in output.items()
    }


def write_output(path: Path, fmt: str, parts: list[Path]) -> None:
    """Concatenate the parts (already in chunk order) into the output file, written atomically.

    jsonl: one {"row", "output", "error"} object per line. csv: row, error, then the output's keys as
    columns (nested values JSON-encoded). parquet: row, output (a JSON string), error.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "jsonl":
            with temp.open("w", encoding="utf-8") as stream:
                for part in parts:
                    for result in read_part(part):
                        stream.write(_json_line(result.to_dict()))
        elif fmt == "csv":
            _write_csv(temp, parts)
        elif fmt == "parquet":
            _write_parquet(temp, parts)
        else:
            raise BatchConfigError(f"unknown output format {fmt!r}")
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _write_csv(path: Path, parts: list[Path]) -> None:
    # Two passes over the parts (on disk, cheap) so the header has every key without holding the rows.
    columns: dict[str, None] = {}
    for part in parts:
        for result in read_part(part):
            columns.update(dict.fromkeys(_flatten(result.output)))
    for reserved in ("row", "error"):
        columns.pop(reserved, None)
    header = ["row", "error", *columns]
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=header, restval="", extrasaction="ignore")
        writer.writeheader()
        for part in parts:
            for result in read_part(part):
                writer.writerow({**_flatten(result.output), "row": result.row, "error": result.error or ""})


def _write_parquet(path: Path, parts: list[Path]) -> None:
    pq = _parquet()
    pa = importlib.import_module("pyarrow")
    schema = pa.schema([("row", pa.int64()), ("output", pa.string()), ("error", pa.string())])
    writer = pq.ParquetWriter(path, schema)
    try:
        for part in parts:
            results = list(read_part(part))  # one chunk at a time
            writer.write_table(
                pa.table(
                    {
                        "row": [r.row for r in results],
                        "output": [
                            None if r.output is None else json.dumps(r.output, ensure_ascii=False)
                            for r in results
                        ],
                        "error": [r.error for r in results],
                    },
                    schema=schema,
                )
            )
    finally:
        writer.close()


def write_rows(path: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    """Write plain input rows (tests and examples use it to make input files)."""
    if fmt == "jsonl":
        write_atomically(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        pa = importlib.import_module("pyarrow")
        _parquet().write_table(pa.Table.from_pylist(rows), path)
    else:
        raise BatchConfigError(f"unknown format {fmt!r}")
