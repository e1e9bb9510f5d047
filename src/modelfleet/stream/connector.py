"""The StreamConnector protocol: how a stream service reads one external topic and writes results.

A connector is not a Broker: it consumes plain topics that any producer writes (a Redis stream, a
NATS subject, a RabbitMQ queue, an MQTT topic), in the shape that producer chose, and it publishes
plain messages that any consumer can read. What every connector promises:

- at-least-once: a message is handed out until it is acked; ``ack`` is called only after the
  message's result was published (and confirmed by the server), so a consumer that dies between
  the two duplicates a result but never loses one;
- a message received and not yet answered stays with this connector while it lives (connectors
  whose server would otherwise take it back after a timeout keep it alive); once the connector is
  closed, killed or disconnected, the message is handed out again (at once, or after
  ``ack_timeout_s`` where the server has to notice the silence);
- back-pressure: ``receive`` never hands out more than ``max_in_flight`` messages that are not
  answered yet, and the connector fetches no more than that from the server (where the server
  pushes, its prefetch or receive maximum is set to ``max_in_flight``);
- ``attempt`` counts the deliveries of the message including this one where the server counts
  them; where it only says "redelivered", a redelivered message has attempt 2; where it says
  nothing (MQTT without the DUP flag), 1.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from modelfleet.errors import ConfigError, ModelfleetError


class StreamError(ModelfleetError):
    """Raised when a stream server cannot be reached, refuses an operation, or the connection is lost."""


@dataclass(frozen=True)
class StreamMessage:
    """One delivery of one input message; answer it with ``ack`` or ``release``, once.

    ``id`` is stable across redeliveries: the server's own id where it has one (Redis entry id,
    JetStream sequence, AMQP message-id), otherwise a digest of the body.
    """

    id: str
    body: bytes
    attempt: int = 1
    receipt: Any = None


class StreamConnector(Protocol):
    """Reads one input topic as a consumer group member and publishes to any topic of the same server."""

    source: str
    max_in_flight: int
    ack_timeout_s: float

    async def open(self) -> None:
        """Connect, and create the input's group or subscription where missing; raises StreamError."""
        ...

    async def close(self) -> None:
        """Disconnect. Messages not yet acked are handed out again (see the module docstring)."""
        ...

    async def receive(self, max_messages: int, wait_s: float) -> list[StreamMessage]:
        """Up to ``max_messages`` messages; waits up to ``wait_s`` seconds for the first, [] if none.

        Never more than ``max_in_flight`` minus the messages handed out and not yet answered.
        Raises StreamError when the connection is lost; the caller then closes and reopens.
        """
        ...

    async def publish(self, topic: str, body: bytes, key: str | None = None) -> None:
        """Publish ``body`` to ``topic`` and return once the server has it (durably where it can).

        ``key`` identifies the publication for servers that can drop a repeated one (JetStream
        de-duplication, the AMQP message-id); raises StreamError.
        """
        ...

    async def ack(self, message: StreamMessage) -> None:
        """The message is done. A message whose connection was lost since is left alone: the server
        hands it out again anyway. Raises StreamError."""
        ...

    async def release(self, message: StreamMessage) -> None:
        """Give the message back unanswered, so it is handed out again (at once where the server
        can; on MQTT only after a reconnect). Raises StreamError."""
        ...


def body_digest(body: bytes) -> str:
    """A stable id for a message whose server gives it none."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:24]


# scheme -> (module, class, client library, extra that installs it)
_BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "redis": ("modelfleet.stream.connectors.redis", "RedisStreamConnector", "redis", "redis"),
    "rediss": ("modelfleet.stream.connectors.redis", "RedisStreamConnector", "redis", "redis"),
    "nats": ("modelfleet.stream.connectors.nats", "NatsStreamConnector", "nats", "nats"),
    "tls": ("modelfleet.stream.connectors.nats", "NatsStreamConnector", "nats", "nats"),
    "amqp": ("modelfleet.stream.connectors.rabbitmq", "RabbitMQStreamConnector", "aio_pika", "rabbitmq"),
    "amqps": ("modelfleet.stream.connectors.rabbitmq", "RabbitMQStreamConnector", "aio_pika", "rabbitmq"),
    "mqtt": ("modelfleet.stream.connectors.mqtt", "MqttStreamConnector", "paho.mqtt.client", "mqtt"),
    "mqtts": ("modelfleet.stream.connectors.mqtt", "MqttStreamConnector", "paho.mqtt.client", "mqtt"),
}

SCHEMES = tuple(_BACKENDS)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def make_connector(
    url: str,
    source: str,
    group: str,
    consumer: str,
    max_in_flight: int = 16,
    ack_timeout_s: float = 30.0,
) -> StreamConnector:
    """A closed connector reading ``source`` on the server at ``url``; call ``open()`` next.

    The scheme picks the backend: ``redis://`` (a stream), ``nats://`` (a JetStream subject),
    ``amqp://`` (a RabbitMQ queue), ``mqtt://`` (a topic). ``group`` names the consumer group that
    the replicas share, ``consumer`` this replica within it (stable across restarts, so a restarted
    replica finds its own unanswered messages). Raises ConfigError naming an unknown scheme or the
    extra to install when the client library is missing.
    """
    scheme = scheme_of(url)
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ConfigError(f"stream url: unknown scheme {scheme or url!r}; use one of {known}")
    if max_in_flight < 1:
        raise ConfigError(f"stream max_in_flight: must be at least 1, got {max_in_flight}")
    if ack_timeout_s <= 0:
        raise ConfigError(f"stream ack_timeout_s: must be positive, got {ack_timeout_s}")
    module_name, class_name, library, extra = _BACKENDS[scheme]
    try:
        importlib.import_module(library)
    except ImportError:
        raise ConfigError(
            f"stream url: {scheme}:// needs the {library} client: pip install 'modelfleet[{extra}]'"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    connector: StreamConnector = cls(
        url,
        source,
        group=group,
        consumer=consumer,
        max_in_flight=max_in_flight,
        ack_timeout_s=ack_timeout_s,
    )
    return connector
