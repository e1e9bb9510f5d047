"""`modelfleet batch run` against a real fleet: order, per-row errors, resume after an interrupt, Parquet."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from modelfleet.batch import BatchConfigError, run_batch
from modelfleet.batch.files import write_rows
from modelfleet.batch.state import PartsFolder
from tests.conftest import RunningFleet, fleet_env, start_fleet

MODELS: dict[str, Any] = {
    "sentiment": {"class": "vader-sentiment"},
    "language": {"class": "fasttext-language"},
}
PIPELINES: dict[str, Any] = {
    "mood": {
        "steps": {
            "language": {"model": "language", "input": {"text": "input.text"}},
            "sentiment": {"model": "sentiment", "input": {"text": "input.text"}},
        },
        "output": {"language": "language.language", "label": "sentiment.label"},
    }
}
TEXTS = {
    "I love this, it is wonderful!": "positive",
    "This is terrible and I hate it.": "negative",
    "The table is made of wood.": "neutral",
    "Great service, very happy": "positive",
    "Awful, the worst experience ever": "negative",
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    config = {
        "models": MODELS,
        "pipelines": PIPELINES,
        "services": {"light": {"models": list(MODELS), "replicas": 1}},
    }
    running = start_fleet(tmp_path_factory.mktemp("batch"), config)
    yield running
    running.stop()


def _texts(count: int) -> list[str]:
    rng = random.Random(7)
    keys = list(TEXTS)
    return [f"{rng.choice(keys)}" for _ in range(count)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_jsonl_file_through_a_model_comes_back_in_order(fleet: RunningFleet, tmp_path: Path) -> None:
    texts = _texts(2000)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(source, "jsonl", [{"text": t} for t in texts])
    summary = run_batch("model:sentiment", source, out, fleet.gateway, progress=False)
    assert (summary.rows, summary.succeeded, summary.failed, summary.exit_code) == (2000, 2000, 0, 0)
    lines = _jsonl(out)
    assert [line["row"] for line in lines] == list(range(2000))
    assert [line["output"]["label"] for line in lines] == [TEXTS[t] for t in texts]
    assert not PartsFolder(out).path.exists()

    # One measurement each, printed, not asserted: the fleet over HTTP vs VADER in this process.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    started = time.perf_counter()
    for text in texts:
        analyzer.polarity_scores(text)
    raw_rows_per_s = len(texts) / (time.perf_counter() - started)
    print(
        f"\nbatch model:sentiment: {summary.rows_per_s:.0f} rows/s; "
        f"raw in-process VADER: {raw_rows_per_s:.0f} rows/s; "
        f"ratio {summary.rows_per_s / raw_rows_per_s:.2f}"
    )


def test_a_csv_file_through_a_pipeline_with_a_bad_row(fleet: RunningFleet, tmp_path: Path) -> None:
    texts = _texts(300)
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_rows(source, "csv", [{"text": t, "id": str(i)} for i, t in enumerate(texts)])
    summary = run_batch("pipeline:mood", source, out, fleet.gateway, chunk_size=64, progress=False)
    assert (summary.rows, summary.failed, summary.exit_code) == (300, 0, 0)
    with out.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["row"]) for r in rows] == list(range(300))
    assert [r["label"] for r in rows] == [TEXTS[t] for t in texts]
    assert {r["language"] for r in rows} == {"en"}


def test_a_bad_row_is_that_rows_error_and_the_rest_succeed(fleet: RunningFleet, tmp_path: Path) -> None:
    rows: list[Any] = [{"text": t} for t in _texts(50)]
    rows[17] = {"text": 5}
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(source, "jsonl", rows)
    with source.open("a", encoding="utf-8") as stream:
        stream.write("not json\n")
    for target in ("model:sentiment", "pipeline:mood"):
        summary = run_batch(target, source, out, fleet.gateway, chunk_size=16, progress=False)
        assert (summary.rows, summary.succeeded, summary.failed, summary.exit_code) == (51, 49, 2, 1)
        assert [row for row, _ in summary.failures] == [17, 50]
        lines = _jsonl(out)
        assert [line["row"] for line in lines] == list(range(51))
        assert lines[17]["output"] is None
        assert "text" in lines[17]["error"]
        assert "not valid JSON" in lines[50]["error"]
        assert all(line["error"] is None for i, line in enumerate(lines) if i not in (17, 50))
        assert lines[16]["output"] is not None


def test_a_stopped_batch_resumes_from_its_parts(fleet: RunningFleet, tmp_path: Path) -> None:
    texts = _texts(500)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(source, "jsonl", [{"text": t} for t in texts])
    # Given a batch stopped after 7 of its 50 chunks,
    first = run_batch(
        "model:sentiment", source, out, fleet.gateway, chunk_size=10, progress=False, max_chunks=7
    )
    assert not first.complete
    assert first.exit_code == 1
    assert not out.exists()
    assert len(PartsFolder(out).finished_parts()) == 7
    # a rerun with other arguments is refused, and with the same ones sends only the missing chunks.
    with pytest.raises(BatchConfigError, match="--restart"):
        run_batch("model:sentiment", source, out, fleet.gateway, chunk_size=20, progress=False)
    second = run_batch("model:sentiment", source, out, fleet.gateway, chunk_size=10, progress=False)
    assert (second.chunks, second.skipped_chunks, second.sent_rows) == (50, 7, 430)
    assert (second.rows, second.succeeded, second.exit_code) == (500, 500, 0)
    lines = _jsonl(out)
    assert [line["row"] for line in lines] == list(range(500))
    assert [line["output"]["label"] for line in lines] == [TEXTS[t] for t in texts]


def test_an_interrupted_process_leaves_parts_that_the_rerun_skips(
    fleet: RunningFleet, tmp_path: Path
) -> None:
    texts = _texts(3000)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(source, "jsonl", [{"text": t} for t in texts])
    script = (
        "import signal, sys, time; from pathlib import Path; from modelfleet.batch import run_batch\n"
        # Ctrl-C as a terminal sends it, whatever signal state the test process left to its children
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "run_batch('model:sentiment', Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], chunk_size=3,\n"
        "          concurrency=1, progress=False, on_chunk=lambda i: time.sleep(0.01))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(source), str(out), fleet.gateway],
        env=fleet_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    parts = PartsFolder(out)
    deadline = time.monotonic() + 60
    while len(parts.finished_parts()) < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "KeyboardInterrupt" in stderr, (process.returncode, len(parts.finished_parts()), stderr)
    assert not out.exists()
    kept = len(parts.finished_parts())
    assert 5 <= kept < 1000
    summary = run_batch("model:sentiment", source, out, fleet.gateway, chunk_size=3, progress=False)
    assert summary.skipped_chunks == kept
    assert summary.sent_rows == 3000 - 3 * kept
    assert (summary.rows, summary.succeeded) == (3000, 3000)
    assert [line["row"] for line in _jsonl(out)] == list(range(3000))


def test_a_parquet_file_round_trips(fleet: RunningFleet, tmp_path: Path) -> None:
    texts = _texts(700)
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    write_rows(source, "parquet", [{"text": t, "n": i} for i, t in enumerate(texts)])
    summary = run_batch("pipeline:mood", source, out, fleet.gateway, chunk_size=100, progress=False)
    assert summary.exit_code == 0
    table = pq.read_table(out).to_pylist()
    assert [r["row"] for r in table] == list(range(700))
    assert [json.loads(r["output"])["label"] for r in table] == [TEXTS[t] for t in texts]
    assert all(r["error"] is None for r in table)


def test_progress_goes_to_stderr(
    fleet: RunningFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(source, "jsonl", [{"text": t} for t in _texts(100)])
    run_batch("model:sentiment", source, out, fleet.gateway, chunk_size=10)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "100/100" in captured.err


def test_the_command_line_runs_a_batch_against_the_running_fleet(fleet: RunningFleet, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "what a lovely day"}\n{"text": 7}\n{"text": "awful"}\n')
    output = tmp_path / "out.jsonl"
    result = fleet.cli("batch", "run", "model:sentiment", "--input", str(source), "--output", str(output))
    assert result.returncode == 1, result.stdout + result.stderr  # one row failed
    rows = _jsonl(output)
    assert [r["row"] for r in rows] == [0, 1, 2]
    assert rows[0]["output"]["label"] == "positive"
    assert rows[1]["error"]
    assert rows[2]["output"]["label"] == "negative"
    unknown = fleet.cli(
        "batch", "run", "model:nope", "--input", str(source), "--output", str(tmp_path / "x.jsonl")
    )
    assert unknown.returncode == 2
