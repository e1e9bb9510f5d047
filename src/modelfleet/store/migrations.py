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
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelfleet.store.engine import StoreUrl, connect_store_engine, write_transaction
from modelfleet.store.schema import (
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
    """One schema change: ``apply`` issues its DDL on a connection inside the migration's transaction."""

    version: int
    name: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


async def _create_runs(connection: AsyncConnection) -> None:
    await connection.run_sync(metadata.create_all, tables=[runs, run_steps], checkfirst=False)


async def _create_jobs(connection: AsyncConnection) -> None:
    await connection.run_sync(metadata.create_all, tables=[jobs, job_results], checkfirst=False)


async def _create_registry(connection: AsyncConnection) -> None:
    tables = [registered_models, model_versions, model_aliases, alias_events, rollouts, training_jobs]
    await connection.run_sync(metadata.create_all, tables=tables, checkfirst=False)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs and run_steps", _create_runs),
    Migration(2, "jobs and job_results", _create_jobs),
    Migration(3, "registry", _create_registry),
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

    Raises ValueError when ``migrations`` are not in strictly increasing version order, and
    whatever the database raises when a migration fails (that migration is rolled back).
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
        async with _migration_lock(engine) as connection:
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
async def _migration_lock(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with write_transaction(engine) as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        yield connection
