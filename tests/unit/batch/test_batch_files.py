"""Batch files: streaming readers, format detection, output writers and the resumable state's manifest."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from modelfleet.batch.files import (
    BatchConfigError,
    RowResult,
    UnreadableRow,
    chunks,
    detect_format,
    estimate_rows,
    read_rows,
    write_output,
    write_part,
    write_rows,
)
from modelfleet.batch.run import parse_target
from modelfleet.batch.state import Manifest, PartsFolder
from modelfleet.errors import ConfigError

ROWS = [{"text": "hello", "n": 1}, {"text": 'héllo, "quoted"\nline', "n": 2}, {"text": "", "n": 3}]


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("in.csv", "auto", "csv"),
        ("in.JSONL", "auto", "jsonl"),
        ("in.ndjson", "auto", "jsonl"),
        ("in.parquet", "auto", "parquet"),
        ("in.txt", "jsonl", "jsonl"),
        ("in.csv", "parquet", "parquet"),
    ],
)
def test_the_format_comes_from_the_suffix_unless_given(name: str, given: str, expected: str) -> None:
    assert detect_format(Path(name), given) == expected


def test_an_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--format"):
        detect_format(Path("in.txt"))
    with pytest.raises(BatchConfigError, match="unknown format 'xml'"):
        detect_format(Path("in.csv"), "xml")


def test_csv_rows_are_objects_of_strings(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    write_rows(path, "csv", ROWS)
    assert list(read_rows(path, "csv")) == [{k: str(v) for k, v in row.items()} for row in ROWS]
    # A quoted line break makes the line count (the ETA estimate) high, never low.
    assert estimate_rows(path, "csv") >= len(ROWS)  # type: ignore[operator]


def test_jsonl_rows_keep_their_types_and_a_bad_line_becomes_that_rows_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": 5}\nnot json\n[1, 2]\n{"text": "z"}', encoding="utf-8")
    rows = list(read_rows(path, "jsonl"))
    assert rows[:2] == [{"text": "a"}, {"text": 5}]
    assert isinstance(rows[2], UnreadableRow)
    assert "line 4 is not valid JSON" in rows[2].message
    assert rows[3:] == [[1, 2], {"text": "z"}]
    assert estimate_rows(path, "jsonl") == 6


def test_parquet_rows_are_streamed_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    many = [{"text": f"t{i}", "n": i} for i in range(10_000)]
    write_rows(path, "parquet", many)
    rows = read_rows(path, "parquet")
    assert next(rows) == {"text": "t0", "n": 0}
    assert list(rows) == many[1:]
    assert estimate_rows(path, "parquet") == 10_000


def test_chunks_keep_the_order_and_the_last_one_is_shorter() -> None:
    assert list(chunks(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks(iter([]), 3)) == []


def _parts(tmp_path: Path) -> list[Path]:
    first, second = tmp_path / "00000000.jsonl", tmp_path / "00000001.jsonl"
    write_part(
        first, [RowResult(0, {"label": "positive", "scores": {"pos": 0.9}}), RowResult(1, error="bad")]
    )
    write_part(second, [RowResult(2, {"label": "negative", "extra": 1}), RowResult(3, "plain")])
    return [first, second]


def test_the_jsonl_output_has_one_object_per_row_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_output(out, "jsonl", _parts(tmp_path))
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"row": 0, "output": {"label": "positive", "scores": {"pos": 0.9}}, "error": None},
        {"row": 1, "output": None, "error": "bad"},
        {"row": 2, "output": {"label": "negative", "extra": 1}, "error": None},
        {"row": 3, "output": "plain", "error": None},
    ]


def test_the_csv_output_flattens_the_output_one_level(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    write_output(out, "csv", _parts(tmp_path))
    with out.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        assert reader.fieldnames == ["row", "error", "label", "scores", "extra", "output"]
        rows = list(reader)
    assert rows[0] == {
        "row": "0",
        "error": "",
        "label": "positive",
        "scores": '{"pos": 0.9}',
        "extra": "",
        "output": "",
    }
    assert rows[1]["error"] == "bad"
    assert rows[2]["extra"] == "1"
    assert rows[3]["output"] == "plain"


def test_the_parquet_output_has_row_output_json_and_error(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    write_output(out, "parquet", _parts(tmp_path))
    table = pq.read_table(out).to_pylist()
    assert [r["row"] for r in table] == [0, 1, 2, 3]
    assert json.loads(table[0]["output"]) == {"label": "positive", "scores": {"pos": 0.9}}
    assert table[1] == {"row": 1, "output": None, "error": "bad"}


def test_a_target_is_pipeline_or_model_with_a_name() -> None:
    assert parse_target("model:sentiment") == ("model", "sentiment")
    assert parse_target("pipeline:triage") == ("pipeline", "triage")
    for bad in ("sentiment", "model:", "job:x"):
        with pytest.raises(BatchConfigError, match="pipeline:NAME or model:NAME"):
            parse_target(bad)


def test_parts_of_a_different_batch_are_refused_unless_restarted(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_rows(source, "jsonl", ROWS)
    parts = PartsFolder(tmp_path / "out.jsonl")
    parts.open(Manifest.of("model:sentiment", source, 10))
    write_part(parts.part(0), [RowResult(0, "x")])
    # Given the same arguments, the folder is reused with its parts.
    parts.open(Manifest.of("model:sentiment", source, 10))
    assert parts.done(0)
    # A different chunk size, target or input is refused, naming what changed.
    with pytest.raises(ConfigError, match=r"chunk_size was 10, now 20.*--restart"):
        parts.open(Manifest.of("model:sentiment", source, 20))
    with pytest.raises(BatchConfigError, match="target was 'model:sentiment', now 'model:language'"):
        parts.open(Manifest.of("model:language", source, 10))
    time.sleep(0.01)
    source.write_text('{"text": "changed"}\n', encoding="utf-8")
    with pytest.raises(BatchConfigError, match="input_size"):
        parts.open(Manifest.of("model:sentiment", source, 10))
    # --restart starts over: the old parts are gone.
    parts.open(Manifest.of("model:sentiment", source, 20), restart=True)
    assert not parts.done(0)
    assert parts.finished_parts() == []
