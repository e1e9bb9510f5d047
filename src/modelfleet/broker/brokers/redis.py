"""The Broker on Redis Streams: one stream per queue, read through one consumer group.

How the shared semantics (see ``modelfleet.broker.broker``) map onto Redis, and why:

- Queue ``q`` is the stream ``mf:{q}``, read by the group ``mf``; its dead letters are the stream
  ``mf:{q}:dead``. The braces are a Redis Cluster hash tag: all keys of one queue share a slot, so one
  script may touch them together.
- A delivery is an entry of the group's pending list (PEL). ``attempt`` is the entry's delivery count,
  which Redis itself raises on every hand-out (XREADGROUP, XAUTOCLAIM), so it survives consumers dying.
- The visibility timeout is the PEL idle time: ``receive`` first takes over entries idle for at least
  ``visibility_timeout_s`` (XAUTOCLAIM), then reads new ones. ``extend`` resets the idle time (XCLAIM
  JUSTID, which leaves the count alone); ``nack`` pushes it far past any timeout, so the next ``receive``
  of any consumer takes the message, before new ones. A closed connection changes nothing in the PEL:
  the deliveries of a dead consumer simply expire.
- A taken-over entry whose count now exceeds ``max_attempts`` had its last delivery expire unanswered:
  it is dead-lettered instead of handed out. ``nack`` of the delivery with ``attempt == max_attempts``
  dead-letters too.
- ``ack`` is XACK + XDEL, and dead-lettering removes the entry as well, so the stream holds exactly the
  messages waiting or in flight: ``depth`` is XLEN.
- Every step that reads and then writes runs as one Lua script: atomic, and one round trip.

Needs Redis >= 6.2 (XAUTOCLAIM); tested on 7.0.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from modelfleet.broker.broker import BrokerError, DeadLetter, Delivery
from modelfleet.errors import ConfigError

GROUP = "mf"

# A nacked entry is made this idle, so any consumer takes it over at once, whatever its own timeout.
NACKED_IDLE_MS = 365 * 24 * 3600 * 1000

# While a receive waits, it wakes at least this often to take over expired or nacked entries: a
# blocking XREADGROUP only returns for new messages.
MAX_POLL_INTERVAL_S = 1.0
MIN_POLL_INTERVAL_S = 0.05

# Shared by the scripts: the fields of a stream entry, and the dead-lettering of one entry.
_LUA_HELPERS = """
local function field_of(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function dead_letter(stream, dead, group, entry_id, fields, attempts, error)
  local now = redis.call('TIME')
  local failed_at_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XADD', dead, '*',
    'id', field_of(fields, 'id') or entry_id, 'body', field_of(fields, 'body') or '',
    'attempts', attempts, 'error', error, 'failed_at_ms', failed_at_ms)
  redis.call('XACK', stream, group, entry_id)
  redis.call('XDEL', stream, entry_id)
end
"""

# KEYS: stream, dead letters, take-over cursor. ARGV: group, consumer, max messages, visibility ms,
# max attempts. Returns a flat list: entry id, message id, body, attempt; repeated.
_RECEIVE_LUA = (
    _LUA_HELPERS
    + """
local stream, dead, cursor_key = KEYS[1], KEYS[2], KEYS[3]
local group, consumer = ARGV[1], ARGV[2]
local wanted, visibility_ms, max_attempts = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local out, taken = {}, 0

