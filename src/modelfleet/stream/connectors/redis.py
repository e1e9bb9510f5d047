"""Reading a Redis stream through a consumer group, and writing results to other streams.

- The input is the stream named ``source``, read by the group ``group`` (created at the start of
  the stream, with the stream itself, when missing) as the consumer ``consumer``.
- An entry's body is its ``body`` field when it has one; otherwise its fields as a JSON object of
  strings, so ``XADD in * text "I love it"`` is the input ``{"text": "I love it"}``. Results are
  written the same way: one entry with one field, ``body``.
- The id of a message is its entry id; ``attempt`` is the group's delivery count of the entry,
  which Redis raises on every hand-out, so it survives consumers dying.
- Unanswered entries stay in the group's pending list. This connector resets the idle time of the
  entries it holds every ``ack_timeout_s / 3`` (XCLAIM JUSTID leaves the count alone), and takes
  over other consumers' entries idle for ``ack_timeout_s`` (XAUTOCLAIM): those of a dead replica.
  A replica restarted under its own consumer name takes its own pending entries back at once.
- ``release`` makes the entry look idle for a year, so the next take-over, by any replica, hands
  it out again.
- ``ack`` is XACK only: the input stream belongs to its producer (and maybe to other groups), so
  nothing is deleted from it.

Needs Redis >= 6.2 (XAUTOCLAIM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from modelfleet.stream.connector import StreamError, StreamMessage

log = logging.getLogger("modelfleet.stream")

BODY_FIELD = b"body"
RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000
_MAX_TAKEOVER_INTERVAL_S = 5.0
_MIN_INTERVAL_S = 0.05


class RedisStreamConnector:
    """A StreamConnector on Redis Streams (see the module docstring); ``url`` is ``redis://host:port/db``."""

    def __init__(
        self,
        url: str,
        source: str,
        group: str,
        consumer: str,
        max_in_flight: int = 16,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.source = source
        self.group = group
        self.consumer = consumer
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self._ack_timeout_ms = max(1, round(ack_timeout_s * 1000))
        self._takeover_interval_s = min(_MAX_TAKEOVER_INTERVAL_S, max(_MIN_INTERVAL_S, ack_timeout_s / 2))
        self._client: redis.asyncio.Redis | None = None
        self._held: set[str] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._recovering = True
        self._recover_after = "-"
        self._takeover_cursor = "0-0"
        self._next_takeover = 0.0

    async def open(self) -> None:
        """Connect, check that Redis answers, and create the group; raises StreamError."""
        if self._client is not None:
            return
        try:
            client = redis.asyncio.Redis.from_url(self.url)
        except ValueError as err:
            raise StreamError(f"redis stream: bad url: {err}") from err
        try:
            with _translated("connect"):
                await client.ping()
                await self._create_group(client)
        except StreamError:
            await client.aclose()
            raise
        self._client = client
        self._takeover_cursor, self._next_takeover = "0-0", 0.0
        self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())

    async def close(self) -> None:
        """Disconnect; held entries stay pending and come back (see the module docstring).

        Entries still held stay this consumer's: after a reopen they are kept alive again and can
        still be acked. Only the first open takes back the consumer's pending entries (those of its
        previous process), so a reconnect does not hand out what is being worked on.
        """
        client, self._client = self._client, None
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def receive(self, max_messages: int, wait_s: float) -> list[StreamMessage]:
        """Own pending entries first (after a restart), then expired ones of others, then new ones."""
        client = self._connected()
        max_messages = min(max_messages, self.max_in_flight - len(self._held))
        if max_messages < 1:
            # Back-pressure: the caller holds max_in_flight unanswered messages already.
            await asyncio.sleep(wait_s)
            return []
        out: list[StreamMessage] = []
        with _translated(f"read stream {self.source!r}"):
            try:
                out += await self._take_back(client, max_messages)
                if len(out) < max_messages and time.monotonic() >= self._next_takeover:
                    out += await self._take_over(client, max_messages - len(out))
                if len(out) < max_messages:
                    out += await self._read_new(client, max_messages - len(out), 0.0 if out else wait_s)
            except ResponseError as err:
                if "NOGROUP" not in str(err):
                    raise
                # the stream (and so the group) was deleted behind our back
                await self._create_group(client)
        self._held.update(m.id for m in out)
        return out

    async def publish(self, topic: str, body: bytes, key: str | None = None) -> None:
        """XADD one entry with the field ``body`` (Redis has no de-duplication; ``key`` is unused)."""
        client = self._connected()
        with _translated(f"publish to {topic!r}"):
            await client.xadd(topic, {BODY_FIELD: body})

    async def ack(self, message: StreamMessage) -> None:
        client = self._connected()
        with _translated("ack"):
            await client.xack(self.source, self.group, message.id)
        self._held.discard(message.id)

    async def release(self, message: StreamMessage) -> None:
        self._held.discard(message.id)
        client = self._connected()
        with _translated("release"):
            await client.xclaim(
                self.source,
                self.group,
                self.consumer,
                min_idle_time=0,
                message_ids=[message.id],
                idle=RELEASED_IDLE_MS,
                justid=True,
            )
        self._next_takeover = 0.0

    def _connected(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise StreamError("the Redis stream connector is not open")
        return self._client

    async def _create_group(self, client: redis.asyncio.Redis) -> None:
        try:
            await client.xgroup_create(self.source, self.group, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def _take_back(self, client: redis.asyncio.Redis, count: int) -> list[StreamMessage]:
        """This consumer's own pending entries, left by its previous life; a page per call."""
        if not self._recovering:
            return []
        pending = await client.xpending_range(
            self.source, self.group, min=self._recover_after, max="+", count=count, consumername=self.consumer
        )
        if len(pending) < count:
            self._recovering = False
        if not pending:
            return []
        ids: list[Any] = [_text(p["message_id"]) for p in pending]
        self._recover_after = "(" + ids[-1]
        entries = await client.xclaim(
            self.source, self.group, self.consumer, min_idle_time=0, message_ids=ids
        )
        return await self._with_counts(client, entries)

    async def _take_over(self, client: redis.asyncio.Redis, count: int) -> list[StreamMessage]:
        """Entries idle for ack_timeout_s: their consumer died, or they were released."""
        reply = await client.xautoclaim(
            self.source,
            self.group,
            self.consumer,
            min_idle_time=self._ack_timeout_ms,
            start_id=self._takeover_cursor,
            count=count,
        )
        self._takeover_cursor = _text(reply[0])
        # A scan that stopped mid-list goes on at the next receive; a finished one waits a while.
        done = self._takeover_cursor == "0-0"
        self._next_takeover = time.monotonic() + (self._takeover_interval_s if done else 0.0)
        entries = [e for e in reply[1] if e[0] is not None and _text(e[0]) not in self._held]
        return await self._with_counts(client, entries)

    async def _read_new(self, client: redis.asyncio.Redis, count: int, wait_s: float) -> list[StreamMessage]:
        # Never block past the next take-over, and never with BLOCK 0, which waits forever.
        wait_s = min(wait_s, max(0.0, self._next_takeover - time.monotonic()))
        block_ms = round(wait_s * 1000) or None
        reply = await client.xreadgroup(
            self.group, self.consumer, {self.source: ">"}, count=count, block=block_ms
        )
        return [
            StreamMessage(_text(entry_id), _body_of(fields), 1)
            for entry_id, fields in _entries_of(reply)
            if entry_id is not None
        ]

    async def _with_counts(self, client: redis.asyncio.Redis, entries: list[Any]) -> list[StreamMessage]:
        """Messages for claimed entries, each with its delivery count (raised by the claim)."""
        entries = [e for e in entries if e and e[0] is not None and e[1] is not None]
        if not entries:
            return []
        pipe = client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.source, self.group, min=entry_id, max=entry_id, count=1)
        counts = await pipe.execute()
        out = []
        for (entry_id, fields), pending in zip(entries, counts, strict=True):
            attempt = int(pending[0]["times_delivered"]) if pending else 1
            out.append(StreamMessage(_text(entry_id), _body_of(fields), attempt))
        return out

    async def _keep_alive(self) -> None:
        interval_s = max(_MIN_INTERVAL_S, self.ack_timeout_s / 3)
        while True:
            await asyncio.sleep(interval_s)
            client, held = self._client, list[Any](self._held)
            if client is None or not held:
                continue
            try:
                await client.xclaim(
                    self.source, self.group, self.consumer, min_idle_time=0, message_ids=held, justid=True
                )
            except (RedisError, OSError) as err:
                log.warning("redis stream %s: cannot keep %d messages: %r", self.source, len(held), err)


def _entries_of(reply: Any) -> list[tuple[Any, Any]]:
    """The entries of an XREADGROUP answer on one stream, in the RESP2 or the RESP3 shape."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
        return [e for entries in streams for part in entries for e in (part or [])]
    return [e for _, entries in reply for e in (entries or [])]


def _body_of(fields: dict[bytes, bytes]) -> bytes:
    body = fields.get(BODY_FIELD)
    if body is not None:
        return body
    return orjson.dumps({_text(k): _text(v) for k, v in fields.items()})


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as err:
        raise StreamError(f"redis stream: cannot {action}: {err!r}") from err
