"""The NATS JetStream broker: each queue is a work-queue stream read by one shared pull consumer.

Queue ``{q}`` is the stream ``MF_{q}`` (subject ``mf.q.{q}``, work-queue retention: an acked
message is deleted) with one durable pull consumer, ``workers``, that every receiver of the queue
shares, so receivers compete for messages. The consumer's ``ack_wait`` is the visibility timeout: the server
hands an unanswered delivery out again by itself, and its delivery count is our ``attempt``. The
consumer's own ``max_deliver`` would drop a message silently, so it is unlimited and this module
dead-letters instead: a nack at the last attempt, or a delivery whose count went past
``max_attempts`` (the last one expired unanswered), is copied to the stream ``MFDEAD_{q}`` (subject
``mf.dead.{q}``, kept until deleted) with its error in headers, then acked off the work queue. The
server cannot tell us about that expiry, so such a message is dead-lettered by the next receive on
its queue and counts in ``depth`` until then.

Receiving sends the consumer pull requests of our own rather than using nats-py's ``fetch``: one
``no_wait`` request takes what is ready, and only when nothing is a one-message request waits
(expiring on the server when the wait ends, so no request outlives the call and catches a message
nobody reads). Acks, nacks and extends are confirmed requests on this broker's connection, so a
delivery can be answered after the connection that received it has closed.

Queue names that are not plain ``[A-Za-z0-9_-]`` are escaped (``~`` and two hex digits per byte),
because NATS names cannot hold ``.``, ``*``, ``>`` or whitespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from modelfleet.broker.broker import BrokerError, DeadLetter, Delivery
from modelfleet.errors import ConfigError

log = logging.getLogger("modelfleet.broker")

CONSUMER_NAME = "workers"
MESSAGE_ID_HEADER = "Modelfleet-Message-Id"
ATTEMPTS_HEADER = "Modelfleet-Attempts"
ERROR_HEADER = "Modelfleet-Error"
FAILED_AT_HEADER = "Modelfleet-Failed-At"

_CONNECT_TIMEOUT_S = 2
# After a lost connection: retry for about two minutes, then the broker reports itself closed.
_MAX_RECONNECT_ATTEMPTS = 60
_RECONNECT_WAIT_S = 2
# Below this, a lingering pull request would expire before it could be answered.
_MIN_WAIT_S = 0.005
# A pull request's answer (messages, or 404/408 when there are none) comes back within its own
# expiry; this much longer means the connection is gone.
_REQUEST_TIMEOUT_S = 5.0
_PLAIN_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_STREAM_NAME_EXISTS = 10058


def _token(queue: str) -> str:
    """``queue`` as one NATS name token; injective, readable for plain names."""
    if not queue:
        raise BrokerError("a queue name must not be empty")
    if all(c in _PLAIN_NAME_CHARS for c in queue):
        return queue
    return "".join(c if c in _PLAIN_NAME_CHARS else "".join(f"~{b:02X}" for b in c.encode()) for c in queue)


def stream_name(queue: str) -> str:
    """The work-queue stream holding ``queue``'s messages."""
    return f"MF_{_token(queue)}"


def subject_name(queue: str) -> str:
    """The subject ``queue``'s messages are published on."""
    return f"mf.q.{_token(queue)}"


def dead_stream_name(queue: str) -> str:
    """The stream keeping ``queue``'s dead letters."""
    return f"MFDEAD_{_token(queue)}"


def dead_subject_name(queue: str) -> str:
    """The subject ``queue``'s dead letters are published on."""
    return f"mf.dead.{_token(queue)}"


@dataclass
class _Inbox:
    """Where the pull requests of one (queue, consumer) are answered.

    Each request gets its own reply subject under ``prefix``, so a status left over from an
    interrupted request is told apart from the answer awaited now.
    """

    queue: str
    prefix: str
    subscription: Subscription | None = None
    messages: asyncio.Queue[Msg] = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requests: int = 0

    async def put(self, msg: Msg) -> None:
        await self.messages.put(msg)

    def buffered(self, limit: int) -> list[Msg]:
        """Deliveries that came in after their request's caller stopped waiting (rare)."""
        out: list[Msg] = []
        while len(out) < limit and not self.messages.empty():
            msg = self.messages.get_nowait()
            if msg.reply:
                out.append(msg)
        return out


