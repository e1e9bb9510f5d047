"""Backends for the contract suite: each test body runs against real SQLite and real PostgreSQL.

PostgreSQL is the server at MODELFLEET_TEST_POSTGRES_URL (default: local, user postgres). Each
test gets a fresh database, named after this session, dropped after the test. When the server
is unreachable the PostgreSQL cases skip, except under CI=true, where they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.conftest import PostgresServer

from modelfleet.store.engine import connect_store_engine, parse_store_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database of each backend; the SQLite file's folder does not exist yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'runs.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url_of(name)
    server.drop_database(name)


@asynccontextmanager
async def engine_of(url: str) -> AsyncIterator[AsyncEngine]:
    """A separate engine on a store's database, to look at it from outside the store."""
    engine = await connect_store_engine(parse_store_url(url))
    try:
        yield engine
    finally:
        await engine.dispose()
