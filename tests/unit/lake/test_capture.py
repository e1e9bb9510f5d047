from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from modelfleet.lake import CapturePartition, CaptureWriter, Lake, capture_partitions, read_captures


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def pairs(count: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    inputs: list[dict[str, object]] = [{"text": f"message {i}", "id": i} for i in range(count)]
    outputs: list[dict[str, object]] = [
        {"label": "pos" if i % 2 else "neg", "score": i / count} for i in range(count)
    ]
    return inputs, outputs


def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_rate_one_captures_every_pair_and_reads_back(lake: Lake, tmp_path: Path) -> None:
    writer = CaptureWriter(lake, "sentiment", rate=1.0, flush_rows=10_000, flush_s=60)
    inputs, outputs = pairs(250)
    before = datetime.now(UTC)

    kept = writer.maybe_capture(inputs[:100], outputs[:100], "1") + writer.maybe_capture(
        inputs[100:], outputs[100:], "2"
    )
    writer.close()

    table = read_captures(lake, "sentiment")
    assert kept == 250
    assert writer.written_rows == 250
    assert writer.dropped_rows == 0
    assert table.num_rows == 250
    assert [json.loads(v) for v in table.column("input").to_pylist()] == inputs
    assert [json.loads(v) for v in table.column("output").to_pylist()] == outputs
    assert table.column("version").to_pylist() == ["1"] * 100 + ["2"] * 150
    assert set(table.column("model").to_pylist()) == {"sentiment"}
    assert table.schema.field("captured_at").type == pa.timestamp("ms", tz="UTC")
    captured_at = table.column("captured_at").to_pylist()
    assert all(before.replace(microsecond=0) <= t <= datetime.now(UTC) for t in captured_at)
    hour = captured_at[0]
    parts = list((tmp_path / "lake/captures/sentiment").glob("date=*/hour=*/part-*.parquet"))
    assert parts
    assert parts[0].parent.name == f"hour={hour:%H}"
    assert parts[0].parent.parent.name == f"date={hour:%Y-%m-%d}"


def test_rate_one_tenth_captures_within_binomial_bounds(lake: Lake) -> None:
    writer = CaptureWriter(lake, "sentiment", rate=0.1, flush_rows=10_000, flush_s=60)
    inputs, outputs = pairs(5000)

    kept = sum(writer.maybe_capture(inputs[i : i + 50], outputs[i : i + 50], "1") for i in range(0, 5000, 50))
    writer.close()

    # Six standard deviations either side of n*p: a correct sampler falls outside about once in 10^9 runs.
    mean, sd = 5000 * 0.1, math.sqrt(5000 * 0.1 * 0.9)
    assert mean - 6 * sd <= kept <= mean + 6 * sd
    table = read_captures(lake, "sentiment")
    assert table.num_rows == kept
    ids = [json.loads(v)["id"] for v in table.column("input").to_pylist()]
    assert ids == sorted(ids)
    assert all(
        json.loads(o)["score"] == i / 5000
        for i, o in zip(ids, table.column("output").to_pylist(), strict=True)
    )


def test_a_seed_makes_the_sample_repeatable(lake: Lake) -> None:
    inputs, outputs = pairs(1000)
    for model in ("first", "second"):
        writer = CaptureWriter(lake, model, rate=0.3, seed=7)
        writer.maybe_capture(inputs, outputs, "1")
        writer.close()

    first, second = (read_captures(lake, model).column("input").to_pylist() for model in ("first", "second"))
    assert 200 < len(first) < 400
    assert first == second


def test_rows_are_partitioned_by_the_utc_hour_they_were_captured_in(lake: Lake) -> None:
    times = iter(
        [
            datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC),
            datetime(2026, 3, 2, 0, 30, tzinfo=UTC),
        ]
    )
    writer = CaptureWriter(lake, "sentiment", rate=1.0, clock=lambda: next(times))
    inputs, outputs = pairs(6)

    for start in (0, 2, 4):
        writer.maybe_capture(inputs[start : start + 2], outputs[start : start + 2], "1")
    writer.close()

    assert capture_partitions(lake, "sentiment") == [
        CapturePartition("2026-03-01", "23", files=1, rows=2),
        CapturePartition("2026-03-02", "00", files=1, rows=4),
    ]
    table = read_captures(lake, "sentiment")
    assert table.column("date").to_pylist() == ["2026-03-01"] * 2 + ["2026-03-02"] * 4
    assert table.column("hour").to_pylist() == ["23"] * 2 + ["00"] * 4


