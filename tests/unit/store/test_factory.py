"""Choosing a store from its URL, and what the errors say when that is not possible."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError
from modelfleet.store import make_run_store, open_run_store
from modelfleet.store.engine import parse_store_url
from modelfleet.store.sql import SqlRunStore


@pytest.mark.parametrize(
    ("url", "backend", "driver_url"),
    [
        ("sqlite:///runs.db", "sqlite", "sqlite+aiosqlite:///runs.db"),
        ("sqlite:////var/lib/fleet/runs.db", "sqlite", "sqlite+aiosqlite:////var/lib/fleet/runs.db"),
        ("sqlite+aiosqlite:///.modelfleet/runs.db", "sqlite", "sqlite+aiosqlite:///.modelfleet/runs.db"),
        ("postgresql://fleet@db:5432/runs", "postgresql", "postgresql+asyncpg://fleet@db:5432/runs"),
        (
            "postgresql+asyncpg://fleet:s3cret@db/runs",
            "postgresql",
            "postgresql+asyncpg://fleet:s3cret@db/runs",
        ),
        ("POSTGRESQL://fleet@db/runs", "postgresql", "postgresql+asyncpg://fleet@db/runs"),
    ],
)
def test_a_url_maps_to_its_backend_and_async_driver(url: str, backend: str, driver_url: str) -> None:
    parsed = parse_store_url(url)

    assert parsed.backend == backend
    assert parsed.driver_url == driver_url


def test_the_sqlite_path_is_kept_for_creating_its_folder() -> None:
    assert parse_store_url("sqlite:////data/fleet/runs.db").sqlite_path == Path("/data/fleet/runs.db")
    assert parse_store_url("sqlite:///rel/runs.db").sqlite_path == Path("rel/runs.db")
    assert parse_store_url("postgresql://h/db").sqlite_path is None


def test_making_a_store_does_no_io(tmp_path: Path) -> None:
    store = make_run_store(f"sqlite:///{tmp_path / 'not' / 'yet' / 'runs.db'}")

    assert isinstance(store, SqlRunStore)
    assert store.backend == "sqlite"
    assert not (tmp_path / "not").exists()
    assert isinstance(make_run_store("postgresql://nobody@127.0.0.1:1/none"), SqlRunStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://user:hunter2@db/runs", "unsupported scheme 'mysql'"),
        ("postgres://user:hunter2@db/runs", "unsupported scheme 'postgres'"),
        ("postgresql+psycopg://user:hunter2@db/runs", "unsupported scheme 'postgresql+psycopg'"),
        ("redis://localhost", "unsupported scheme 'redis'"),
        ("runs.db", "not a database URL"),
        ("", "not a database URL"),
        ("sqlite://", "SQLite needs a file"),
        ("sqlite:///:memory:", "SQLite needs a file"),
        ("sqlite:///file::memory:?cache=shared&uri=true", "SQLite needs a file"),
    ],
)
def test_an_unusable_url_is_a_config_error_that_says_why(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="store_url") as caught:
        make_run_store(url)

    assert message in str(caught.value)
    assert "sqlite:///" in str(caught.value) or "SQLite" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_missing_postgres_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given asyncpg cannot be imported (None in sys.modules makes the import fail)
    monkeypatch.setitem(sys.modules, "asyncpg", None)

    # When a PostgreSQL store is asked for, then the error says what to install
    with pytest.raises(ConfigError, match=r"pip install 'modelfleet\[postgres\]'"):
        make_run_store("postgresql://fleet@db/runs")

    # And SQLite does not need it
    assert make_run_store("sqlite:///runs.db") is not None


def test_open_run_store_creates_the_sqlite_file_and_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "runs.db"

    async def body() -> None:
        store = await open_run_store(f"sqlite:///{path}")
        await store.close()

    asyncio.run(body())

    assert path.is_file()


def test_importing_the_store_package_imports_no_database_code() -> None:
    import subprocess

    code = (
        "import sys, modelfleet.store; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'asyncpg', 'aiosqlite')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
