"""Consuming a RabbitMQ queue with a bounded prefetch, and publishing results with publisher confirms.

- The input is the queue named ``source``. When it does not exist it is declared durable and of
  type quorum (a quorum queue counts redeliveries); an existing queue is used as it is.
- The replicas consume it side by side, each with ``prefetch_count = max_in_flight``: RabbitMQ
  never sends a replica more unacknowledged messages than that, which is the back-pressure.
- An output topic is a queue name, published to through the default exchange: persistent,
  ``mandatory`` (a queue deleted under us is an error, not a silent drop) and confirmed by the
  broker before ``publish`` returns. A missing output queue is declared like the input.
- A consumer's unacknowledged messages go back to the queue the moment its channel or connection
  closes, for whatever reason, so a killed replica loses nothing and nothing waits for a timeout.
  An answer to a message whose channel is gone is therefore skipped: RabbitMQ already took it back.
- ``attempt`` is the quorum queue's ``x-delivery-count`` plus one; a classic queue only says
  "redelivered" (attempt 2). The id is the AMQP ``message_id``, else a digest of the body.
- Declarations run on a channel of their own, because a failed passive declaration closes its
  channel, which must never be the one holding messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelClosed, ChannelNotFoundEntity, DeliveryError

from modelfleet.stream.connector import StreamError, StreamMessage, body_digest

log = logging.getLogger("modelfleet.stream")

_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
_CONNECT_TIMEOUT_S = 10.0
_OPERATION_TIMEOUT_S = 30.0
_FAILURES = (*CONNECTION_EXCEPTIONS, DeliveryError, TimeoutError)


@dataclass(frozen=True, eq=False)
class _Receipt:
    """A delivered message and the channel it came on, which alone can answer it."""

    channel: AbstractChannel
    message: AbstractIncomingMessage


class RabbitMQStreamConnector:
    """A StreamConnector on RabbitMQ queues (see the module docstring); ``url`` is ``amqp://user:pw@host/``."""

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
        self._connection: AbstractConnection | None = None
        self._consuming: AbstractChannel | None = None
        self._publishing: AbstractChannel | None = None
        self._arrived: asyncio.Queue[tuple[AbstractChannel, AbstractIncomingMessage]] = asyncio.Queue()
        self._declared: set[str] = set()
        self._held: set[_Receipt] = set()

    async def open(self) -> None:
        """Connect, declare the input queue if missing, and start consuming it; raises StreamError."""
        if self._connection is not None:
            return
        with _translated("connect"):
            connection = await aio_pika.connect(self.url, timeout=_CONNECT_TIMEOUT_S)
        try:
            with _translated(f"consume queue {self.source!r}"):
                self._declared.clear()
                await self._ensure_queue(connection, self.source)
                publishing = connection.channel(publisher_confirms=True, on_return_raises=True)
                await publishing.initialize(timeout=_OPERATION_TIMEOUT_S)
                consuming = connection.channel(publisher_confirms=False)
                await consuming.initialize(timeout=_OPERATION_TIMEOUT_S)
                await consuming.set_qos(prefetch_count=self.max_in_flight)
                queue = await consuming.declare_queue(self.source, passive=True, timeout=_OPERATION_TIMEOUT_S)
                self._arrived = asyncio.Queue()
                arrived = self._arrived

                async def on_message(message: AbstractIncomingMessage) -> None:
                    arrived.put_nowait((consuming, message))

                await queue.consume(on_message, no_ack=False, consumer_tag=None, timeout=_OPERATION_TIMEOUT_S)
        except StreamError:
            with contextlib.suppress(*_FAILURES):
                await connection.close()
            raise
        self._connection, self._consuming, self._publishing = connection, consuming, publishing
        self._held.clear()

    async def close(self) -> None:
        """Close the connection: RabbitMQ puts every unacknowledged message back at once."""
        connection, self._connection = self._connection, None
        self._consuming = self._publishing = None
        self._arrived = asyncio.Queue()
        self._held.clear()
        if connection is not None:
            with contextlib.suppress(*_FAILURES, RuntimeError):
                await connection.close()

    async def receive(self, max_messages: int, wait_s: float) -> list[StreamMessage]:
        channel = self._live_channel()
        out: list[StreamMessage] = []
        max_messages = min(max_messages, self.max_in_flight - len(self._held))
        if max_messages < 1:
            # Back-pressure: the caller holds max_in_flight unanswered messages already.
            await asyncio.sleep(wait_s)
            return out
        arrived = self._arrived
        try:
            first = await asyncio.wait_for(arrived.get(), wait_s) if arrived.empty() else arrived.get_nowait()
        except TimeoutError:
            self._live_channel()
            return out
        items = [first]
        while len(items) < max_messages and not arrived.empty():
            items.append(arrived.get_nowait())
        for source, message in items:
            if source is not channel:
                continue  # from a channel that has closed since: RabbitMQ took it back
            receipt = _Receipt(source, message)
            self._held.add(receipt)
            out.append(
                StreamMessage(
                    message.message_id or body_digest(message.body),
                    message.body,
                    _attempt_of(message),
                    receipt,
                )
            )
        return out

    async def publish(self, topic: str, body: bytes, key: str | None = None) -> None:
        """Persistent, mandatory, confirmed; ``key`` becomes the AMQP message-id."""
        connection = self._open_connection()
        channel = self._publishing
        if channel is None or channel.is_closed:
            raise StreamError("rabbitmq stream: the publishing channel is closed")
        with _translated(f"publish to {topic!r}"):
            await self._ensure_queue(connection, topic)
            try:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        message_id=key,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=topic,
                    mandatory=True,
                    timeout=_OPERATION_TIMEOUT_S,
                )
            except _FAILURES:
                self._declared.discard(topic)  # deleted under us, maybe: declare again next time
                raise

    async def ack(self, message: StreamMessage) -> None:
        incoming = self._incoming_on_live_channel(message)
        if incoming is not None:
            with _translated("ack"):
                await incoming.ack()

    async def release(self, message: StreamMessage) -> None:
        incoming = self._incoming_on_live_channel(message)
        if incoming is not None:
            with _translated("release"):
                await incoming.nack(requeue=True)

    def _open_connection(self) -> AbstractConnection:
        if self._connection is None:
            raise StreamError("the RabbitMQ stream connector is not open")
        return self._connection

    def _live_channel(self) -> AbstractChannel:
        """The consuming channel; StreamError when it, or the connection, is gone."""
        connection = self._open_connection()
        channel = self._consuming
        # aio-pika's is_closed stays False when the server closed the connection; connected does not.
        lost = connection.is_closed or not connection.connected.is_set()
        if channel is None or channel.is_closed or lost:
            raise StreamError("rabbitmq stream: the connection or its channel was lost")
        return channel

    def _incoming_on_live_channel(self, message: StreamMessage) -> AbstractIncomingMessage | None:
        receipt = message.receipt
        if not isinstance(receipt, _Receipt):
            raise StreamError(f"message {message.id} was not received from RabbitMQ")
        self._held.discard(receipt)
        if self._connection is None or receipt.channel is not self._consuming or receipt.channel.is_closed:
            return None
        return receipt.message

    async def _ensure_queue(self, connection: AbstractConnection, name: str) -> None:
        """Use ``name`` as it is when it exists, else declare it durable (quorum)."""
        if name in self._declared:
            return
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(name, passive=True, timeout=_OPERATION_TIMEOUT_S)
        except ChannelNotFoundEntity:
            # 404: the failed passive declaration closed the channel; declare it for real on a new one.
            channel = await connection.channel(publisher_confirms=False)
            await channel.declare_queue(
                name, durable=True, arguments=_QUEUE_ARGUMENTS, timeout=_OPERATION_TIMEOUT_S
            )
        finally:
            with contextlib.suppress(*_FAILURES, RuntimeError):
                await channel.close()
        self._declared.add(name)


def _attempt_of(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, int):
        return count + 1
    return 2 if message.redelivered else 1


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except StreamError:
        raise
    except (*_FAILURES, ChannelClosed) as err:
        raise StreamError(f"rabbitmq stream: cannot {action}: {err!r}") from err
