"""Backends for the contract suite: each test body runs against real SQLite and real PostgreSQL.

PostgreSQL is the server at MODELFLEET_TEST_POSTGRES_URL (default: local, user postgres). Each
test gets a fresh database, named after this session, dropped after the test. When the server
is unreachable the PostgreSQL cases skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

ADMIN_URL = os.environ.get("MODELFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
CONNECT_TIMEOUT_S = 5.0


class PostgresServer:
    """Creates and drops throw-away databases on the test server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"modelfleet_test_{secrets.token_hex(4)}"
        self.created: list[str] = []

    def url_of(self, database: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"

    def create_database(self) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        # template0: template1 refuses to be copied while anyone else is connected to it.
        asyncio.run(self._execute(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        self.created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test that failed half-way may have left connections open.
        asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _execute(self, statement: str) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.admin_url, timeout=CONNECT_TIMEOUT_S)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(ADMIN_URL)
    try:
        asyncio.run(server._execute("SELECT 1"))
    except Exception as err:  # any reason at all: not installed, refused, timed out, bad login
        message = f"PostgreSQL is not reachable at {_redacted(ADMIN_URL)}: {type(err).__name__}: {err}"
        if IN_CI:
            pytest.fail(message + " (CI=true, so this fails rather than skips)")
        pytest.skip(message)
    yield server
    for name in server.created:
        server.drop_database(name)


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


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"