class NatsBroker:
    """Durable queues on NATS JetStream (see the module docstring).

    ``url`` is a NATS server URL (``nats://host:4222``, credentials allowed). The consumer's
    ``ack_wait`` is set from ``visibility_timeout_s`` whenever a broker first uses a queue, so
    every broker on a queue should share that setting; ``max_attempts`` is applied by each broker.
    """

    def __init__(self, url: str, visibility_timeout_s: float = 30.0, max_attempts: int = 5) -> None:
        if visibility_timeout_s <= 0 or max_attempts < 1:
            raise ConfigError("broker: visibility_timeout_s must be > 0 and max_attempts >= 1")
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None
        self._ready_queues: set[str] = set()
        self._ready_dead_streams: set[str] = set()
        self._inboxes: dict[tuple[str, str], _Inbox] = {}
        self._last_error: Exception | None = None

    async def open(self) -> None:
        """Connect and check that JetStream is enabled; raises BrokerError."""
        if self._client is not None:
            return
        client = Client()
        try:
            # nats-py retries a first connect like a reconnect, which by default means for two
            # minutes; a server that is down should fail open() at once, so retries are switched
            # on only after connecting.
            await client.connect(
                self.url,
                name="modelfleet",
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=_CONNECT_TIMEOUT_S,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
        except Exception as err:
            cause = self._last_error or err
            raise BrokerError(f"cannot connect to NATS at {_redacted(self.url)}: {cause!r}") from err
        client.options.update(
            allow_reconnect=True,
            max_reconnect_attempts=_MAX_RECONNECT_ATTEMPTS,
            reconnect_time_wait=_RECONNECT_WAIT_S,
        )
        jetstream = client.jetstream(timeout=_REQUEST_TIMEOUT_S)
        try:
            await jetstream.account_info()
        except Exception as err:
            await client.close()
            raise BrokerError(
                f"NATS at {_redacted(self.url)} has no JetStream (start nats-server with -js): {err!r}"
            ) from err
        self._client, self._jetstream = client, jetstream

    async def close(self) -> None:
        """Disconnect; deliveries not yet answered come back after their visibility timeout."""
        client, self._client, self._jetstream = self._client, None, None
        inboxes, self._inboxes = list(self._inboxes.values()), {}
        self._ready_queues.clear()
        self._ready_dead_streams.clear()
        if client is None or client.is_closed:
            return
        with contextlib.suppress(nats.errors.Error, OSError):
            # Deliveries that arrived after their receive gave up were never handed out: release
            # them now rather than after the visibility timeout. close() flushes these naks.
            for inbox in inboxes:
                for msg in inbox.buffered(inbox.messages.qsize()):
                    await client.publish(msg.reply, b"-NAK")
        await client.close()

    async def publish(self, queue: str, body: bytes, message_id: str | None = None) -> str:
        """Append a message to ``queue`` (created on first use); returns its message id."""
        jetstream = self._js()
        await self._ensure_queue(queue)
        message_id = message_id or uuid.uuid4().hex
        with _translated("publish"):
            await jetstream.publish(
                subject_name(queue),
                body,
                stream=stream_name(queue),
                headers={MESSAGE_ID_HEADER: quote(message_id, safe="")},
            )
        return message_id

    async def receive(
        self, queue: str, consumer: str, max_messages: int = 1, wait_s: float = 1.0
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries; waits up to ``wait_s`` seconds for the first.

        Every consumer competes on the queue's one JetStream consumer; ``consumer`` only names the
        pull channel, so concurrent receives under different names do not wait for each other.
        """
        deadline = time.monotonic() + wait_s
        self._js()
        if max_messages < 1:
            return []
        await self._ensure_queue(queue)
        inbox = await self._inbox(queue, consumer)
        async with inbox.lock:
            out = await self._deliveries(queue, inbox.buffered(max_messages))
            if len(out) < max_messages:
                out += await self._deliveries(queue, await self._pull(inbox, max_messages - len(out)))
            while not out and (remaining_s := deadline - time.monotonic()) >= _MIN_WAIT_S:
                first = await self._pull(inbox, 1, expires_s=remaining_s)
                if not first:
                    break
                out = await self._deliveries(queue, first)
                if out and max_messages > 1:
                    out += await self._deliveries(queue, await self._pull(inbox, max_messages - 1))
            return out

    async def ack(self, delivery: Delivery) -> None:
        """The message is done: JetStream deletes it from the work queue."""
        await self._answer(delivery, b"+ACK")

    async def nack(self, delivery: Delivery, error: str) -> None:
        """Hand the message out again at once, or dead-letter it with ``error`` after max_attempts."""
        if delivery.attempt >= self.max_attempts:
            await self._dead_letter(
                delivery.queue, _receipt(delivery), delivery.message_id, delivery.attempt, error
            )
        else:
            await self._answer(delivery, b"-NAK")

    async def extend(self, delivery: Delivery) -> None:
        """Restart the delivery's visibility timeout (a JetStream "in progress" ack)."""
        await self._answer(delivery, b"+WPI")

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        jetstream = self._js()
        stream, subject = dead_stream_name(queue), dead_subject_name(queue)
        out: list[DeadLetter] = []
        seq = 1
        with _translated("read dead letters"):
            while len(out) < limit:
                try:
                    raw = await jetstream.get_msg(stream, seq=seq, subject=subject, next=True)
                except NotFoundError:  # no such stream, or no message from seq on
                    break
                headers: dict[str, str] = raw.headers or {}
                out.append(
                    DeadLetter(
                        queue=queue,
                        message_id=unquote(headers.get(MESSAGE_ID_HEADER, str(raw.seq))),
                        body=raw.data or b"",
                        attempts=int(headers.get(ATTEMPTS_HEADER, "0")),
                        error=str(json.loads(headers.get(ERROR_HEADER, '""'))),
                        failed_at=datetime.fromisoformat(headers[FAILED_AT_HEADER])
                        if FAILED_AT_HEADER in headers
                        else raw.time or datetime.now(UTC),
                    )
                )
                seq = int(raw.seq or seq) + 1
        return out

    async def depth(self, queue: str) -> int:
        """Messages waiting or in flight: the work-queue stream holds exactly those."""
        jetstream = self._js()
        with _translated("read the queue depth"):
            try:
                info = await jetstream.stream_info(stream_name(queue))
            except NotFoundError:
                return 0
        return int(info.state.messages)

    # Connection callbacks; self._client is None once close() began, so a wanted close stays quiet.

    async def _on_error(self, err: Exception) -> None:
        self._last_error = err
        if self._client is not None:
            log.warning("NATS connection error: %r", err)

    async def _on_disconnected(self) -> None:
        if self._client is not None:
            log.warning("NATS at %s disconnected; reconnecting", _redacted(self.url))

    async def _on_reconnected(self) -> None:
        log.info("NATS at %s reconnected", _redacted(self.url))

    async def _on_closed(self) -> None:
        if self._client is not None:
            log.error("NATS at %s gave up reconnecting; the broker is closed", _redacted(self.url))

    def _connection(self) -> Client:
        if self._client is None or self._client.is_closed:
            raise BrokerError("the NATS broker is closed (call open() first)")
        return self._client

    def _js(self) -> JetStreamContext:
        self._connection()
        assert self._jetstream is not None
        return self._jetstream

    async def _ensure_queue(self, queue: str) -> None:
        """Create the queue's stream and consumer unless this broker already did."""
        if queue in self._ready_queues:
            return
        jetstream, stream = self._js(), stream_name(queue)
        with _translated(f"create queue {queue!r}"):
            try:
                await jetstream.add_stream(
                    name=stream,
                    subjects=[subject_name(queue)],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                )
            except BadRequestError as err:
                # Created before with other settings (by an operator, say): fine if it is still a
                # work queue, because acks must delete messages for depth() to be right.
                if err.err_code != _STREAM_NAME_EXISTS:
                    raise
                existing = await jetstream.stream_info(stream)
                if existing.config.retention != api.RetentionPolicy.WORK_QUEUE:
                    raise BrokerError(f"NATS stream {stream} exists but is not a work queue") from err
            # Creating an existing consumer with a new ack_wait updates it (nats-server >= 2.9).
            await jetstream.add_consumer(
                stream,
                api.ConsumerConfig(
                    name=CONSUMER_NAME,
                    durable_name=CONSUMER_NAME,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self.visibility_timeout_s,
                    max_deliver=-1,
                    deliver_policy=api.DeliverPolicy.ALL,
                ),
            )
        self._ready_queues.add(queue)

    async def _inbox(self, queue: str, consumer: str) -> _Inbox:
        inbox = self._inboxes.get((queue, consumer))
        if inbox is not None:
            return inbox
        client = self._connection()
        inbox = _Inbox(queue, client.new_inbox())
        with _translated("subscribe"):
            inbox.subscription = await client.subscribe(f"{inbox.prefix}.*", cb=inbox.put)
        # Listed only once subscribed, so no pull request is sent before its answers can arrive.
        existing = self._inboxes.setdefault((queue, consumer), inbox)
        if existing is not inbox:  # a concurrent receive made one first
            with _translated("unsubscribe"):
                await inbox.subscription.unsubscribe()
        return existing

    async def _pull(self, inbox: _Inbox, batch: int, expires_s: float | None = None) -> list[Msg]:
        """One pull request: ``no_wait`` without ``expires_s``, else waits on the server that long.

        Returns when the batch is full or the server says it is done (404 no messages, 408 the
        request expired, 409 the consumer refused it).
        """
        client = self._connection()
        inbox.requests += 1
        reply = f"{inbox.prefix}.{inbox.requests}"
        request: dict[str, Any] = {"batch": batch}
        if expires_s is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires_s * 1e9)
        msgs: list[Msg] = []
        deadline = time.monotonic() + (expires_s or 0.0) + _REQUEST_TIMEOUT_S
        with _translated("receive"):
            await client.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream_name(inbox.queue)}.{CONSUMER_NAME}",
                json.dumps(request).encode(),
                reply=reply,
            )
            while len(msgs) < batch:
                try:
                    msg = await asyncio.wait_for(inbox.messages.get(), deadline - time.monotonic())
                except TimeoutError:
                    break  # no answer at all: disconnected; what is late stays buffered
                if msg.reply:
                    msgs.append(msg)
                elif msg.subject == reply:
                    if msg.headers and msg.headers.get("Status") == "409":
                        log.warning("NATS refused a pull on %s: %s", inbox.queue, msg.headers)
                        self._ready_queues.discard(inbox.queue)  # the consumer may be gone
                    break
        return msgs

    async def _deliveries(self, queue: str, msgs: list[Msg]) -> list[Delivery]:
        """The deliveries to hand out; those back from an unanswered last attempt are dead-lettered."""
        out: list[Delivery] = []
        for msg in msgs:
            metadata = msg.metadata
            attempt = metadata.num_delivered
            headers = msg.headers or {}
            raw_id = headers.get(MESSAGE_ID_HEADER)
            message_id = unquote(raw_id) if raw_id else f"{stream_name(queue)}:{metadata.sequence.stream}"
            if attempt > self.max_attempts:
                unanswered = attempt - 1
                error = f"delivered {unanswered} times without an answer (its consumer died or hung)"
                await self._dead_letter(queue, msg, message_id, unanswered, error)
                continue
            out.append(
                Delivery(queue=queue, message_id=message_id, body=msg.data, attempt=attempt, receipt=msg)
            )
        return out

    async def _dead_letter(self, queue: str, msg: Msg, message_id: str, attempts: int, error: str) -> None:
        """Copy the message to the queue's dead letters, then ack it off the work queue."""
        jetstream, stream = self._js(), dead_stream_name(queue)
        with _translated("dead-letter"):
            if stream not in self._ready_dead_streams:
                with contextlib.suppress(BadRequestError):  # exists with other settings: use it
                    await jetstream.add_stream(
                        name=stream, subjects=[dead_subject_name(queue)], storage=api.StorageType.FILE
                    )
                self._ready_dead_streams.add(stream)
            await jetstream.publish(
                dead_subject_name(queue),
                msg.data,
                stream=stream,
                headers={
                    MESSAGE_ID_HEADER: quote(message_id, safe=""),
                    ATTEMPTS_HEADER: str(attempts),
                    ERROR_HEADER: json.dumps(error),
                    FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
                    # Should the ack below be lost, the redelivery's dead-lettering is dropped as
                    # a duplicate (within the stream's two-minute window).
                    "Nats-Msg-Id": f"{stream_name(queue)}:{msg.metadata.sequence.stream}",
                },
            )
        await self._answer_msg(msg, b"+ACK")

    async def _answer(self, delivery: Delivery, answer: bytes) -> None:
        await self._answer_msg(_receipt(delivery), answer)

    async def _answer_msg(self, msg: Msg, answer: bytes) -> None:
        """Send an ack-family answer and wait for the server to confirm it."""
        client = self._connection()
        with _translated("answer a delivery"):
            await client.request(msg.reply, answer, timeout=_REQUEST_TIMEOUT_S)


def _receipt(delivery: Delivery) -> Msg:
    if not isinstance(delivery.receipt, Msg) or not delivery.receipt.reply:
        raise BrokerError(f"delivery {delivery.message_id} was not received from a NATS broker")
    return delivery.receipt


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """NATS and socket failures as BrokerError, the cause chained."""
    try:
        yield
    except (nats.errors.Error, OSError, TimeoutError) as err:
        raise BrokerError(f"NATS: cannot {action}: {err!r}") from err


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}://***@{host}" if at else url
