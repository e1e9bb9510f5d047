"""The results store: pipeline runs and asynchronous jobs kept in SQLite (the embedded default) or PostgreSQL.

``make_run_store(url)`` and ``make_job_store(url)`` pick the implementation from the URL's scheme
and import its driver only then, so importing this package needs neither SQLAlchemy's drivers
nor asyncpg.
"""

from __future__ import annotations

from modelfleet.errors import ConfigError
from modelfleet.store.errors import JobNotFound, JobRejected, RunNotFound, RunRejected, StoreError
from modelfleet.store.jobs import MAX_RESULTS_LIMIT, TERMINAL, Job, JobResult, JobStatus, JobStore
from modelfleet.store.records import PipelineRun, RunPage, RunStatus, StepRecord, StepStatus
from modelfleet.store.store import MAX_LIST_LIMIT, RunStore
from modelfleet.store.writer import RunWriter

__all__ = [
    "MAX_LIST_LIMIT",
    "MAX_RESULTS_LIMIT",
    "TERMINAL",
    "Job",
    "JobNotFound",
    "JobRejected",
    "JobResult",
    "JobStatus",
    "JobStore",
    "PipelineRun",
    "RunNotFound",
    "RunPage",
    "RunRejected",
    "RunStatus",
    "RunStore",
    "RunWriter",
    "StepRecord",
    "StepStatus",
    "StoreError",
    "make_job_store",
    "make_run_store",
    "open_job_store",
    "open_run_store",
]

_INSTALL_HINTS = {
    "sqlite": ("aiosqlite", "pip install aiosqlite"),
    "postgresql": ("asyncpg", "pip install 'modelfleet[postgres]'"),
}


def _check_driver(url: str) -> None:
    """Raise ConfigError naming a bad scheme, or saying what to install when the driver is missing."""
    from modelfleet.store.engine import parse_store_url

    backend = parse_store_url(url).backend
    module, hint = _INSTALL_HINTS[backend]
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"store_url: {backend} needs the {module} driver: {hint}") from None


def make_run_store(url: str) -> RunStore:
    """A closed store for ``url`` (``sqlite:///path`` or ``postgresql://...``); call ``open()`` next.

    Raises ConfigError naming a bad scheme, or saying what to install when the driver is missing.
    """
    _check_driver(url)
    from modelfleet.store.sql import SqlRunStore

    return SqlRunStore(url)


async def open_run_store(url: str) -> RunStore:
    """:func:`make_run_store`, opened (connected and migrated); raises ConfigError or StoreError."""
    store = make_run_store(url)
    await store.open()
    return store


def make_job_store(url: str) -> JobStore:
    """A closed job store for ``url`` (``sqlite:///path`` or ``postgresql://...``); call ``open()`` next.

    It may share its database with the run store. Raises ConfigError naming a bad scheme, or
    saying what to install when the driver is missing.
    """
    _check_driver(url)
    from modelfleet.store.sql_jobs import SqlJobStore

    return SqlJobStore(url)


async def open_job_store(url: str) -> JobStore:
    """:func:`make_job_store`, opened (connected and migrated); raises ConfigError or StoreError."""
    store = make_job_store(url)
    await store.open()
    return store
