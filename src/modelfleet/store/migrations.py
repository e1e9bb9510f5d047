"""Versioned schema migrations for the SQL stores, run by ``open()``; no alembic.

Each migration runs in its own transaction, holding a lock that serialises every process
migrating the same database: ``pg_advisory_xact_lock`` on PostgreSQL, SQLite's write lock
(``BEGIN IMMEDIATE``) on SQLite. Under the lock the runner re-reads ``schema_migrations``, so a
migration another process applied meanwhile is skipped. DDL is transactional on both databases,
so a migration that fails leaves nothing behind.

Adding a migration: append to MIGRATIONS with the next version and change the tables in
:mod:`modelfleet.store.schema` to match. A migration that has shipped never changes; if it
creates a table from ``schema`` and a later migration alters that table, first copy the old
definition into the earlier migration, or fresh databases would get the new shape twice.

SQLite cannot make a column nullable in place, so such a migration rebuilds the table: it is marked
``rebuilds_sqlite_tables`` and runs with foreign key enforcement off (otherwise dropping the old
table would cascade into the tables that reference it), and the foreign keys are checked before
it commits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelfleet.store.engine import WRITE_OPTION, StoreUrl, connect_store_engine, write_transaction
from modelfleet.store.errors import StoreError
from modelfleet.store.schema import (
    UtcDateTime,
    alias_events,
    job_results,
    jobs,
    metadata,
    model_aliases,
    model_versions,
    registered_models,
    rollouts,
    run_steps,
    runs,
    schema_migrations,
    training_jobs,
)

# Any constant will do, as long as every modelfleet process uses the same one ("mflt").
_ADVISORY_LOCK_KEY = 0x6D666C74


@dataclass(frozen=True)
class Migration:
    """One schema change: ``apply`` issues its DDL on a connection inside the migration's transaction.

    ``rebuilds_sqlite_tables``: on SQLite the transaction runs with foreign key enforcement off and
    ``legacy_alter_table`` on (a renamed table's referencing tables keep naming it), and commits only
    when ``PRAGMA foreign_key_check`` finds nothing.
    """

    version: int
    name: str
    apply: Callable[[AsyncConnection], Awaitable[None]]
    rebuilds_sqlite_tables: bool = False


class MigrationFailed(StoreError):
    """Raised when a migration would leave rows that break a foreign key (it is rolled back)."""


async def _create_runs(connection: AsyncConnection) -> None:
    await connection.run_sync(metadata.create_all, tables=[runs, run_steps], checkfirst=False)


# The jobs table as migration 2 created it; migration 4 changed it.
_jobs_before_batches = Table(
    "jobs",
    MetaData(naming_convention=metadata.naming_convention),
    Column("id", String, primary_key=True),
    Column("target_kind", String, nullable=False),
    Column("target", String, nullable=False),
    Column("status", String, nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("callback_url", Text),
    Column("error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Index(None, "status", "created_at"),
)


async def _create_jobs(connection: AsyncConnection) -> None:
    def create(sync: Connection) -> None:
        # One table at a time: the old jobs table is on its own MetaData, so create_all could not
        # order it before job_results, whose foreign key PostgreSQL checks when the table is created.
        _jobs_before_batches.create(sync, checkfirst=False)
        job_results.create(sync, checkfirst=False)

    await connection.run_sync(create)


async def _create_registry(connection: AsyncConnection) -> None:
    tables = [registered_models, model_versions, model_aliases, alias_events, rollouts, training_jobs]
    await connection.run_sync(metadata.create_all, tables=tables, checkfirst=False)


async def _add_batch_jobs(connection: AsyncConnection) -> None:
    """A nullable ``jobs.total`` and a ``jobs.batch`` column, and the batch jobs stored before moved in.

    Before, a batch job's BatchSpec was stored as its result at position -1 and an uncounted
    total as -1.
    """
    if connection.dialect.name == "sqlite":
        await _rebuild_sqlite_jobs(connection)
    else:
        await connection.execute(text("ALTER TABLE jobs ALTER COLUMN total DROP NOT NULL"))
        await connection.execute(text("ALTER TABLE jobs ADD COLUMN batch json"))
    spec = "FROM job_results WHERE job_results.job_id = jobs.id AND job_results.position = -1"
    await connection.execute(
        text(f"UPDATE jobs SET batch = (SELECT job_results.output {spec}) WHERE EXISTS (SELECT 1 {spec})")
    )
    await connection.execute(text("DELETE FROM job_results WHERE position = -1"))
    await connection.execute(text("UPDATE jobs SET total = NULL WHERE total = -1"))


async def _rebuild_sqlite_jobs(connection: AsyncConnection) -> None:
    # The old table is renamed away rather than dropped last: so the new one is created exactly as a
    # fresh database gets it. With legacy_alter_table on and foreign keys off (see the migration
    # runner), job_results keeps referencing "jobs", which is the new table from then on.
    await connection.execute(text("ALTER TABLE jobs RENAME TO jobs_before_batches"))
    # Indexes stay with the renamed table under their names, which the new table's need.
    await connection.execute(text("DROP INDEX ix_jobs_status_created_at"))
    await connection.run_sync(lambda sync: jobs.create(sync, checkfirst=False))
    names = ", ".join(column.name for column in _jobs_before_batches.columns)
    await connection.execute(text(f"INSERT INTO jobs ({names}) SELECT {names} FROM jobs_before_batches"))
    await connection.execute(text("DROP TABLE jobs_before_batches"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs and run_steps", _create_runs),
    Migration(2, "jobs and job_results", _create_jobs),
    Migration(3, "registry", _create_registry),
    Migration(4, "batch jobs", _add_batch_jobs, rebuilds_sqlite_tables=True),
)


async def connect_and_migrate(url: StoreUrl, *, busy_timeout_ms: int = 10_000) -> AsyncEngine:
    """An engine on ``url`` whose database has every migration applied: what a SQL store's ``open`` needs.

    Every store migrates the whole schema, not only its own tables, so whichever store opens a
    database first leaves it complete. Raises what the driver or a migration raises; the engine
    is disposed of then.
    """
    engine = await connect_store_engine(url, busy_timeout_ms=busy_timeout_ms)
    try:
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations the database lacks, oldest first; returns the versions applied by this call.

    Raises ValueError when ``migrations`` are not in strictly increasing version order,
    MigrationFailed when a table rebuild breaks a foreign key, and whatever the database raises
    when a migration fails (that migration is rolled back either way).
    """
    versions = [migration.version for migration in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be unique and increasing, got {versions}")
    # Most opens find nothing to do; checking without the lock keeps them from queueing on it.
    async with engine.connect() as connection:
        done = await _applied_versions(connection)
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        async with _migration_lock(engine, migration.rebuilds_sqlite_tables) as connection:
            await connection.run_sync(schema_migrations.create, checkfirst=True)
            if migration.version in await _applied_versions(connection):
                continue
            await migration.apply(connection)
            await connection.execute(
                schema_migrations.insert().values(
                    version=migration.version, name=migration.name, applied_at=datetime.now(UTC)
                )
            )
        applied.append(migration.version)
    return applied


async def applied_migrations(engine: AsyncEngine) -> list[int]:
    """The versions recorded in ``schema_migrations``, ascending (empty for a new database)."""
    async with engine.connect() as connection:
        return sorted(await _applied_versions(connection))


async def _applied_versions(connection: AsyncConnection) -> set[int]:
    exists = await connection.run_sync(lambda sync: inspect(sync).has_table(schema_migrations.name))
    if not exists:
        return set()
    rows = await connection.execute(select(schema_migrations.c.version))
    return set(rows.scalars())


@asynccontextmanager
async def _migration_lock(
    engine: AsyncEngine, rebuilds_sqlite_tables: bool
) -> AsyncIterator[AsyncConnection]:
    if engine.dialect.name == "sqlite" and rebuilds_sqlite_tables:
        async with _sqlite_rebuild_transaction(engine) as connection:
            yield connection
        return
    async with write_transaction(engine) as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        yield connection


@asynccontextmanager
async def _sqlite_rebuild_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """:func:`write_transaction` with foreign keys off and legacy_alter_table on, checked before commit.

    Both pragmas are set on the driver's connection before BEGIN, because SQLite ignores
    ``foreign_keys`` inside a transaction, and reset after it, whatever happened, before the
    connection goes back to the pool.
    """
    async with engine.connect() as connection:
        driver_connection = (await connection.get_raw_connection()).driver_connection
        await _pragmas(driver_connection, "PRAGMA foreign_keys = OFF", "PRAGMA legacy_alter_table = ON")
        try:
            await connection.execution_options(**{WRITE_OPTION: True})
            async with connection.begin():
                yield connection
                broken = (await connection.execute(text("PRAGMA foreign_key_check"))).all()
                if broken:
                    raise MigrationFailed(
                        f"the migration leaves {len(broken)} row(s) whose foreign key points nowhere, "
                        f"first in table {broken[0][0]!r}"
                    )
        finally:
            try:
                await _pragmas(
                    driver_connection, "PRAGMA foreign_keys = ON", "PRAGMA legacy_alter_table = OFF"
                )
            except BaseException:
                # A connection whose pragmas are unknown must not serve anyone else.
                await connection.invalidate()
                raise


async def _pragmas(driver_connection: Any, *statements: str) -> None:
    for statement in statements:
        cursor = await driver_connection.execute(statement)
        await cursor.close()
