"""Streams: services of ``kind: stream`` that consume a topic and publish one result per message.

``connector.py`` holds the StreamConnector protocol and ``make_connector(url, ...)``, which picks a
backend by URL scheme (``redis://``, ``nats://``, ``amqp://``, ``mqtt://``) and imports its client
library only then; ``connectors/`` has one module per server; ``service.py`` is the consumer loop
(decode, run through the fleet, publish, ack); ``main.py`` runs it as a process of the fleet.
"""

from __future__ import annotations

from modelfleet.stream.connector import StreamConnector, StreamError, StreamMessage, make_connector

__all__ = ["StreamConnector", "StreamError", "StreamMessage", "make_connector"]
