"""The SQLite run store's save on the spot: it never waits for the lock, and the log stays checkpointed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelfleet.store import PipelineRun, RunWriter, StepRecord, make_run_store
from modelfleet.store import sql as sql_store


def a_run(run_id: str) -> PipelineRun:
    return PipelineRun(
        id=run_id,
        pipeline="triage",
        input={"text": "x" * 2000},  # a page or so of log per run
        output={"label": "ok"},
        steps=[StepRecord("detect", "language", "1", "ok", {"language": "en"}, None, 0.1)],
        status="succeeded",
        error=None,
        created_at=datetime.now(UTC),
        duration_ms=1.0,
    )


def test_a_save_waits_on_the_writer_thread_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"

    async def body() -> None:
        store = make_run_store(f"sqlite:///{path}")
        await store.open()
        writer = RunWriter(store)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            # Given another connection (standing for another process) holding the write lock
            other.execute("BEGIN IMMEDIATE")
            # When a run is offered for saving on the spot, then it is declined at once
            started = time.perf_counter()
            assert not store.save_now([a_run("declined")])
            assert time.perf_counter() - started < 0.05
            # And a save through the writer waits for the lock off the event loop
            saving = asyncio.ensure_future(writer.save(a_run("waited")))
            ticks = 0
            for _ in range(10):
                await asyncio.sleep(0.01)
                ticks += 1
            assert not saving.done()
            assert ticks == 10
            other.execute("COMMIT")
            # Then once the lock is free the run is stored, once
            await asyncio.wait_for(saving, 5)
            assert [r.id for r in (await store.list_runs()).items] == ["waited"]
        finally:
            other.close()
            await writer.close()
            await store.close()

    asyncio.run(body())


def _log_frames(path: Path) -> int:
    """Frames in the write-ahead log now (a PASSIVE checkpoint's second number)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


@pytest.mark.parametrize(("every", "checkpointed"), [(4, True), (10**6, False)])
def test_the_writer_thread_checkpoints_after_every_few_saves_on_the_spot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int, checkpointed: bool
) -> None:
    monkeypatch.setattr(sql_store, "_CHECKPOINT_EVERY", every)
    path = tmp_path / "runs.db"

    async def body() -> int:
        store = make_run_store(f"sqlite:///{path}")
        await store.open()
        try:
            # The connection saving on the spot never checkpoints by itself
            for n in range(4):
                assert store.save_now([a_run(f"now-{n}")])
            # A save on the writer thread runs after the checkpoint queued there, and then starts
            # the log over if everything in it was checkpointed
            await store.save_runs([a_run("after")])
            return _log_frames(path)
        finally:
            await store.close()

    frames = asyncio.run(body())

    # Measured: 8 frames when the log holds only the last save, 81 when it holds all five (and
    # the schema's creation): the log would grow without end.
    if checkpointed:
        assert frames <= 16
    else:
        assert frames >= 40
