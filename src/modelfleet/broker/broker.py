"""The Broker protocol: what every queue backend promises.

Semantics, identical on every backend (the contract tests in tests/contract/test_broker.py hold
each implementation to them):

- at-least-once: a message is handed out until a consumer acks it;
- a delivery that is neither acked nor nacked within ``visibility_timeout_s`` (a consumer that
  hung or died) is handed out again, with ``attempt`` one higher;
- ``nack`` hands the message out again at once, unless it has had ``max_attempts`` deliveries:
  then it moves to the queue's dead letters with the error; a message delivered ``max_attempts``
  times without any answer (it keeps killing its consumer) is dead-lettered the same way;
- ``message_id`` is stable across redeliveries, so the consumer can make its result writes
  idempotent (one result per message, however often it is delivered);
- a late answer (``nack`` or ``extend`` on a delivery whose visibility ran out and that was handed
  out again) changes nothing: the newer delivery decides. A late ``ack`` finishes the message on
  Redis and is ignored on the others; either is harmless, because results are idempotent;
- ``depth`` counts waiting and in-flight messages where the backend can see them; on RabbitMQ it
  cannot see other connections' unacked deliveries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from modelfleet.errors import ModelfleetError


class BrokerError(ModelfleetError):
    """Raised when the broker cannot be reached or refuses an operation."""


@dataclass(frozen=True)
class Delivery:
    """One hand-out of a message to one consumer; answer it with ack or nack exactly once."""

    queue: str
    message_id: str
    body: bytes
    attempt: int
    receipt: Any = None


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed ``max_attempts`` times, kept with its last error."""

    queue: str
    message_id: str
    body: bytes
    attempts: int
    error: str
    failed_at: datetime


class Broker(Protocol):
    """A durable queue service (see the module docstring for the shared semantics)."""

    visibility_timeout_s: float
    max_attempts: int

    async def open(self) -> None:
        """Connect (and create what the backend needs); raises BrokerError."""
        ...

    async def close(self) -> None:
        """Disconnect. Deliveries not yet answered are handed out again later."""
        ...

    async def publish(self, queue: str, body: bytes, message_id: str | None = None) -> str:
        """Append a message; returns its message id (``message_id`` or a new one)."""
        ...

    async def receive(
        self, queue: str, consumer: str, max_messages: int = 1, wait_s: float = 1.0
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries for ``consumer``; waits up to ``wait_s`` seconds for one."""
        ...

    async def ack(self, delivery: Delivery) -> None:
        """The message is done (its result stored); it is never handed out again."""
        ...

    async def nack(self, delivery: Delivery, error: str) -> None:
        """The attempt failed with ``error``: hand it out again, or dead-letter it after max_attempts."""
        ...

    async def extend(self, delivery: Delivery) -> None:
        """Still working on it: restart the visibility timeout of this delivery."""
        ...

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        ...

    async def depth(self, queue: str) -> int:
        """Messages waiting or in flight (not acked, not dead)."""
        ...
