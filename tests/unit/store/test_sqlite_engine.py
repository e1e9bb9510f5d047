"""How SQLite connections are set up for several processes sharing one file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import text

from modelfleet.store.engine import connect_store_engine, parse_store_url, write_transaction


def test_sqlite_connections_use_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    async def body() -> tuple[Any, ...]:
        url = parse_store_url(f"sqlite:///{tmp_path / 'new' / 'runs.db'}")
        engine = await connect_store_engine(url, busy_timeout_ms=1234)
        try:
            async with engine.connect() as connection:
                return tuple(
                    [
                        (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                        for name in ("journal_mode", "busy_timeout", "foreign_keys")
                    ]
                )
        finally:
            await engine.dispose()

    assert asyncio.run(body()) == ("wal", 1234, 1)


def test_a_write_transaction_holds_the_write_lock_from_its_start(tmp_path: Path) -> None:
    # Given one connection inside a write transaction that has not written anything yet
    async def body() -> str:
        url = parse_store_url(f"sqlite:///{tmp_path / 'runs.db'}")
        engine = await connect_store_engine(url, busy_timeout_ms=50)
        try:
            async with write_transaction(engine):
                # When a second connection tries to write, then it finds the database locked
                try:
                    async with write_transaction(engine) as other:
                        await other.execute(text("CREATE TABLE t (x INTEGER)"))
                except Exception as err:
                    return str(err)
                return "no error"
        finally:
            await engine.dispose()

    assert "database is locked" in asyncio.run(body())
