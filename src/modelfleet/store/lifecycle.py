"""The engine a SQL store works through: connected and migrated once on open, disposed on close."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from modelfleet.store.engine import Backend, parse_store_url
from modelfleet.store.errors import StoreError
from modelfleet.store.migrations import connect_and_migrate
from modelfleet.store.translation import translated


class StoreEngine:
    """Shared by the run and job stores, so opening, migrating and closing behave the same in both.

    ``name`` goes into error messages ("the job store is not open"); ``rejected`` is the error a
    store raises when the database refuses its data. Raises ConfigError for a URL it cannot use.
    """

    def __init__(self, url: str, busy_timeout_ms: int, name: str, rejected: type[StoreError]) -> None:
        self.url = parse_store_url(url)
        self._busy_timeout_ms = busy_timeout_ms
        self._name = name
        self._rejected = rejected
        self._engine: AsyncEngine | None = None
        self._opening = asyncio.Lock()

    @property
    def backend(self) -> Backend:
        return self.url.backend

    async def open(self) -> None:
        async with self._opening:
            if self._engine is not None:
                return
            with translated(f"opening the {self._name}", self._rejected):
                self._engine = await connect_and_migrate(self.url, busy_timeout_ms=self._busy_timeout_ms)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    def get(self) -> AsyncEngine:
        """The open engine; raises StoreError when the store has not been opened (or was closed)."""
        if self._engine is None:
            raise StoreError(f"the {self._name} is not open; call open() first")
        return self._engine
