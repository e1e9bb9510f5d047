"""A lean HTTP/1.1 client for talking to our own workers over pooled keep-alive connections.

General-purpose clients spend more CPU per proxied request than the worker spends serving it.
Ours does only what the gateway needs: one request at a time per connection, responses framed by
Content-Length or chunked encoding (parsed by httptools, the parser uvicorn uses), and a pool per
replica that reuses idle connections last-in-first-out so few stay warm.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import httptools


class UpstreamError(Exception):
    """Raised when a replica could not be reached or dropped the connection before answering."""

    def __init__(self, message: str, *, connect: bool = False, stale: bool = False) -> None:
        super().__init__(message)
        self.connect = connect
        self.stale = stale


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._got_bytes = False
        self.closed = False
        self.keep_alive = True
        self.used = False
        self.forgotten = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(UpstreamError(f"bad response from upstream: {err}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(
            UpstreamError(
                f"upstream closed the connection{': ' + str(exc) if exc else ''}",
                stale=self.used and not self._got_bytes,
            )
        )
        self._pool._forget(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result(UpstreamResponse(self._parser.get_status_code(), self._headers, body))

    def _fail(self, err: UpstreamError) -> None:
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)

    async def send(self, data: bytes) -> UpstreamResponse:
        assert self._transport is not None
        self._got_bytes = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()


class UpstreamPool:
    """Keep-alive connections to one replica, at most ``max_connections`` open at once."""

    def __init__(self, host: str, port: int, max_connections: int, connect_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self._host_header = f"{host}:{port}".encode()
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def open_connections(self) -> int:
        return self._open

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except (OSError, TimeoutError) as err:
            raise UpstreamError(
                f"cannot connect to {self.host}:{self.port}: {err or 'timed out'}", connect=True
            ) from None
        return conn

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.closed and conn.keep_alive:
            conn.used = True
            self._idle.append(conn)
        else:
            conn.close()
        self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
        if not conn.forgotten:
            conn.forgotten = True
            self._open -= 1
            self._wake_one()

    def _encode(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
        lines = [
            b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n"
            % (method, target, self._host_header, len(body))
        ]
        lines.extend(b"%s: %s\r\n" % (k, v) for k, v in headers)
        lines.append(b"\r\n")
        lines.append(body)
        return b"".join(lines)

    async def request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> UpstreamResponse:
        """Send one request and return the whole response.

        A reused connection that the replica had already closed is retried once on a fresh one;
        other failures raise UpstreamError. Cancelling closes the connection, since its response
        may still arrive.
        """
        data = self._encode(method, target, headers, body)
        for attempt in range(2):
            conn = await self._acquire()
            try:
                response = await conn.send(data)
            except UpstreamError as err:
                self._release(conn, reusable=False)
                if err.stale and attempt == 0:
                    continue
                raise
            except BaseException:
                self._release(conn, reusable=False)
                raise
            self._release(conn, reusable=True)
            return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def fetch(host: str, port: int, path: str, timeout_s: float) -> tuple[int, Any]:
    """One GET on a fresh connection (health probes): returns status and the parsed JSON body."""
    import orjson

    pool = UpstreamPool(host, port, 1, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            response = await pool.request(b"GET", path.encode(), [])
    finally:
        pool.close()
    try:
        return response.status, orjson.loads(response.body) if response.body else None
    except orjson.JSONDecodeError:
        return response.status, None