def test_the_background_thread_writes_full_buffers_and_old_rows(lake: Lake) -> None:
    by_rows = CaptureWriter(lake, "by-rows", rate=1.0, flush_rows=10, flush_s=600)
    by_time = CaptureWriter(lake, "by-time", rate=1.0, flush_rows=10_000, flush_s=0.2)
    inputs, outputs = pairs(25)

    by_rows.maybe_capture(inputs, outputs, "1")
    by_time.maybe_capture(inputs[:3], outputs[:3], "1")

    # Neither writer is flushed or closed: only its own thread can have written these.
    wait_for(lambda: read_captures(lake, "by-rows").num_rows == 25)
    wait_for(lambda: read_captures(lake, "by-time").num_rows == 3)
    by_rows.close()
    by_time.close()


def test_a_failed_write_drops_rows_without_failing_the_caller(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the lake should be")
    writer = CaptureWriter(Lake(str(blocked)), "sentiment", rate=1.0, flush_rows=5, flush_s=600)
    inputs, outputs = pairs(5)

    assert writer.maybe_capture(inputs, outputs, "1") == 5
    wait_for(lambda: writer.dropped_rows == 5)
    writer.maybe_capture(inputs[:2], outputs[:2], "1")
    with pytest.raises(OSError, match="not-a-folder"):
        writer.flush()
    writer.close()

    assert writer.written_rows == 0
    assert writer.dropped_rows == 7


def test_a_captured_sample_can_become_a_dataset(lake: Lake) -> None:
    writer = CaptureWriter(lake, "sentiment", rate=1.0)
    inputs, outputs = pairs(40)
    writer.maybe_capture(inputs, outputs, "1")
    writer.close()
    captured = read_captures(lake, "sentiment")

    table = pa.table(
        {
            "text": [json.loads(v)["text"] for v in captured.column("input").to_pylist()],
            "label": [json.loads(v)["label"] for v in captured.column("output").to_pylist()],
        }
    )
    from modelfleet.lake import DatasetSource

    found = lake.ingest_table(
        table,
        "sentiment-feedback",
        source=DatasetSource("captures/sentiment", "-", "captures", 0),
        text_column="text",
        label_column="label",
    )

    assert found.rows == 40
    assert lake.read_table("sentiment-feedback").column("label").to_pylist()[:2] == ["neg", "pos"]


def test_nothing_captured_reads_as_empty(lake: Lake, tmp_path: Path) -> None:
    assert read_captures(lake, "sentiment").num_rows == 0
    # A partition whose first part is still being written (under a dot name) holds no rows yet.
    writing = tmp_path / "lake/captures/sentiment/date=2026-01-01/hour=00"
    writing.mkdir(parents=True)
    (writing / ".part-x.parquet.tmp").write_bytes(b"PAR1 half")
    assert read_captures(lake, "sentiment").num_rows == 0
    assert read_captures(lake, "sentiment").column_names == [
        "captured_at",
        "model",
        "version",
        "input",
        "output",
        "date",
        "hour",
    ]
    assert capture_partitions(lake, "sentiment") == []


def test_bad_arguments_are_refused(lake: Lake) -> None:
    for rate in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="capture rate"):
            CaptureWriter(lake, "sentiment", rate=rate)
    writer = CaptureWriter(lake, "sentiment", rate=1.0)
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        writer.maybe_capture([{}, {}], [{}], "1")
    writer.close()
    assert writer.maybe_capture([{}], [{}], "1") == 0


def test_capture_is_configured_per_model(lake: Lake) -> None:
    from modelfleet.errors import ConfigError
    from modelfleet.settings import settings_from_dict

    def config(capture: dict[str, object]) -> dict[str, object]:
        return {
            "models": {"sentiment": {"class": "x:Y", "capture": capture}, "plain": {"class": "x:Y"}},
            "services": {"light": {"models": ["sentiment", "plain"]}},
        }

    settings = settings_from_dict(config({"rate": 0.05, "flush_rows": 200}))
    capture = settings.models["sentiment"].capture
    assert capture is not None
    writer = CaptureWriter.from_settings(lake, "sentiment", capture)
    assert (writer.rate, writer.flush_rows, writer.flush_s) == (0.05, 200, 10.0)
    assert settings.models["plain"].capture is None
    for bad in ({"rate": 0}, {"rate": 1.5}, {}):
        with pytest.raises(ConfigError, match=r"models\.sentiment\.capture\.rate"):
            settings_from_dict(config(bad))
