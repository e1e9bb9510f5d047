"""The results store: pipeline runs kept in SQLite (the embedded default) or PostgreSQL.

``make_run_store(url)`` picks the implementation from the URL's scheme and imports its driver
only then, so importing this package needs neither SQLAlchemy's drivers nor asyncpg.
"""

from __future__ import annotations

from modelfleet.errors import ConfigError
from modelfleet.store.errors import RunNotFound, RunRejected, StoreError
from modelfleet.store.records import PipelineRun, RunPage, RunStatus, StepRecord, StepStatus
from modelfleet.store.store import MAX_LIST_LIMIT, RunStore
from modelfleet.store.writer import RunWriter

__all__ = [
    "MAX_LIST_LIMIT",
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
    "make_run_store",
    "open_run_store",
]

_INSTALL_HINTS = {
    "sqlite": ("aiosqlite", "pip install aiosqlite"),
    "postgresql": ("asyncpg", "pip install 'modelfleet[postgres]'"),
}


def make_run_store(url: str) -> RunStore:
    """A closed store for ``url`` (``sqlite:///path`` or ``postgresql://...``); call ``open()`` next.

    Raises ConfigError naming a bad scheme, or saying what to install when the driver is missing.
    """
    from modelfleet.store.engine import parse_store_url

    backend = parse_store_url(url).backend
    module, hint = _INSTALL_HINTS[backend]
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"store_url: {backend} needs the {module} driver: {hint}") from None
    from modelfleet.store.sql import SqlRunStore

    return SqlRunStore(url)


async def open_run_store(url: str) -> RunStore:
    """:func:`make_run_store`, opened (connected and migrated); raises ConfigError or StoreError."""
    store = make_run_store(url)
    await store.open()
    return store
