"""The results store for pipeline runs: the interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from modelfleet.store.records import PipelineRun, RunPage

MAX_LIST_LIMIT = 1000
"""The largest page ``list_runs`` serves, so one call cannot pull the whole table."""


class RunStore(Protocol):
    """Durable storage for pipeline runs, written by the pipeline executor and read by the API.

    Every method but ``open`` raises StoreError when the store is not open or the database fails.
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date; safe when several processes open at once."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent. Calls after close raise StoreError until ``open`` again."""
        ...

    async def save_runs(self, runs: Sequence[PipelineRun]) -> None:
        """Store ``runs`` in one transaction: all of them or none.

        Idempotent on run id, because a redelivered job saves the same run again: a run whose id
        is stored already (or appears earlier in ``runs``) is skipped, and the stored one, with its
        steps, is kept unchanged. Raises RunRejected when the database refuses a run's content.
        """
        ...

    def save_now(self, runs: Sequence[PipelineRun]) -> bool:
        """Store ``runs`` as ``save_runs`` does, on this thread, if that needs no waiting at all.

        True when they are stored; False, having done nothing, when the store cannot (it would wait
        for a lock or for the network), and the caller uses ``save_runs``. Blocks the caller for
        the transaction's own work only, so a caller on an event loop may use it when idle.
        """
        ...

    async def get_run(self, run_id: str) -> PipelineRun:
        """The run with this id; raises RunNotFound."""
        ...

    async def find_run(self, run_id: str) -> PipelineRun | None:
        """The run with this id, or None."""
        ...

    async def list_runs(
        self,
        pipeline: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs newest first (by created_at, then id), optionally of one pipeline and at or after ``since``.

        Pages are keyset-based: ``cursor`` is the ``next_cursor`` of the previous page, so runs
        saved meanwhile neither repeat nor shift a page. Raises ValueError when ``limit`` is not
        1..MAX_LIST_LIMIT, ``since`` is naive, or ``cursor`` was not issued by a store.
        """
        ...
