"""The embedded broker: durable queues in one SQLite file, no server needed.

A message is a row. Handing it out stamps a lease (a random token) and hides the row until
``visible_at``; ack deletes the row, nack makes it visible at once, and a lease that runs out
makes it visible to the next receive, which is how a dead or hung consumer's work comes back.
Every change runs in a ``BEGIN IMMEDIATE`` transaction, so several processes can share the file.
WAL mode with ``synchronous=NORMAL``: a committed message survives a crash of any process; a power
loss may lose the last transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from modelfleet.broker.broker import BrokerError, DeadLetter, Delivery
from modelfleet.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL,
    lease TEXT,
    enqueued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS broker_messages_ready ON broker_messages (queue, visible_at, seq);
CREATE TABLE IF NOT EXISTS broker_dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS broker_dead_letters_queue ON broker_dead_letters (queue, seq);
"""

# Polling bounds for receivers in other processes; a publish in this process wakes them at once.
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.05


def _path_of(url: str) -> Path:
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ConfigError(
            f"broker_url: expected sqlite:///path/to/broker.db, got {url.split('://')[0]}://..."
        )
    path = url[len("sqlite:///") :]
    if path in (":memory:", ""):
        raise ConfigError("broker_url: the embedded broker must be durable; give it a file path")
    return Path(path)


class SqliteBroker:
    """Durable queues in a SQLite file (see the module docstring)."""

    def __init__(self, url: str, visibility_timeout_s: float = 30.0, max_attempts: int = 5) -> None:
        if visibility_timeout_s <= 0 or max_attempts < 1:
            raise ConfigError("broker: visibility_timeout_s must be > 0 and max_attempts >= 1")
        self.path = _path_of(url)
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._published = asyncio.Event()

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, isolation_level=None)
            await db.execute("PRAGMA busy_timeout = 10000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise BrokerError(f"cannot open the embedded broker at {self.path}: {err}") from err
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise BrokerError("the broker is closed")
        return self._db

    async def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        db = self._conn()
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    await db.execute(sql, params)
                await db.execute("COMMIT")
            except sqlite3.Error as err:
                await db.execute("ROLLBACK")
                raise BrokerError(f"embedded broker write failed: {err}") from err

    async def publish(self, queue: str, body: bytes, message_id: str | None = None) -> str:
        message_id = message_id or uuid.uuid4().hex
        now = time.time()
        await self._write(
            [
                (
                    "INSERT INTO broker_messages (queue, message_id, body, attempts, visible_at, enqueued_at)"
                    " VALUES (?, ?, ?, 0, ?, ?)",
                    (queue, message_id, body, now, now),
                )
            ]
        )
        self._published.set()
        return message_id

    async def _take(self, queue: str, max_messages: int) -> list[Delivery]:
        db = self._conn()
        deliveries: list[Delivery] = []
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                now = time.time()
                cursor = await db.execute(
                    "SELECT seq, message_id, body, attempts, lease FROM broker_messages"
                    " WHERE queue = ? AND visible_at <= ? ORDER BY seq LIMIT ?",
                    (queue, now, max_messages),
                )
                rows = list(await cursor.fetchall())
                for seq, message_id, body, attempts, lease in rows:
                    if lease is not None and attempts >= self.max_attempts:
                        # Its last allowed delivery ran out unanswered: stop feeding it to consumers.
                        await self._bury(
                            db,
                            seq,
                            queue,
                            message_id,
                            body,
                            attempts,
                            f"delivered {attempts} times without an answer (its consumer died or hung)",
                            now,
                        )
                        continue
                    token = secrets.token_hex(8)
                    await db.execute(
                        "UPDATE broker_messages SET attempts = ?, lease = ?, visible_at = ? WHERE seq = ?",
                        (attempts + 1, token, now + self.visibility_timeout_s, seq),
                    )
                    deliveries.append(Delivery(queue, message_id, bytes(body), attempts + 1, (seq, token)))
                await db.execute("COMMIT")
            except sqlite3.Error as err:
                await db.execute("ROLLBACK")
                raise BrokerError(f"embedded broker receive failed: {err}") from err
        return deliveries

    @staticmethod
    async def _bury(
        db: aiosqlite.Connection,
        seq: int,
        queue: str,
        message_id: str,
        body: bytes,
        attempts: int,
        error: str,
        now: float,
    ) -> None:
        await db.execute("DELETE FROM broker_messages WHERE seq = ?", (seq,))
        await db.execute(
            "INSERT INTO broker_dead_letters (queue, message_id, body, attempts, error, failed_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (queue, message_id, body, attempts, error, now),
        )

    async def receive(
        self, queue: str, consumer: str, max_messages: int = 1, wait_s: float = 1.0
    ) -> list[Delivery]:
        deadline = time.monotonic() + wait_s
        pause_s = _POLL_MIN_S
        while True:
            self._published.clear()
            deliveries = await self._take(queue, max_messages)
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._published.wait(), timeout=min(pause_s, remaining))
            pause_s = min(pause_s * 2, _POLL_MAX_S)

    def _receipt(self, delivery: Delivery) -> tuple[int, str]:
        seq, token = delivery.receipt
        return int(seq), str(token)

    async def ack(self, delivery: Delivery) -> None:
        seq, token = self._receipt(delivery)
        # A lease that ran out and went to another consumer no longer matches: that delivery decides.
        await self._write([("DELETE FROM broker_messages WHERE seq = ? AND lease = ?", (seq, token))])

    async def nack(self, delivery: Delivery, error: str) -> None:
        seq, token = self._receipt(delivery)
        if delivery.attempt >= self.max_attempts:
            now = time.time()
            await self._write(
                [
                    (
                        "INSERT INTO broker_dead_letters"
                        " (queue, message_id, body, attempts, error, failed_at)"
                        " SELECT queue, message_id, body, attempts, ?, ? FROM broker_messages"
                        " WHERE seq = ? AND lease = ?",
                        (error, now, seq, token),
                    ),
                    ("DELETE FROM broker_messages WHERE seq = ? AND lease = ?", (seq, token)),
                ]
            )
            return
        await self._write(
            [
                (
                    "UPDATE broker_messages SET lease = NULL, visible_at = ? WHERE seq = ? AND lease = ?",
                    (time.time(), seq, token),
                )
            ]
        )
        self._published.set()

    async def extend(self, delivery: Delivery) -> None:
        seq, token = self._receipt(delivery)
        await self._write(
            [
                (
                    "UPDATE broker_messages SET visible_at = ? WHERE seq = ? AND lease = ?",
                    (time.time() + self.visibility_timeout_s, seq, token),
                )
            ]
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        cursor = await self._conn().execute(
            "SELECT message_id, body, attempts, error, failed_at FROM broker_dead_letters"
            " WHERE queue = ? ORDER BY seq LIMIT ?",
            (queue, limit),
        )
        return [
            DeadLetter(
                queue, message_id, bytes(body), attempts, error, datetime.fromtimestamp(failed_at, UTC)
            )
            for message_id, body, attempts, error, failed_at in await cursor.fetchall()
        ]

    async def depth(self, queue: str) -> int:
        cursor = await self._conn().execute("SELECT COUNT(*) FROM broker_messages WHERE queue = ?", (queue,))
        row = await cursor.fetchone()
        return int(row[0]) if row else 0
