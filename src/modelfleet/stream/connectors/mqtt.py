"""Consuming an MQTT topic at QoS 1 with manual acknowledgement, publishing results at QoS 1.

MQTT has no consumer groups or queues; at-least-once comes from the session (MQTT 5):

- Each replica connects with a fixed client id (its ``consumer`` name), ``clean_start`` off and a
  session that outlives the connection (``session_expiry_s``, one day unless the URL's query says
  otherwise), so the broker keeps the subscription and queues messages while the replica is away.
- The replicas subscribe to the shared subscription ``$share/{group}/{source}`` at QoS 1, so each
  message goes to one of them (use ``group`` to tell fleets on one broker apart).
- Messages are acknowledged by hand (paho-mqtt's ``manual_ack``): the PUBACK goes out only when the
  stream service acks, after the result was published. The broker resends unacknowledged messages
  (with the DUP flag) when the same client id connects again, so a killed replica loses nothing
  once the supervisor has restarted it. MQTT cannot give one message back on a live connection:
  ``release`` only forgets it; it comes back at the next connection.
- Back-pressure is the MQTT 5 "receive maximum": the broker sends at most ``max_in_flight``
  unacknowledged messages (Mosquitto may resend a few more after a reconnect; they wait here).
- Results are published at QoS 1 and ``publish`` returns on the broker's PUBACK.
- MQTT carries no message id and no delivery count: a message's id is a digest of its body (send
  ``{"id": ..., "input": ...}`` to correlate results), and ``attempt`` is 2 for a message with the
  DUP flag, else 1. A message published at QoS 0 is delivered at QoS 0: at most once.
- Messages of a topic this client no longer subscribes to (a resumed session of an older
  configuration) are acknowledged and dropped with a warning.
- Limits of the broker apply: Mosquitto queues at most ``max_queued_messages`` (1000 by default)
  for a disconnected session and drops what comes after; raise it for long outages. A replica
  removed for good leaves its session's unacknowledged messages stranded until the session expires.

The client is paho-mqtt (installed with ``modelfleet[mqtt]``); its network loop runs on its own
thread and every callback is handed over to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from modelfleet.stream.connector import StreamError, StreamMessage, body_digest

log = logging.getLogger("modelfleet.stream")

DEFAULT_SESSION_EXPIRY_S = 24 * 3600
_CONNECT_TIMEOUT_S = 10.0
_OPERATION_TIMEOUT_S = 30.0
_KEEPALIVE_S = 30
_CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class _Receipt:
    client: mqtt.Client
    mid: int
    qos: int


class MqttStreamConnector:
    """A StreamConnector on an MQTT 5 broker (see the module docstring).

    ``url`` is ``mqtt://[user:password@]host[:1883][?session_expiry_s=N]`` (``mqtts://`` for TLS).
    """

    def __init__(
        self,
        url: str,
        source: str,
        group: str,
        consumer: str,
        max_in_flight: int = 16,
        ack_timeout_s: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        self.source = source
        self.group = group
        self.consumer = consumer
        self.max_in_flight = min(max_in_flight, 65535)
        self.ack_timeout_s = ack_timeout_s
        self._tls = parts.scheme == "mqtts"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if self._tls else 1883)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        query = parse_qs(parts.query)
        try:
            self.session_expiry_s = int(query.get("session_expiry_s", [DEFAULT_SESSION_EXPIRY_S])[0])
        except ValueError:
            raise StreamError(f"mqtt stream: session_expiry_s in the url must be an integer: {url}") from None
        share = "".join(c if c not in "/+#" else "_" for c in group)
        self.subscription = f"$share/{share}/{source}"
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Queue[mqtt.MQTTMessage | None] = asyncio.Queue()
        self._connected: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._held: set[_Receipt] = set()
        self._lost = False
        self._closing: tuple[mqtt.Client, asyncio.Future[None]] | None = None

    async def open(self) -> None:
        """Connect with this replica's session, subscribe, and start receiving; raises StreamError."""
        if self._client is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.consumer,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._arrived = asyncio.Queue()
        self._pending = {}
        self._held = set()
        self._lost = False
        self._connected = loop.create_future()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.session_expiry_s
        properties.ReceiveMaximum = self.max_in_flight
        self._client = client
        try:
            try:
                await asyncio.to_thread(
                    client.connect,
                    self._host,
                    self._port,
                    keepalive=_KEEPALIVE_S,
                    clean_start=False,
                    properties=properties,
                )
            except (OSError, ValueError) as err:
                raise StreamError(f"mqtt stream: cannot connect to {self._host}:{self._port}: {err}") from err
            client.loop_start()
            await self._wait(self._connected, "connect", _CONNECT_TIMEOUT_S)
            rc, mid = client.subscribe(self.subscription, options=SubscribeOptions(qos=1))
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                raise StreamError(f"mqtt stream: cannot subscribe to {self.subscription!r}: {rc}")
            await self._wait(self._expect(mid), f"subscribe to {self.subscription!r}", _OPERATION_TIMEOUT_S)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Disconnect; the session keeps what was not acked, for this client id's next connection."""
        client = self._client
        if client is None:
            return
        self._lost = True
        self._fail_pending("the connector was closed")
        assert self._loop is not None
        gone: asyncio.Future[None] = self._loop.create_future()
        self._closing = (client, gone)
        # Stopping paho's thread at once could drop PUBACKs still queued: wait until the DISCONNECT,
        # queued behind them, is on the wire.
        with contextlib.suppress(Exception):
            if client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
                await asyncio.wait_for(gone, _CLOSE_TIMEOUT_S)
        self._client = None
        await asyncio.to_thread(client.loop_stop)

    async def receive(self, max_messages: int, wait_s: float) -> list[StreamMessage]:
        client = self._live()
        out: list[StreamMessage] = []
        max_messages = min(max_messages, self.max_in_flight - len(self._held))
        if max_messages < 1:
            # Back-pressure: the caller holds max_in_flight unanswered messages already.
            await asyncio.sleep(wait_s)
            return out
        try:
            first = await asyncio.wait_for(self._arrived.get(), wait_s)
        except TimeoutError:
            return out
        items = [first]
        while len(items) < max_messages and not self._arrived.empty():
            items.append(self._arrived.get_nowait())
        for message in items:
            if message is None:
                continue  # the wake-up after a lost connection
            if not mqtt.topic_matches_sub(self.source, message.topic):
                log.warning("mqtt stream: dropping a message on %r, not %r", message.topic, self.source)
                if message.qos > 0:
                    client.ack(message.mid, message.qos)
                continue
            body = bytes(message.payload)
            receipt = _Receipt(client, message.mid, message.qos)
            self._held.add(receipt)
            out.append(StreamMessage(body_digest(body), body, 2 if message.dup else 1, receipt))
        if not out:
            self._live()
        return out

    async def publish(self, topic: str, body: bytes, key: str | None = None) -> None:
        """QoS 1; returns on the broker's PUBACK (MQTT has no de-duplication; ``key`` is unused)."""
        client = self._live()
        info = client.publish(topic, body, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise StreamError(f"mqtt stream: cannot publish to {topic!r}: {mqtt.error_string(info.rc)}")
        await self._wait(self._expect(info.mid), f"publish to {topic!r}", _OPERATION_TIMEOUT_S)

    async def ack(self, message: StreamMessage) -> None:
        receipt = self._receipt_of(message)
        # An older connection's message was (or will be) resent on this one under the same packet
        # id, which the broker may have given to another message since: never ack across connections.
        if receipt.client is self._client and not self._lost and receipt.qos > 0:
            receipt.client.ack(receipt.mid, receipt.qos)

    async def release(self, message: StreamMessage) -> None:
        self._receipt_of(message)

    def _live(self) -> mqtt.Client:
        if self._client is None:
            raise StreamError("the MQTT stream connector is not open")
        if self._lost:
            raise StreamError("mqtt stream: the connection was lost")
        return self._client

    def _receipt_of(self, message: StreamMessage) -> _Receipt:
        if not isinstance(message.receipt, _Receipt):
            raise StreamError(f"message {message.id} was not received from MQTT")
        self._held.discard(message.receipt)
        return message.receipt

    def _expect(self, mid: int) -> asyncio.Future[None]:
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[mid] = future
        return future

    async def _wait(self, future: asyncio.Future[None], what: str, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise StreamError(f"mqtt stream: no answer to {what} within {timeout_s:.0f}s") from None

    def _fail_pending(self, why: str) -> None:
        """Fail the calls waiting for an answer (a connect in progress, subscribes, publishes)."""
        waiting = [*self._pending.values(), *([self._connected] if self._connected is not None else [])]
        self._pending = {}
        for future in waiting:
            if not future.done():
                future.set_exception(StreamError(f"mqtt stream: {why}"))
                # Nobody may await it any more (a close after a failed open): that is no error.
                future.add_done_callback(_retrieve)

    # paho callbacks run on its network thread; each hands over to the event loop.

    def _soon(self, callback: Any, *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                self._loop.call_soon_threadsafe(callback, *args)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._soon(self._connect_answered, client, reason)

    def _connect_answered(self, client: mqtt.Client, reason: ReasonCode) -> None:
        future = self._connected
        if client is not self._client or future is None or future.done():
            return
        if reason.is_failure:
            future.set_exception(StreamError(f"mqtt stream: the broker refused the connection: {reason}"))
        else:
            future.set_result(None)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._soon(self._disconnected, client, reason)

    def _disconnected(self, client: mqtt.Client, reason: ReasonCode) -> None:
        if self._closing is not None and self._closing[0] is client and not self._closing[1].done():
            self._closing[1].set_result(None)
        if client is not self._client or self._lost:
            return
        log.warning("mqtt stream: disconnected from %s:%s: %s", self._host, self._port, reason)
        self._lost = True
        self._fail_pending(f"disconnected: {reason}")
        self._arrived.put_nowait(None)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._soon(self._message_arrived, client, message)

    def _message_arrived(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        if client is self._client:
            self._arrived.put_nowait(message)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._soon(self._answered, client, mid, reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        failed = next((r for r in reasons if r.is_failure), None)
        self._soon(self._answered, client, mid, failed)

    def _answered(self, client: mqtt.Client, mid: int, failure: ReasonCode | None) -> None:
        future = self._pending.pop(mid, None) if client is self._client else None
        if future is None or future.done():
            return
        if failure is not None and failure.is_failure:
            future.set_exception(StreamError(f"mqtt stream: the broker refused: {failure}"))
        else:
            future.set_result(None)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
