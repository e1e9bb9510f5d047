"""Reading a NATS subject through a JetStream durable pull consumer, and publishing with acknowledgement.

- The input subject must be captured by a JetStream stream: the one that already captures it
  (created by whoever produces), or else one this connector creates, ``MFS_{subject}``, with the
  server's default limits (nothing is deleted on ack; set your own retention for production).
  Output subjects get a stream the same way, because a JetStream publish is only acknowledged
  by a stream.
- The replicas of a service share one durable consumer named after ``group``, filtered to the
  input subject, so they compete for messages. Its ``ack_wait`` is ``ack_timeout_s``: a delivery
  not answered by then goes out again, counted by the server (``attempt`` is its delivery count).
  This connector sends "in progress" for every message it holds every ``ack_timeout_s / 3``, so a
  live replica keeps its messages however long the model takes; a dead one's come back after
  ``ack_timeout_s``. The consumer's own ``max_deliver`` would drop a message silently, so it is
  unlimited: the stream service dead-letters instead.
- A new consumer starts at the beginning of the stream (deliver policy "all").
- Receiving sends pull requests of our own: one ``no_wait`` request takes what is ready; only when
  nothing is, a one-message request waits on the server and expires there when the wait ends, so
  no request outlives the call and catches messages nobody reads (nats-py's ``fetch`` would wait
  for a whole batch).
- A message's id is its ``Nats-Msg-Id`` header when the producer set one, else
  ``{stream}:{sequence}``. ``publish`` sets ``Nats-Msg-Id`` to its key, so JetStream drops the
  repeated result of a redelivered message within its duplicate window (two minutes by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from modelfleet.stream.connector import StreamError, StreamMessage

log = logging.getLogger("modelfleet.stream")

_CONNECT_TIMEOUT_S = 2
_MAX_RECONNECT_ATTEMPTS = 60
_RECONNECT_WAIT_S = 2
_REQUEST_TIMEOUT_S = 5.0
_MIN_WAIT_S = 0.005
_PLAIN_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def name_token(name: str) -> str:
    """``name`` as one NATS name (no ``.``, ``*``, ``>`` or spaces); injective, readable for plain names."""
    return "".join(c if c in _PLAIN_NAME_CHARS else "".join(f"~{b:02X}" for b in c.encode()) for c in name)


def stream_name(subject: str) -> str:
    """The stream this connector creates for ``subject`` when no stream captures it."""
    return f"MFS_{name_token(subject)}"


class NatsStreamConnector:
    """A StreamConnector on NATS JetStream (see the module docstring); ``url`` is ``nats://host:4222``."""

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
        self.durable = name_token(group)
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None
        self._stream = ""
        self._streams: dict[str, str] = {}
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._arrived: asyncio.Queue[Msg] = asyncio.Queue()
        self._requests = 0
        self._held: dict[str, Msg] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._receive_lock = asyncio.Lock()

    async def open(self) -> None:
        """Connect, find or create the input's stream, and create or update the durable consumer."""
        if self._client is not None:
            return
        client = Client()
        try:
            # A server that is down must fail open() at once; reconnects are allowed afterwards.
            await client.connect(
                self.url,
                name=f"modelfleet-stream-{self.consumer}",
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=_CONNECT_TIMEOUT_S,
                error_cb=_on_error,
            )
        except Exception as err:
            raise StreamError(f"nats stream: cannot connect: {err!r}") from err
        client.options.update(
            allow_reconnect=True,
            max_reconnect_attempts=_MAX_RECONNECT_ATTEMPTS,
            reconnect_time_wait=_RECONNECT_WAIT_S,
        )
        jetstream = client.jetstream(timeout=_REQUEST_TIMEOUT_S)
        try:
            with _translated("prepare the input"):
                await jetstream.account_info()
                self._streams.clear()
                self._stream = await self._stream_for(jetstream, self.source)
                # Creating an existing durable consumer with a new ack_wait updates it.
                await jetstream.add_consumer(
                    self._stream,
                    api.ConsumerConfig(
                        durable_name=self.durable,
                        filter_subject=self.source,
                        ack_policy=api.AckPolicy.EXPLICIT,
                        ack_wait=self.ack_timeout_s,
                        max_deliver=-1,
                        deliver_policy=api.DeliverPolicy.ALL,
                    ),
                )
                self._inbox = client.new_inbox()
                self._arrived = asyncio.Queue()
                self._subscription = await client.subscribe(f"{self._inbox}.*", cb=self._arrived.put)
        except StreamError:
            await client.close()
            raise
        self._client, self._jetstream = client, jetstream
        self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())

    async def close(self) -> None:
        """Disconnect; held messages come back after ``ack_timeout_s``.

        After a reopen, messages still held are kept alive and answered on the new connection.
        """
        client, self._client, self._jetstream = self._client, None, None
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if client is None or client.is_closed:
            return
        with contextlib.suppress(nats.errors.Error, OSError):
            # Messages that arrived after their pull gave up were never handed out: give them back now.
            while not self._arrived.empty():
                msg = self._arrived.get_nowait()
                if msg.reply:
                    await client.publish(msg.reply, b"-NAK")
            await client.close()

    async def receive(self, max_messages: int, wait_s: float) -> list[StreamMessage]:
        client = self._connection()
        max_messages = min(max_messages, self.max_in_flight - len(self._held))
        if max_messages < 1:
            # Back-pressure: the caller holds max_in_flight unanswered messages already.
            await asyncio.sleep(wait_s)
            return []
        deadline = time.monotonic() + wait_s
        async with self._receive_lock:
            msgs = self._buffered(max_messages)
            if len(msgs) < max_messages:
                msgs += await self._pull(client, max_messages - len(msgs))
            while not msgs and (remaining_s := deadline - time.monotonic()) >= _MIN_WAIT_S:
                msgs = await self._pull(client, 1, expires_s=remaining_s)
                if not msgs:
                    break
                if max_messages > 1:
                    msgs += await self._pull(client, max_messages - 1)
        out = []
        for msg in msgs:
            metadata = msg.metadata
            message_id = (msg.headers or {}).get(
                "Nats-Msg-Id"
            ) or f"{metadata.stream}:{metadata.sequence.stream}"
            self._held[msg.reply] = msg
            out.append(StreamMessage(message_id, msg.data, int(metadata.num_delivered), msg))
        return out

    async def publish(self, topic: str, body: bytes, key: str | None = None) -> None:
        """A JetStream publish, acknowledged by the stream capturing ``topic`` (created if none does)."""
        self._connection()
        assert self._jetstream is not None
        jetstream = self._jetstream
        with _translated(f"publish to {topic!r}"):
            stream = self._streams.get(topic) or await self._stream_for(jetstream, topic)
            await jetstream.publish(topic, body, stream=stream, headers={"Nats-Msg-Id": key} if key else None)

    async def ack(self, message: StreamMessage) -> None:
        await self._answer(message, b"+ACK")

    async def release(self, message: StreamMessage) -> None:
        await self._answer(message, b"-NAK")

    def _connection(self) -> Client:
        if self._client is None or self._client.is_closed:
            raise StreamError("the NATS stream connector is not open (or gave up reconnecting)")
        return self._client

    async def _stream_for(self, jetstream: JetStreamContext, subject: str) -> str:
        """The stream capturing ``subject``, created when none does."""
        try:
            name = str(await jetstream.find_stream_name_by_subject(subject))
        except NotFoundError:
            name = stream_name(subject)
            try:
                await jetstream.add_stream(name=name, subjects=[subject], storage=api.StorageType.FILE)
            except BadRequestError as err:
                # Another replica made it meanwhile, or a stream with overlapping subjects exists.
                try:
                    name = str(await jetstream.find_stream_name_by_subject(subject))
                except NotFoundError:
                    raise StreamError(f"nats stream: cannot create a stream for {subject!r}: {err}") from err
        self._streams[subject] = name
        return name

    def _buffered(self, limit: int) -> list[Msg]:
        """Messages that came in after their pull request stopped waiting (rare)."""
        out: list[Msg] = []
        while len(out) < limit and not self._arrived.empty():
            msg = self._arrived.get_nowait()
            if msg.reply:
                out.append(msg)
        return out

    async def _pull(self, client: Client, batch: int, expires_s: float | None = None) -> list[Msg]:
        """One pull request: ``no_wait`` without ``expires_s``, else it waits on the server that long."""
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        request: dict[str, Any] = {"batch": batch}
        if expires_s is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires_s * 1e9)
        msgs: list[Msg] = []
        deadline = time.monotonic() + (expires_s or 0.0) + _REQUEST_TIMEOUT_S
        with _translated(f"read subject {self.source!r}"):
            await client.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self.durable}",
                json.dumps(request).encode(),
                reply=reply,
            )
            while len(msgs) < batch:
                try:
                    msg = await asyncio.wait_for(self._arrived.get(), deadline - time.monotonic())
                except TimeoutError:
                    if client.is_closed or not client.is_connected:
                        raise StreamError("nats stream: the connection is lost") from None
                    break
                if msg.reply:
                    msgs.append(msg)
                elif msg.subject == reply:
                    status = (msg.headers or {}).get("Status")
                    if status == "409":
                        log.warning("NATS refused a pull on %s: %s", self.source, msg.headers)
                    break
        return msgs

    async def _answer(self, message: StreamMessage, answer: bytes) -> None:
        """Send an ack-family answer on the current connection and wait for the server to confirm it."""
        msg = message.receipt
        if not isinstance(msg, Msg) or not msg.reply:
            raise StreamError(f"message {message.id} was not received from NATS")
        self._held.pop(msg.reply, None)
        client = self._connection()
        with _translated("answer a message"):
            await client.request(msg.reply, answer, timeout=_REQUEST_TIMEOUT_S)

    async def _keep_alive(self) -> None:
        interval_s = max(0.05, self.ack_timeout_s / 3)
        while True:
            await asyncio.sleep(interval_s)
            client = self._client
            if client is None or client.is_closed:
                continue
            for reply in list(self._held):
                try:
                    await client.publish(reply, b"+WPI")
                except (nats.errors.Error, OSError) as err:
                    log.warning("nats stream %s: cannot keep a message: %r", self.source, err)
                    break


async def _on_error(err: Exception) -> None:
    log.warning("NATS connection error: %r", err)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except StreamError:
        raise
    except (nats.errors.Error, OSError, TimeoutError) as err:
        raise StreamError(f"nats stream: cannot {action}: {err!r}") from err
