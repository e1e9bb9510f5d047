"""Brokers: durable queues for jobs, with the same at-least-once semantics on every backend.

``make_broker(url, ...)`` picks the implementation from the URL's scheme and imports its client
library only then: ``sqlite:///path`` (embedded, the default), ``redis://``, ``nats://``,
``amqp://`` (RabbitMQ).
"""

from __future__ import annotations

import importlib

from modelfleet.broker.broker import Broker, BrokerError, DeadLetter, Delivery
from modelfleet.errors import ConfigError

__all__ = ["Broker", "BrokerError", "DeadLetter", "Delivery", "make_broker"]

# scheme -> (module, class, client library, extra that installs it)
_BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "sqlite": ("modelfleet.broker.brokers.sqlite", "SqliteBroker", "aiosqlite", ""),
    "redis": ("modelfleet.broker.brokers.redis", "RedisBroker", "redis", "redis"),
    "nats": ("modelfleet.broker.brokers.nats", "NatsBroker", "nats", "nats"),
    "amqp": ("modelfleet.broker.brokers.rabbitmq", "RabbitMQBroker", "aio_pika", "rabbitmq"),
}


def make_broker(url: str, visibility_timeout_s: float = 30.0, max_attempts: int = 5) -> Broker:
    """A closed broker for ``url``; call ``open()`` next.

    Raises ConfigError naming an unknown scheme, or saying what to install when the client library
    is missing.
    """
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ConfigError(f"broker_url: unknown scheme {scheme or url!r}; use one of {known}")
    module_name, class_name, library, extra = _BACKENDS[scheme]
    try:
        importlib.import_module(library)
    except ImportError:
        hint = f"pip install 'modelfleet[{extra}]'" if extra else f"pip install {library}"
        raise ConfigError(f"broker_url: {scheme} needs the {library} client: {hint}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    broker: Broker = cls(url, visibility_timeout_s=visibility_timeout_s, max_attempts=max_attempts)
    return broker
