"""`modelfleet batch run`: push a CSV, JSONL or Parquet file through a model or pipeline of a running fleet.

The input is streamed in chunks; each chunk is one HTTP request to the gateway, with at most
`concurrency` in flight. Every finished chunk is saved as a part file, so an interrupted batch
resumes where it stopped; the output is assembled from the parts, in input order, at the end.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from modelfleet.batch.files import (
    BatchConfigError,
    RowResult,
    UnreadableRow,
    chunks,
    detect_format,
    estimate_rows,
    read_part,
    read_rows,
    write_output,
    write_part,
)
from modelfleet.batch.state import Manifest, PartsFolder

REQUEST_TIMEOUT_S = 300.0
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_FAILURES_SHOWN = 5


class GatewayUnreachable(BatchConfigError):
    """Raised when the gateway cannot be reached even after retries; the finished parts are kept."""


@dataclass
class BatchSummary:
    """What a batch did. `rows_per_s` counts the rows sent in this run (skipped chunks excluded)."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    chunks: int = 0
    skipped_chunks: int = 0
    sent_rows: int = 0
    requests: int = 0
    complete: bool = True
    output_path: str = ""

    @property
    def exit_code(self) -> int:
        """0 when every row succeeded, 1 when some failed or the batch stopped early."""
        return 0 if self.complete and self.failed == 0 else 1

    def render(self) -> str:
        lines = [
            f"{self.rows} rows: {self.succeeded} succeeded, {self.failed} failed "
            f"in {self.elapsed_s:.2f}s ({self.rows_per_s:.0f} rows/s; "
            f"{self.chunks} chunks, {self.skipped_chunks} resumed from earlier parts)"
        ]
        lines += [f"  row {row}: {message}" for row, message in self.failures]
        if self.failed > len(self.failures):
            lines.append(f"  ... and {self.failed - len(self.failures)} more failures")
        lines.append(
            f"output: {self.output_path}"
            if self.complete
            else "stopped early; rerun to resume from the parts"
        )
        return "\n".join(lines)


def parse_target(target: str) -> tuple[str, str]:
    """`pipeline:NAME` or `model:NAME` as (kind, name); raises BatchConfigError."""
    kind, _, name = target.partition(":")
    if kind not in ("pipeline", "model") or not name:
        raise BatchConfigError(f"target {target!r} must be pipeline:NAME or model:NAME")
    return kind, name


