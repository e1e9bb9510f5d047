"""Sampling a model's live inputs and outputs into the lake, for labelling and retraining later.

The serving path pays for one random number per prediction and, for the sampled ones, a JSON
encoding and a list append; Parquet is written by a background thread. Captures are partitioned by
the UTC hour they were taken in, as ``captures/<model>/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet``,
so a day or an hour can be read (or deleted) without touching the rest.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from modelfleet.lake._deps import pa, pa_dataset, pq
from modelfleet.lake.lake import Lake, check_name

if TYPE_CHECKING:
    from modelfleet.settings import CaptureSettings

log = logging.getLogger(__name__)

CAPTURE_SCHEMA = pa.schema(
    [
        ("captured_at", pa.timestamp("ms", tz="UTC")),
        ("model", pa.string()),
        ("version", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
    ]
)
PARTITION_SCHEMA = pa.schema([("date", pa.string()), ("hour", pa.string())])
READ_SCHEMA = pa.schema([*CAPTURE_SCHEMA, *PARTITION_SCHEMA])
# A writer that cannot keep up (the store is down, say) drops rows beyond this many flushes' worth.
MAX_BUFFERED_FLUSHES = 10
_PARTITION_PATH = re.compile(r"date=([^/]+)/hour=([^/]+)/[^/]+$")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

_Row = tuple[datetime, str, str, str]


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=_JSON_OPTIONS).decode()


class CaptureWriter:
    """Samples (input, output) pairs of one model with probability ``rate`` and writes them to the lake.

    Rows are written as a Parquet part when ``flush_rows`` are buffered, and at the latest ``flush_s``
    seconds after they were captured. A failed write is logged and its rows counted in
    ``dropped_rows``: capturing never fails a prediction. ``close()`` writes what is left.
    ``seed`` fixes the sampling; ``clock`` (UTC) dates the rows.
    """

    def __init__(
        self,
        lake: Lake,
        model: str,
        rate: float,
        flush_rows: int = 1000,
        flush_s: float = 10.0,
        *,
        seed: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"capture rate must be in (0, 1], not {rate}")
        if flush_rows < 1 or flush_s <= 0:
            raise ValueError("flush_rows must be at least 1 and flush_s positive")
        self.lake = lake
        self.model = check_name(model, "model")
        self.rate = rate
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.max_buffered_rows = flush_rows * MAX_BUFFERED_FLUSHES
        self.captured_rows = 0
        self.written_rows = 0
        self.dropped_rows = 0
        self._random = random.Random(seed).random
        self._clock = clock
        self._rows: list[_Row] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, lake: Lake, model: str, settings: CaptureSettings) -> CaptureWriter:
        return cls(lake, model, settings.rate, settings.flush_rows, settings.flush_s)

    def maybe_capture(self, inputs: Sequence[Any], outputs: Sequence[Any], version: str) -> int:
        """Sample each (input, output) pair; answers how many were kept. Cheap and never blocks on I/O."""
        if self._closed:
            return 0
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        if self.rate >= 1:
            picked: Sequence[int] = range(len(inputs))
        else:
            picked = [i for i in range(len(inputs)) if self._random() < self.rate]
        if not picked:
            return 0
        now = self._clock()
        rows = [(now, version, _json(inputs[i]), _json(outputs[i])) for i in picked]
        with self._lock:
            room = max(0, self.max_buffered_rows - len(self._rows))
            if len(rows) > room:
                self.dropped_rows += len(rows) - room
                rows = rows[:room]
            self._rows.extend(rows)
            self.captured_rows += len(rows)
            full = len(self._rows) >= self.flush_rows
        if self._thread is None:
            self._start()
        if full:
            self._wake.set()
        return len(rows)

    def flush(self) -> int:
        """Write every buffered row now, in the calling thread; answers how many. Raises if writing fails."""
        return self._write_buffered(raise_errors=True)

    def close(self) -> None:
        """Stop the background writer and write what is buffered (blocking: call it from a thread)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._write_buffered(raise_errors=False)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"capture-{self.model}", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self._closed:
                return
            self._write_buffered(raise_errors=False)

    def _write_buffered(self, raise_errors: bool) -> int:
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                self._write(rows)
            except Exception:
                with self._lock:
                    self.dropped_rows += len(rows)
                if raise_errors:
                    raise
                log.exception(
                    "could not write %d captured rows of model %s to %s", len(rows), self.model, self.lake
                )
                return 0
            with self._lock:
                self.written_rows += len(rows)
            return len(rows)

    def _write(self, rows: list[_Row]) -> None:
        hours: dict[tuple[str, str], list[_Row]] = {}
        for row in rows:
            hours.setdefault((row[0].strftime("%Y-%m-%d"), row[0].strftime("%H")), []).append(row)
        for (date, hour), group in hours.items():
            table = pa.table(
                {
                    "captured_at": [r[0] for r in group],
                    "model": [self.model] * len(group),
                    "version": [r[1] for r in group],
                    "input": [r[2] for r in group],
                    "output": [r[3] for r in group],
                },
                schema=CAPTURE_SCHEMA,
            )
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            path = self.lake.path("captures", self.model, f"date={date}", f"hour={hour}")
            self.lake.write_bytes(f"{path}/part-{uuid.uuid4().hex}.parquet", sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class CapturePartition:
    """One hour of a model's captures: its partition values, Parquet parts and rows."""

    date: str
    hour: str
    files: int
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"date": self.date, "hour": self.hour, "files": self.files, "rows": self.rows}


def _captures_dataset(lake: Lake, model: str) -> Any | None:
    base = lake.path("captures", check_name(model, "model"))
    lake.fs.invalidate_cache(base)
    if not lake.fs.exists(base):
        return None
    partitioning = pa_dataset.partitioning(PARTITION_SCHEMA, flavor="hive")
    # An explicit schema: a folder whose first part is still being written has no file to infer from.
    return pa_dataset.dataset(
        base, schema=READ_SCHEMA, filesystem=lake.fs, format="parquet", partitioning=partitioning
    )


def read_captures(lake: Lake, model: str) -> Any:
    """Every captured row of ``model`` as a pyarrow Table in capture order, with ``date`` and ``hour``
    from the partitions; empty (with those columns) when nothing was captured."""
    dataset = _captures_dataset(lake, model)
    if dataset is None:
        return READ_SCHEMA.empty_table()
    return dataset.to_table().sort_by("captured_at")


def capture_partitions(lake: Lake, model: str) -> list[CapturePartition]:
    """The hours that hold captures of ``model``, oldest first, with their part and row counts."""
    dataset = _captures_dataset(lake, model)
    if dataset is None:
        return []
    counts: dict[tuple[str, str], list[int]] = {}
    for fragment in dataset.get_fragments():
        match = _PARTITION_PATH.search(fragment.path)
        if match is None:
            continue
        entry = counts.setdefault((match.group(1), match.group(2)), [0, 0])
        entry[0] += 1
        entry[1] += fragment.count_rows()
    return [
        CapturePartition(date, hour, files, rows) for (date, hour), (files, rows) in sorted(counts.items())
    ]