-- XAUTOCLAIM examines at most 10 * COUNT pending entries per call; the cursor is kept between calls
-- so that expired entries deep in a long pending list are found too. A scan that began mid-way
-- and reached the end wraps to the start once.
local first_cursor = redis.call('GET', cursor_key) or '0-0'
local cursor = first_cursor
for pass = 1, 2 do
  local claimed = redis.call('XAUTOCLAIM', stream, group, consumer, visibility_ms, cursor,
                             'COUNT', wanted - taken)
  cursor = claimed[1]
  for _, entry in ipairs(claimed[2]) do
    if type(entry) == 'table' and type(entry[2]) == 'table' then
      local entry_id, fields = entry[1], entry[2]
      local count = tonumber(redis.call('XPENDING', stream, group, entry_id, entry_id, 1)[1][4])
      if count > max_attempts then
        -- its last delivery, number max_attempts, expired unanswered
        dead_letter(stream, dead, group, entry_id, fields, count - 1,
          'delivered ' .. (count - 1) .. ' times without an answer (its consumer died or hung)')
      else
        out[#out + 1] = entry_id
        out[#out + 1] = field_of(fields, 'id') or entry_id
        out[#out + 1] = field_of(fields, 'body') or ''
        out[#out + 1] = count
        taken = taken + 1
      end
    end
  end
  if taken >= wanted or cursor ~= '0-0' or pass == 2 or first_cursor == '0-0' then break end
end
if cursor ~= first_cursor then
  if cursor == '0-0' then redis.call('DEL', cursor_key) else redis.call('SET', cursor_key, cursor) end
end

if taken < wanted then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', wanted - taken,
                          'STREAMS', stream, '>')
  if read then
    for _, entry in ipairs(read[1][2]) do
      out[#out + 1] = entry[1]
      out[#out + 1] = field_of(entry[2], 'id') or entry[1]
      out[#out + 1] = field_of(entry[2], 'body') or ''
      out[#out + 1] = 1
    end
  end
end
return out
"""
)

# A late answer (the entry expired and went to another consumer since, or is gone) must not touch the
# newer delivery, so nack and extend act only while the entry's count is still the delivery's attempt.
_CURRENT_OWNER_LUA = """
local function current_owner(stream, group, entry_id, attempt)
  local pending = redis.call('XPENDING', stream, group, entry_id, entry_id, 1)
  if #pending == 0 or tonumber(pending[1][4]) ~= attempt then return nil end
  return pending[1][2]
end
"""

# KEYS: stream, dead letters. ARGV: group, entry id, attempt, max attempts, error, nacked idle ms.
# Returns 0 for a late answer, 1 when handed back, 2 when dead-lettered.
_NACK_LUA = (
    _LUA_HELPERS
    + _CURRENT_OWNER_LUA
    + """
local stream, dead = KEYS[1], KEYS[2]
local group, entry_id, attempt, max_attempts = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local owner = current_owner(stream, group, entry_id, attempt)
if not owner then return 0 end
if attempt >= max_attempts then
  local entries = redis.call('XRANGE', stream, entry_id, entry_id)
  local fields = entries[1] and entries[1][2] or {}
  dead_letter(stream, dead, group, entry_id, fields, attempt, ARGV[5])
  return 2
end
-- JUSTID: the count is raised by the take-over that hands it out again, not here
redis.call('XCLAIM', stream, group, owner, 0, entry_id, 'IDLE', ARGV[6], 'JUSTID')
return 1
"""
)

# KEYS: stream. ARGV: group, entry id, attempt. Returns 1 when extended, 0 for a late call.
_EXTEND_LUA = (
    _CURRENT_OWNER_LUA
    + """
local owner = current_owner(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
if not owner then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], owner, 0, ARGV[2], 'JUSTID')
return 1
"""
)

# KEYS: stream. ARGV: group, entry id. Removing the entry keeps XLEN equal to the queue's depth.
_ACK_LUA = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""


def stream_key(queue: str) -> str:
    """The stream that holds ``queue``'s waiting and in-flight messages."""
    return f"mf:{{{queue}}}"


def dead_key(queue: str) -> str:
    """The stream that holds ``queue``'s dead letters, oldest first."""
    return f"mf:{{{queue}}}:dead"


def cursor_key(queue: str) -> str:
    """Where the take-over scan of ``queue``'s pending list resumes."""
    return f"mf:{{{queue}}}:cursor"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class RedisBroker:
    """A Broker on Redis Streams with consumer groups (Redis >= 6.2); ``url`` is ``redis://host:port/db``.

    Raises ConfigError for a visibility timeout or attempt limit that cannot work, BrokerError when
    Redis cannot be reached, refuses an operation, or the broker is closed.
    """

    def __init__(self, url: str, visibility_timeout_s: float = 30.0, max_attempts: int = 5) -> None:
        if visibility_timeout_s <= 0:
            raise ConfigError(f"visibility_timeout_s: must be positive, got {visibility_timeout_s}")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts: must be at least 1, got {max_attempts}")
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self._visibility_ms = max(1, round(visibility_timeout_s * 1000))
        self._poll_interval_s = min(MAX_POLL_INTERVAL_S, max(MIN_POLL_INTERVAL_S, visibility_timeout_s / 4))
        self._client: redis.asyncio.Redis | None = None
        self._grouped_queues: set[str] = set()
        # registered on open(), as they are bound to the client
        self._receive_script: AsyncScript
        self._nack_script: AsyncScript
        self._extend_script: AsyncScript
        self._ack_script: AsyncScript

    async def open(self) -> None:
        """Connect and check that Redis answers; raises BrokerError."""
        if self._client is not None:
            return
        try:
            client = redis.asyncio.Redis.from_url(self.url)
        except ValueError as err:
            raise BrokerError(f"redis broker: bad url {_redacted(self.url)}: {err}") from err
        try:
            await client.ping()
        except RedisError as err:
            await client.aclose()
            raise BrokerError(f"redis broker: cannot reach {_redacted(self.url)}: {err}") from err
        self._receive_script = client.register_script(_RECEIVE_LUA)
        self._nack_script = client.register_script(_NACK_LUA)
        self._extend_script = client.register_script(_EXTEND_LUA)
        self._ack_script = client.register_script(_ACK_LUA)
        self._client = client

    async def close(self) -> None:
        """Disconnect. Unanswered deliveries stay pending in Redis and expire into redeliveries."""
        client, self._client = self._client, None
        self._grouped_queues.clear()
        if client is not None:
            await client.aclose()

    async def publish(self, queue: str, body: bytes, message_id: str | None = None) -> str:
        """Append a message to ``queue`` (creating it); returns its message id."""
        client = self._connected()
        message_id = uuid.uuid4().hex if message_id is None else message_id
        with self._failures("publish", queue):
            await client.xadd(stream_key(queue), {"id": message_id, "body": body})
        return message_id

    async def receive(
        self, queue: str, consumer: str, max_messages: int = 1, wait_s: float = 1.0
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, expired and nacked ones first; waits up to ``wait_s`` s."""
        client = self._connected()
        if max_messages < 1:
            return []
        deadline = time.monotonic() + max(0.0, wait_s)
        group_recreated = False
        with self._failures("receive", queue):
            while True:
                try:
                    if queue not in self._grouped_queues:
                        await self._create_group(client, queue)
                    deliveries = await self._take(queue, consumer, max_messages)
                    if deliveries:
                        return deliveries
                    remaining_s = deadline - time.monotonic()
                    if remaining_s <= 0:
                        return []
                    block_ms = max(1, round(min(remaining_s, self._poll_interval_s) * 1000))
                    reply = await client.xreadgroup(
                        GROUP, consumer, {stream_key(queue): ">"}, count=max_messages, block=block_ms
                    )
                except ResponseError as err:
                    # the stream (and its group) was deleted behind our back, e.g. by FLUSHDB
                    if "NOGROUP" not in str(err) or group_recreated:
                        raise
                    group_recreated = True
                    self._grouped_queues.discard(queue)
                    continue
                deliveries = self._new_deliveries(queue, reply)
                if deliveries:
                    return deliveries

    async def ack(self, delivery: Delivery) -> None:
        """The message is done: it leaves the stream and is never handed out again."""
        client = self._connected()
        entry_id = self._entry_id(delivery)
        with self._failures("ack", delivery.queue):
            await self._ack_script(keys=[stream_key(delivery.queue)], args=[GROUP, entry_id], client=client)

    async def nack(self, delivery: Delivery, error: str) -> None:
        """Hand the message out again at once, or dead-letter it with ``error`` after ``max_attempts``.

        A late nack (the delivery expired and the message went out again) changes nothing.
        """
        client = self._connected()
        entry_id = self._entry_id(delivery)
        with self._failures("nack", delivery.queue):
            await self._nack_script(
                keys=[stream_key(delivery.queue), dead_key(delivery.queue)],
                args=[GROUP, entry_id, delivery.attempt, self.max_attempts, error, NACKED_IDLE_MS],
                client=client,
            )

    async def extend(self, delivery: Delivery) -> None:
        """Restart the delivery's visibility timeout; too late (it went out again) changes nothing."""
        client = self._connected()
        entry_id = self._entry_id(delivery)
        with self._failures("extend", delivery.queue):
            await self._extend_script(
                keys=[stream_key(delivery.queue)], args=[GROUP, entry_id, delivery.attempt], client=client
            )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        client = self._connected()
        if limit < 1:
            return []
        with self._failures("dead_letters", queue):
            entries = await client.xrange(dead_key(queue), count=limit)
        letters = []
        for _, fields in entries or []:
            if not fields:
                continue
            failed_at_ms = int(fields.get(b"failed_at_ms", 0))
            letters.append(
                DeadLetter(
                    queue=queue,
                    message_id=_text(fields.get(b"id", b"")),
                    body=_bytes(fields.get(b"body", b"")),
                    attempts=int(fields.get(b"attempts", 0)),
                    error=_text(fields.get(b"error", b"")),
                    failed_at=datetime.fromtimestamp(failed_at_ms / 1000, UTC),
                )
            )
        return letters

    async def depth(self, queue: str) -> int:
        """Messages waiting or in flight: the stream's length, since acked and dead entries are removed."""
        client = self._connected()
        with self._failures("depth", queue):
            return int(await client.xlen(stream_key(queue)))

    def _connected(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise BrokerError("redis broker: closed (call open() first)")
        return self._client

    @contextmanager
    def _failures(self, operation: str, queue: str) -> Iterator[None]:
        try:
            yield
        except RedisError as err:
            raise BrokerError(f"redis broker: {operation} on queue {queue!r} failed: {err}") from err

    async def _create_group(self, client: redis.asyncio.Redis, queue: str) -> None:
        # From id 0, so messages published before the first receive are read too.
        try:
            await client.xgroup_create(stream_key(queue), GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._grouped_queues.add(queue)

    async def _take(self, queue: str, consumer: str, max_messages: int) -> list[Delivery]:
        reply = await self._receive_script(
            keys=[stream_key(queue), dead_key(queue), cursor_key(queue)],
            args=[GROUP, consumer, max_messages, self._visibility_ms, self.max_attempts],
            client=self._connected(),
        )
        return [
            Delivery(
                queue=queue,
                message_id=_text(reply[i + 1]),
                body=_bytes(reply[i + 2]),
                attempt=int(reply[i + 3]),
                receipt=_text(reply[i]),
            )
            for i in range(0, len(reply), 4)
        ]

    def _new_deliveries(self, queue: str, reply: Any) -> list[Delivery]:
        # redis-py shapes XREADGROUP's reply by protocol and settings: [[stream, entries]],
        # {stream: entries} or {stream: [entries]}, an entry being (entry id, {field: value}).
        streams = reply.items() if isinstance(reply, dict) else (reply or [])
        deliveries = []
        for _, entries in streams:
            if entries and isinstance(entries[0], list) and not isinstance(entries[0][0], bytes | str):
                entries = entries[0]
            for entry_id, fields in entries:
                deliveries.append(
                    Delivery(
                        queue=queue,
                        message_id=_text(fields.get(b"id", entry_id)),
                        body=_bytes(fields.get(b"body", b"")),
                        attempt=1,
                        receipt=_text(entry_id),
                    )
                )
        return deliveries

    @staticmethod
    def _entry_id(delivery: Delivery) -> str:
        if not isinstance(delivery.receipt, str):
            raise BrokerError(f"redis broker: {delivery!r} was not handed out by a RedisBroker")
        return delivery.receipt