class GatewayClient:
    """Blocking JSON-over-HTTP calls to the gateway, one keep-alive connection per calling thread."""

    def __init__(self, gateway_url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        parts = urlsplit(gateway_url if "://" in gateway_url else f"http://{gateway_url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BatchConfigError(f"gateway URL {gateway_url!r} is not an http(s) URL")
        self.url = gateway_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.requests = 0

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = factory(self._host, self._port, timeout=self._timeout_s)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def post(self, path: str, payload: Any) -> tuple[int, Any]:
        """POST JSON, answer (status, decoded body); retries transient failures, then raises or answers."""
        body = _encode(payload)
        last_error: Exception | None = None
        for attempt, delay_s in enumerate((0.0, *RETRY_DELAYS_S)):
            if delay_s:
                time.sleep(delay_s)
            conn = self._connection()
            try:
                conn.request(
                    "POST", self._prefix + path, body=body, headers={"content-type": "application/json"}
                )
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as err:
                # A dropped keep-alive connection is normal: reconnect and send again (predictions
                # with store=false have no side effects, so a repeat is harmless).
                conn.close()
                last_error = err
                continue
            finally:
                with self._lock:
                    self.requests += 1
            try:
                answer = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                answer = {"error": raw.decode("utf-8", errors="replace")[:500]}
            if response.status in RETRY_STATUSES and attempt < len(RETRY_DELAYS_S):
                continue
            return response.status, answer
        raise GatewayUnreachable(f"cannot reach the gateway at {self.url}: {last_error}")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _encode(payload: Any) -> bytes:
    try:
        return orjson.dumps(payload)
    except TypeError:
        # Integers past 64 bits, which orjson does not write; the json module does.
        return json.dumps(payload, ensure_ascii=False).encode()


def _message(status: int, answer: Any) -> str:
    if isinstance(answer, dict) and answer.get("error"):
        return str(answer["error"])
    return f"the gateway answered {status}"


class ChunkRunner:
    """Turns one chunk of input rows into one RowResult per row, talking to the gateway."""

    def __init__(self, client: GatewayClient, target: str) -> None:
        self.client = client
        self.kind, name = parse_target(target)
        if self.kind == "model":
            self.path = f"/v1/models/{quote(name, safe='')}/predict"
        else:
            self.path = f"/v1/pipelines/{quote(name, safe='')}?store=false"

    def run(self, first_row: int, rows: list[Any]) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(rows)
        sendable: list[int] = []
        for offset, row in enumerate(rows):
            if isinstance(row, UnreadableRow):
                results[offset] = RowResult(first_row + offset, error=row.message)
            elif not isinstance(row, dict):
                results[offset] = RowResult(
                    first_row + offset, error=f"the row must be an object, not {type(row).__name__}"
                )
            else:
                sendable.append(offset)
        if sendable:
            answers = self._send([rows[i] for i in sendable], split=True)
            for offset, (output, error) in zip(sendable, answers, strict=True):
                results[offset] = RowResult(first_row + offset, output, error)
        return [r for r in results if r is not None]

    def _send(self, inputs: list[dict[str, Any]], split: bool) -> list[tuple[Any, str | None]]:
        status, answer = self.client.post(self.path, inputs)
        if status == 200:
            return self._decode(answer, len(inputs))
        if status == 404:
            raise BatchConfigError(
                f"the gateway has no {self.kind} for this target: {_message(status, answer)}"
            )
        if split and len(inputs) > 1:
            # One invalid row makes the whole chunk 422 (or a crash, 5xx): send the rows alone so the
            # bad one gets the error and the others their outputs.
            return [self._send([one], split=False)[0] for one in inputs]
        return [(None, _message(status, answer))] * len(inputs)

    def _decode(self, answer: Any, count: int) -> list[tuple[Any, str | None]]:
        if self.kind == "model":
            outputs = answer.get("outputs") if isinstance(answer, dict) else None
            if not isinstance(outputs, list) or len(outputs) != count:
                return [(None, "the gateway's answer has no outputs list of the right length")] * count
            return [(output, None) for output in outputs]
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != count:
            return [(None, "the gateway's answer has no results list of the right length")] * count
        decoded: list[tuple[Any, str | None]] = []
        for result in results:
            if result.get("status") == "succeeded":
                decoded.append((result.get("output"), None))
            else:
                decoded.append((None, str(result.get("error") or f"run {result.get('status')}")))
        return decoded


class Progress:
    """Rows done, rows/s and ETA on stderr: a rich bar when rich is installed, else a line a second."""

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self._rich: Any = None
        self._task: Any = None
        self._started = time.monotonic()
        self._last_line = 0.0
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        self._rich = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._rich.start()
        self._task = self._rich.add_task(label, total=total, rate="-")

    def advance(self, rows: int) -> None:
        self.done += rows
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.done / elapsed
        if self._rich is not None:
            total = max(self.total or 0, self.done)
            self._rich.update(self._task, completed=self.done, total=total, rate=f"{rate:.0f}")
            return
        now = time.monotonic()
        if now - self._last_line >= 1.0:
            self._last_line = now
            eta = f", ETA {max(0.0, (self.total - self.done) / rate):.0f}s" if self.total and rate > 0 else ""
            of = f"/{self.total}" if self.total else ""
            print(f"batch: {self.done}{of} rows, {rate:.0f} rows/s{eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


def run_batch(
    target: str,
    input_path: Path,
    output_path: Path,
    gateway_url: str,
    chunk_size: int = 256,
    concurrency: int = 4,
    progress: bool = True,
    input_format: str = "auto",
    restart: bool = False,
    max_chunks: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
    on_rows: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchSummary:
    """Run every row of `input_path` through `target` and write `output_path` in the input's order.

    `max_chunks` stops after sending that many chunks (the parts stay, as after an interrupt);
    `on_chunk(index)` is called after each part is saved. For a caller that reports progress (a batch
    job), `on_rows(rows, failed_rows)` is called, from any thread, after each chunk is saved or found
    saved by an earlier run, with that chunk's rows; `should_stop()` is asked before each chunk is
    sent, and when it answers True the batch stops as with `max_chunks`. Raises BatchConfigError (a
    ConfigError) for a bad target, format or file, parts of a different batch (unless `restart`), or
    an unreachable gateway; a KeyboardInterrupt propagates after the chunks in flight are saved.
    """
    if chunk_size < 1 or concurrency < 1:
        raise BatchConfigError("--chunk-size and --concurrency must be at least 1")
    parse_target(target)
    if not input_path.is_file():
        raise BatchConfigError(f"input file {str(input_path)!r} does not exist")
    in_format = detect_format(input_path, input_format)
    out_format = detect_format(output_path)
    if output_path.resolve() == input_path.resolve():
        raise BatchConfigError("the output file must not be the input file")
    started = time.monotonic()
    parts = PartsFolder(output_path)
    parts.open(Manifest.of(target, input_path, chunk_size), restart=restart)
    client = GatewayClient(gateway_url)
    runner = ChunkRunner(client, target)
    summary = BatchSummary(output_path=str(output_path))
    bar = Progress(progress, estimate_rows(input_path, in_format), f"{target}")

    def work(index: int, rows: list[Any]) -> int:
        results = runner.run(index * chunk_size, rows)
        write_part(parts.part(index), results)
        if on_chunk is not None:
            on_chunk(index)
        if on_rows is not None:
            on_rows(len(rows), sum(1 for r in results if r.error is not None))
        return len(rows)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batch")
    in_flight: set[Future[int]] = set()

    def settle() -> None:
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in finished:
            in_flight.discard(future)
            count = future.result()  # re-raises a chunk's failure (gateway down, unknown target)
            summary.sent_rows += count
            bar.advance(count)

    try:
        sent = 0
        for index, rows in enumerate(chunks(read_rows(input_path, in_format), chunk_size)):
            summary.chunks += 1
            if parts.done(index):
                summary.skipped_chunks += 1
                bar.advance(len(rows))
                if on_rows is not None:
                    on_rows(len(rows), sum(1 for r in read_part(parts.part(index)) if r.error is not None))
                continue
            if should_stop is not None and should_stop():
                summary.complete = False
                break
            if max_chunks is not None and sent >= max_chunks:
                summary.complete = False
                continue
            while len(in_flight) >= concurrency:
                settle()
            in_flight.add(pool.submit(work, index, rows))
            sent += 1
        while in_flight:
            settle()
    finally:
        # On an error or Ctrl-C: drop the queued chunks, let the ones in flight finish and save.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        client.close()
    summary.requests = client.requests
    if summary.complete:
        finished = parts.finished_parts()
        write_output(output_path, out_format, finished)
        _count(summary, finished)
        parts.remove()
    else:
        _count(summary, parts.finished_parts())
    summary.elapsed_s = time.monotonic() - started
    summary.rows_per_s = summary.sent_rows / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    return summary


def _count(summary: BatchSummary, parts: list[Path]) -> None:
    for part in parts:
        for result in read_part(part):
            summary.rows += 1
            if result.error is None:
                summary.succeeded += 1
            else:
                summary.failed += 1
                if len(summary.failures) < MAX_FAILURES_SHOWN:
                    summary.failures.append((result.row, result.error))
