"""SQLAlchemy engines for the SQL stores: which URL means which driver, SQLite's pragmas and locking.

Shared by every SQL store (runs and jobs now; the registry later), so they all lock the same way.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from modelfleet.errors import ConfigError
from modelfleet.store.schema import dumps, loads

Backend = Literal["sqlite", "postgresql"]

_EXAMPLES = "sqlite:///path/to/file.db or postgresql://user@host:5432/database"
_DRIVERS: dict[str, tuple[Backend, str]] = {
    "sqlite": ("sqlite", "sqlite+aiosqlite"),
    "sqlite+aiosqlite": ("sqlite", "sqlite+aiosqlite"),
    "postgresql": ("postgresql", "postgresql+asyncpg"),
    "postgresql+asyncpg": ("postgresql", "postgresql+asyncpg"),
}
# The execution option that makes a SQLite transaction begin with BEGIN IMMEDIATE (see on_begin).
WRITE_OPTION = "modelfleet_write"


@dataclass(frozen=True)
class StoreUrl:
    """A store URL resolved to its backend and the async driver URL SQLAlchemy is given."""

    backend: Backend
    driver_url: str
    sqlite_path: Path | None = None


def parse_store_url(url: str) -> StoreUrl:
    """Resolve ``sqlite:///path`` or ``postgresql://...``; raises ConfigError naming what is wrong.

    Messages name the scheme only, never the whole URL, which may hold a password.
    """
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise ConfigError(f"store_url: not a database URL; use {_EXAMPLES}")
    if scheme.lower() not in _DRIVERS:
        raise ConfigError(f"store_url: unsupported scheme {scheme!r}; use {_EXAMPLES}")
    backend, driver = _DRIVERS[scheme.lower()]
    try:
        parsed = make_url(url).set(drivername=driver)
    except (ArgumentError, ValueError) as err:
        raise ConfigError(f"store_url: cannot parse the {scheme} URL: {err}") from None
    if backend == "sqlite":
        database = parsed.database or ""
        in_memory = database.startswith("file::memory:") or parsed.query.get("mode") == "memory"
        if database in ("", ":memory:") or in_memory:
            raise ConfigError(
                "store_url: SQLite needs a file (sqlite:///path/to/file.db); "
                "an in-memory database is neither durable nor shared between processes"
            )
        return StoreUrl(backend, parsed.render_as_string(hide_password=False), Path(database))
    return StoreUrl(backend, parsed.render_as_string(hide_password=False))


async def connect_store_engine(url: StoreUrl, *, busy_timeout_ms: int = 10_000) -> AsyncEngine:
    """:func:`create_store_engine`, and for SQLite the file's folder created and the file in WAL mode.

    Raises what the driver raises when the database cannot be opened.
    """
    if url.sqlite_path is not None:
        url.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_store_engine(url, busy_timeout_ms=busy_timeout_ms)
    if url.backend == "sqlite":
        try:
            await _enable_wal(engine, busy_timeout_ms / 1000)
        except BaseException:
            await engine.dispose()
            raise
    return engine


async def _enable_wal(engine: AsyncEngine, timeout_s: float) -> None:
    # WAL lets readers go on while one process writes; it is stored in the file, so once is enough.
    # Switching needs an exclusive lock, and SQLite may report "locked" at once instead of waiting
    # out the busy timeout, so when several processes create the database together the losers
    # retry here, without blocking the event loop.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver_connection: Any = raw.driver_connection
        while True:
            try:
                cursor = await driver_connection.execute("PRAGMA journal_mode = WAL")
                mode = (await cursor.fetchone())[0]
                await cursor.close()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.005)
                continue
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"SQLite refused WAL mode (journal_mode is {mode})")
            return


def create_store_engine(url: StoreUrl, *, busy_timeout_ms: int = 10_000) -> AsyncEngine:
    """An engine for ``url``; on SQLite with a busy timeout, foreign keys and explicit BEGIN.

    ``busy_timeout_ms`` is how long SQLite waits for another connection's write lock before
    failing with "database is locked". Does no I/O: see :func:`connect_store_engine`.
    """
    if url.backend == "postgresql":
        return create_async_engine(
            url.driver_url, json_serializer=dumps, json_deserializer=loads, pool_pre_ping=True
        )
    engine = create_async_engine(url.driver_url, json_serializer=dumps, json_deserializer=loads)
    _install_sqlite_hooks(engine.sync_engine, busy_timeout_ms)
    return engine


def create_sync_sqlite_engine(url: StoreUrl, *, busy_timeout_ms: int = 10_000) -> Engine:
    """A blocking engine on the same SQLite file, with the same pragmas and locking as the async one.

    For a store's hot write path: one call on a dedicated thread runs a whole transaction,
    where the async driver pays an event-loop round trip for every statement, BEGIN and COMMIT.
    Raises ValueError for a PostgreSQL URL.
    """
    if url.sqlite_path is None:
        raise ValueError("a blocking engine is only made for SQLite")
    engine = create_engine(
        f"sqlite+pysqlite:///{url.sqlite_path}", json_serializer=dumps, json_deserializer=loads
    )
    _install_sqlite_hooks(engine, busy_timeout_ms)
    return engine


def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # The sqlite3 module's own transaction handling skips BEGIN before SELECT and DDL, which
        # breaks transactional migrations; SQLAlchemy emits BEGIN instead (see on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # In WAL mode NORMAL still survives any process crash; only a power loss can take the last
        # commits. FULL cost ~0.6 ms of fsync on every pipeline run's commit.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    def on_begin(connection: Connection) -> None:
        # A write transaction takes SQLite's write lock up front. A deferred one that reads first
        # could not upgrade its lock once another process has committed, and would fail at once
        # instead of waiting out the busy timeout.
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)


@contextmanager
def sync_write_transaction(engine: Engine) -> Iterator[Connection]:
    """:func:`write_transaction` for a blocking engine (``BEGIN IMMEDIATE`` on SQLite)."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            yield connection


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that will write: committed on exit, rolled back on error.

    On SQLite it begins with ``BEGIN IMMEDIATE``, so concurrent writers queue on the write lock
    (for up to the busy timeout) rather than fail when they upgrade a read lock.
    """
    async with engine.connect() as connection:
        await connection.execution_options(**{WRITE_OPTION: True})
        async with connection.begin():
            yield connection
