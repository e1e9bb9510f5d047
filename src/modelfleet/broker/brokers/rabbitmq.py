"""RabbitMQ broker: one durable quorum queue per queue name, a classic durable queue of dead letters.

How the shared semantics (see ``modelfleet.broker.broker``) map onto RabbitMQ:

- Messages are persistent and published with publisher confirms, so ``publish`` returns only once
  the quorum queue has the message. ``message_id`` travels in the AMQP ``message_id`` property,
  which RabbitMQ keeps on every redelivery.
- ``attempt`` is the quorum queue's ``x-delivery-count`` header plus one: RabbitMQ counts every
  return of a message, whether nacked with requeue, returned by a closed channel or connection
  (a consumer that died), or requeued by this adapter when its visibility timeout passed.
- RabbitMQ itself never takes a message back from a live but slow consumer (its own
  ``consumer_timeout``, 30 minutes by default, closes the whole channel instead), so the
  visibility timeout is kept here: each unanswered delivery has a timer; when it fires the
  delivery is nacked with requeue (or dead-lettered at ``max_attempts``). ``extend`` restarts it.
- ``nack`` at ``max_attempts`` publishes the message (with confirms) to ``{queue}.dead`` and only
  then acks it, so a crash between the two duplicates a dead letter rather than losing it. A
  message that arrives with ``max_attempts`` deliveries behind it (its consumers died or timed
  out) is dead-lettered the same way, with an error saying it went "without an answer".
- ``receive`` uses basic.get, and polls it (5 ms, doubling to 100 ms) while the queue is empty.
  A consumer (basic.consume) would wake up sooner, but a quorum queue counts a message that was
  on its way to a consumer when the consumer was cancelled as delivered (measured: ~2% of
  messages when a waiting consumer is cancelled after each receive), and a consumer left open
  holds messages nobody asked for; either way ``attempt`` would overcount, and a message could
  be dead-lettered "without an answer" without ever having been handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, AMQPConnectionError
from aiormq.exceptions import DeliveryError

from modelfleet.broker.broker import BrokerError, DeadLetter, Delivery

log = logging.getLogger(__name__)

_WORK_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
# Classic, not quorum: a classic queue puts messages returned by a closed channel back in their
# original place, which is how dead_letters() reads the queue without consuming it.
_DEAD_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}
_DEAD_SUFFIX = ".dead"
_CONNECT_TIMEOUT_S = 10.0
_OPERATION_TIMEOUT_S = 30.0
_FIRST_POLL_PAUSE_S = 0.005
_MAX_POLL_PAUSE_S = 0.1
_FAILURES = (*CONNECTION_EXCEPTIONS, TimeoutError)
_PUBLISH_ATTEMPTS = 4
_PUBLISH_RETRY_PAUSE_S = 0.05


@dataclass(eq=False)
class _Receipt:
    """One unanswered delivery: the message to answer, on the channel it came on, and its timer."""

    queue: str
    message: AbstractIncomingMessage
    channel: AbstractChannel
    attempt: int
    timer: asyncio.TimerHandle | None = None
    settled: bool = False


class RabbitMQBroker:
    """A Broker on a RabbitMQ server (quorum queues: 3.8 or newer; checked on 3.10), through aio-pika.

    ``url`` is an AMQP URL such as ``amqp://guest:guest@127.0.0.1:5672/``. One connection and one
    channel serve everything but ``dead_letters``; a lost channel or connection is reopened by the
    next call, and deliveries taken on the lost one are silently forgotten (RabbitMQ hands them
    out again), so a late ``ack`` of one is a no-op rather than an error.

    ``depth`` counts the messages ready in the queue plus the deliveries this broker object holds
    unanswered. AMQP has no way to count another client's unacked messages, so deliveries in
    flight to *other* broker objects are not counted; a requeue may also show up in RabbitMQ's
    count a few milliseconds after the nack that caused it.
    """

    def __init__(self, url: str, visibility_timeout_s: float = 30.0, max_attempts: int = 5) -> None:
        if visibility_timeout_s <= 0:
            raise ValueError("visibility_timeout_s must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self._url = url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._reopen_lock = asyncio.Lock()
        self._declared: dict[str, AbstractQueue] = {}
        self._in_flight: dict[str, set[_Receipt]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Connect and open the working channel; raises BrokerError when RabbitMQ cannot be reached."""
        if self._connection is not None:
            return
        connection: AbstractConnection | None = None
        try:
            connection = await aio_pika.connect(self._url, timeout=_CONNECT_TIMEOUT_S)
            self._channel = await _open_work_channel(connection)
        except Exception as err:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
            raise BrokerError(f"cannot connect to RabbitMQ at {_redacted(self._url)}: {err!r}") from err
        self._connection = connection

    async def close(self) -> None:
        """Disconnect without answering anything: RabbitMQ hands unanswered deliveries out again."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        for receipts in self._in_flight.values():
            for receipt in receipts:
                if receipt.timer is not None:
                    receipt.timer.cancel()
        self._in_flight.clear()
        # Requeues and dead-lettering already started finish first: a half-done dead-lettering would
        # leave a dead letter whose message comes back as well.
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._channel = None
        self._declared.clear()
        with contextlib.suppress(*_FAILURES):
            await connection.close()

    async def publish(self, queue: str, body: bytes, message_id: str | None = None) -> str:
        """Append a persistent message, confirmed by RabbitMQ; returns its message id."""
        message_id = message_id or uuid.uuid4().hex
        with _failures_as_broker_error(f"publish to {queue!r}"):
            for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
                channel = await self._work_channel()
                try:
                    await self._declare(channel, queue)
                    await channel.default_exchange.publish(
                        aio_pika.Message(
                            body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                        ),
                        routing_key=queue,
                        mandatory=True,
                        timeout=_OPERATION_TIMEOUT_S,
                    )
                    break
                except DeliveryError:
                    # A quorum queue that is still being created (by this or another client) may
                    # nack a publish: RabbitMQ did not take the message, so sending it again with
                    # the same id is safe. Seen in the racing-creation unit test, about 1 run in 2.
                    if attempt == _PUBLISH_ATTEMPTS:
                        raise
                    await asyncio.sleep(_PUBLISH_RETRY_PAUSE_S * attempt)
                except _FAILURES:
                    # The queue may have been deleted under us: declare it again next time.
                    self._declared.pop(queue, None)
                    raise
        return message_id

    async def receive(
        self, queue: str, consumer: str, max_messages: int = 1, wait_s: float = 1.0
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries; waits up to ``wait_s`` seconds for the first, [] if none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        pause_s = _FIRST_POLL_PAUSE_S
        deliveries: list[Delivery] = []
        try:
            with _failures_as_broker_error(f"receive from {queue!r}"):
                while len(deliveries) < max_messages:
                    channel = await self._work_channel()
                    try:
                        message = await self._get(await self._declare(channel, queue))
                    except AMQPConnectionError as err:
                        # A quorum queue that another client is still creating has no process yet,
                        # and RabbitMQ answers basic.get on it by closing the connection ("noproc").
                        # The next turn reconnects; only a queue that stays that way is an error.
                        if "noproc" not in str(err) or loop.time() >= deadline:
                            raise
                        log.debug("RabbitMQ queue %r is not running yet; retrying", queue)
                        message = None
                    if message is None:
                        remaining_s = deadline - loop.time()
                        if deliveries or remaining_s <= 0:
                            break
                        await asyncio.sleep(min(pause_s, remaining_s))
                        pause_s = min(2 * pause_s, _MAX_POLL_PAUSE_S)
                        continue
                    delivery = await self._hand_out(channel, queue, message)
                    if delivery is not None:
                        deliveries.append(delivery)
        except BaseException:
            # The caller never sees these: hand them out again now rather than after the timeout.
            for delivery in deliveries:
                receipt: _Receipt = delivery.receipt
                if self._settle(receipt):
                    self._spawn(receipt.message.nack(requeue=True))
            raise
        # A connection lost on the way took the earlier deliveries with it: RabbitMQ requeued them.
        return [d for d in deliveries if not d.receipt.settled]

    async def ack(self, delivery: Delivery) -> None:
        """The message is done; a delivery that already timed out (and went to someone else) is ignored."""
        receipt = self._receipt_of(delivery)
        if not self._settle(receipt):
            return
        with _failures_as_broker_error(f"ack on {delivery.queue!r}"):
            await receipt.message.ack()

    async def nack(self, delivery: Delivery, error: str) -> None:
        """Requeue at once, or dead-letter with ``error`` when this was attempt ``max_attempts``."""
        receipt = self._receipt_of(delivery)
        if not self._settle(receipt):
            return
        with _failures_as_broker_error(f"nack on {delivery.queue!r}"):
            if receipt.attempt >= self.max_attempts:
                await self._dead_letter(receipt, receipt.attempt, error)
            else:
                await receipt.message.nack(requeue=True)

    async def extend(self, delivery: Delivery) -> None:
        """Restart the visibility timeout; too late (a no-op) once the delivery has timed out."""
        receipt = self._receipt_of(delivery)
        if not receipt.settled:
            self._arm(receipt)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first, read without removing them.

        They are fetched unacknowledged on a channel of their own, whose closing puts them back in
        place; a concurrent reader may briefly see fewer.
        """
        letters: list[DeadLetter] = []
        if limit <= 0:
            return letters
        with _failures_as_broker_error(f"read the dead letters of {queue!r}"):
            await self._work_channel()
            assert self._connection is not None
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                dead = await channel.declare_queue(
                    queue + _DEAD_SUFFIX,
                    durable=True,
                    arguments=_DEAD_QUEUE_ARGUMENTS,
                    timeout=_OPERATION_TIMEOUT_S,
                )
                while len(letters) < limit:
                    message = await dead.get(no_ack=False, fail=False, timeout=_OPERATION_TIMEOUT_S)
                    if message is None:
                        break
                    letters.append(_dead_letter_of(queue, message))
            finally:
                await channel.close()
        return letters

    async def depth(self, queue: str) -> int:
        """Messages ready in the queue plus this broker's unanswered deliveries (see the class docstring)."""
        with _failures_as_broker_error(f"depth of {queue!r}"):
            channel = await self._work_channel()
            declared = await channel.declare_queue(
                queue, durable=True, arguments=_WORK_QUEUE_ARGUMENTS, timeout=_OPERATION_TIMEOUT_S
            )
            self._declared[queue] = declared
        ready = declared.declaration_result.message_count or 0
        return ready + len(self._in_flight.get(queue, ()))

    async def _work_channel(self) -> AbstractChannel:
        """The open working channel, reopening it (and the connection) when RabbitMQ dropped it."""
        if self._connection is None:
            raise BrokerError("the RabbitMQ broker is not open")
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._reopen_lock:
            if self._connection is None:
                raise BrokerError("the RabbitMQ broker is not open")
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            # aio-pika's is_closed stays False when the server closed the connection; connected does not.
            if self._connection.is_closed or not self._connection.connected.is_set():
                lost = self._connection
                self._connection = await aio_pika.connect(self._url, timeout=_CONNECT_TIMEOUT_S)
                with contextlib.suppress(*_FAILURES):
                    await lost.close()
            self._channel = await _open_work_channel(self._connection)
            self._declared.clear()
            # RabbitMQ has already requeued whatever was unanswered on the lost channel.
            for receipt in [r for receipts in self._in_flight.values() for r in receipts]:
                if receipt.channel is not self._channel:
                    self._settle(receipt)
            return self._channel

    async def _declare(self, channel: AbstractChannel, queue: str) -> AbstractQueue:
        declared = self._declared.get(queue)
        if declared is None:
            declared = await channel.declare_queue(
                queue, durable=True, arguments=_WORK_QUEUE_ARGUMENTS, timeout=_OPERATION_TIMEOUT_S
            )
            self._declared[queue] = declared
        return declared

    async def _get(self, source: AbstractQueue) -> AbstractIncomingMessage | None:
        """basic.get, safe to cancel: aiormq closes the channel (and so requeues every delivery
        on it) when an RPC is cancelled, so the RPC runs on and a message it got is given back."""
        fetch = asyncio.ensure_future(source.get(no_ack=False, fail=False, timeout=_OPERATION_TIMEOUT_S))
        try:
            return await asyncio.shield(fetch)
        except asyncio.CancelledError:
            fetch.add_done_callback(self._give_back)
            raise

    def _give_back(self, fetch: asyncio.Future[AbstractIncomingMessage | None]) -> None:
        if not fetch.cancelled() and fetch.exception() is None:
            message = fetch.result()
            if message is not None:
                self._spawn(message.nack(requeue=True))

    async def _hand_out(
        self, channel: AbstractChannel, queue: str, message: AbstractIncomingMessage
    ) -> Delivery | None:
        """A Delivery with its visibility timer running, or None when the message was dead-lettered."""
        attempt = _attempt_of(message)
        receipt = _Receipt(queue, message, channel, attempt)
        if attempt > self.max_attempts:
            deliveries_s = "delivery" if attempt == 2 else "deliveries"
            await self._dead_letter(receipt, attempt - 1, f"{attempt - 1} {deliveries_s} without an answer")
            return None
        self._in_flight.setdefault(queue, set()).add(receipt)
        self._arm(receipt)
        return Delivery(queue, message.message_id or "", message.body, attempt, receipt)

    def _arm(self, receipt: _Receipt) -> None:
        if receipt.timer is not None:
            receipt.timer.cancel()
        receipt.timer = asyncio.get_running_loop().call_later(
            self.visibility_timeout_s, self._expire, receipt
        )

    def _expire(self, receipt: _Receipt) -> None:
        if not self._settle(receipt):
            return
        if receipt.attempt >= self.max_attempts:
            timeout_s = self.visibility_timeout_s
            error = f"{receipt.attempt} deliveries without an answer (visibility timeout {timeout_s} s)"
            self._spawn(self._dead_letter(receipt, receipt.attempt, error))
        else:
            self._spawn(receipt.message.nack(requeue=True))

    def _settle(self, receipt: _Receipt) -> bool:
        """Take the delivery out of flight; True when it still has to be answered on its channel."""
        if receipt.settled:
            return False
        receipt.settled = True
        if receipt.timer is not None:
            receipt.timer.cancel()
        in_flight = self._in_flight.get(receipt.queue)
        if in_flight is not None:
            in_flight.discard(receipt)
            if not in_flight:
                del self._in_flight[receipt.queue]
        return self._connection is not None and not receipt.channel.is_closed

    async def _dead_letter(self, receipt: _Receipt, attempts: int, error: str) -> None:
        """Publish the message to ``{queue}.dead`` (confirmed), then ack the original."""
        message = receipt.message
        failed_at = datetime.now(UTC)
        message_id = message.message_id or ""
        try:
            dead = receipt.queue + _DEAD_SUFFIX
            if dead not in self._declared:
                self._declared[dead] = await receipt.channel.declare_queue(
                    dead, durable=True, arguments=_DEAD_QUEUE_ARGUMENTS, timeout=_OPERATION_TIMEOUT_S
                )
            await receipt.channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    message_id=message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={
                        "message_id": message_id,
                        "attempts": attempts,
                        "error": error,
                        "failed_at": failed_at.isoformat(),
                    },
                ),
                routing_key=dead,
                mandatory=True,
                timeout=_OPERATION_TIMEOUT_S,
            )
        except _FAILURES:
            self._declared.pop(receipt.queue + _DEAD_SUFFIX, None)
            # Hand it back rather than leave it unacked forever; whoever gets it next dead-letters it.
            with contextlib.suppress(*_FAILURES):
                await message.nack(requeue=True)
            raise
        await message.ack()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A requeue that failed because the channel is gone is harmless: RabbitMQ requeued it.
            log.warning("RabbitMQ background answer failed: %r", task.exception())

    def _receipt_of(self, delivery: Delivery) -> _Receipt:
        if self._connection is None:
            raise BrokerError("the RabbitMQ broker is not open")
        if not isinstance(delivery.receipt, _Receipt):
            raise BrokerError(f"not a RabbitMQ delivery: {delivery!r}")
        return delivery.receipt


async def _open_work_channel(connection: AbstractConnection) -> AbstractChannel:
    # on_return_raises: a publish RabbitMQ cannot route (queue deleted) fails instead of vanishing.
    channel = connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.initialize(timeout=_OPERATION_TIMEOUT_S)
    return channel


def _attempt_of(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get("x-delivery-count", 0)
    return (count if isinstance(count, int) else 0) + 1


def _dead_letter_of(queue: str, message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    attempts = headers.get("attempts", 0)
    failed_at = headers.get("failed_at")
    return DeadLetter(
        queue=queue,
        message_id=str(headers.get("message_id") or message.message_id or ""),
        body=message.body,
        attempts=attempts if isinstance(attempts, int) else 0,
        error=str(headers.get("error", "")),
        failed_at=datetime.fromisoformat(failed_at) if isinstance(failed_at, str) else datetime.now(UTC),
    )


@contextlib.contextmanager
def _failures_as_broker_error(what: str) -> Iterator[None]:
    try:
        yield
    except BrokerError:
        raise
    except _FAILURES as err:
        raise BrokerError(f"RabbitMQ: cannot {what}: {err!r}") from err


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
