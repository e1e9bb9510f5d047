"""The stream service: reads a topic, runs every message through the fleet, publishes one record each.

A message's body is one JSON object: either the input itself, or the envelope
``{"id": ..., "input": {...}}`` (an object whose only keys are ``id`` and ``input``), whose ``id``
is copied into the record so that a producer can match results to what it sent. Without an
envelope, the record's ``id`` is the message's id on its server (see StreamMessage).

Every message gets exactly one record, published before the message is acked, so nothing is lost
and, after a crash between the two, a record may be published twice (at-least-once: readers
de-duplicate by ``id``). Records of concurrent messages are published in the order they finish,
not the order the messages arrived. A record is::

    {"id": ..., "message_id": ..., "service": ..., "target": "model:sentiment",
     "status": "succeeded" | "failed", "output": ..., "error": null | "...",
     "model_versions": {...}, "attempts": 1}

(``run_id`` too for a pipeline target, whose runs are stored like the gateway's.) What happens to a
message that does not succeed depends on whose fault it is:

- the message's own (not JSON, not an object, or refused by the model with a 4xx): a ``failed``
  record on the output topic, and the message is acked: retrying cannot help, and the stream must
  not stall behind it;
- the fleet's (a 5xx, a model service down, a deadline): the message stays unacked and is tried
  again after a backoff, ``max_attempts`` times in all; then a ``failed`` record with the original
  ``body`` goes to the dead-letter topic and the message is acked. A message whose server counts
  deliveries and that arrives with more than ``max_attempts`` of them (it kept killing its
  consumer) is dead-lettered without being tried.

Back-pressure: at most ``max_in_flight`` messages are held unacked at once; the service asks the
connector only for as many messages as it has free slots, and the connectors bound what the server
pushes to the same number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from modelfleet.gateway.app import GatewayApp
from modelfleet.pipeline.spec import CompiledPipeline
from modelfleet.settings import StreamSettings
from modelfleet.stream.connector import StreamConnector, StreamError, StreamMessage

log = logging.getLogger("modelfleet.stream")

RECEIVE_WAIT_S = 0.5
RETRY_BACKOFF_INITIAL_S = 0.25
RETRY_BACKOFF_MAX_S = 10.0
RECONNECT_BACKOFF_INITIAL_S = 0.5
RECONNECT_BACKOFF_MAX_S = 30.0


class BadMessage(ValueError):
    """Raised when a message body is not an input: not JSON, not an object, or a broken envelope.

    ``record_id`` is the envelope's id when it could be read, else the message's.
    """

    def __init__(self, message: str, record_id: Any) -> None:
        super().__init__(message)
        self.record_id = record_id


def decode_message(body: bytes, fallback_id: str) -> tuple[Any, dict[str, Any]]:
    """The record id and the input object of a message body; raises BadMessage saying what is wrong."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        preview = body[:80].decode("utf-8", errors="replace")
        raise BadMessage(f"the message is not JSON ({err}): {preview!r}", fallback_id) from None
    if not isinstance(value, dict):
        raise BadMessage(
            f"the message must be a JSON object (an input, or {{'id': ..., 'input': {{...}}}}), "
            f"not {type(value).__name__}",
            fallback_id,
        )
    if "input" not in value or not set(value) <= {"id", "input"}:
        return fallback_id, value
    record_id = value.get("id", fallback_id)
    if not isinstance(record_id, str | int) or isinstance(record_id, bool):
        raise BadMessage("the envelope's 'id' must be a string or an integer", fallback_id)
    if not isinstance(value["input"], dict):
        kind = type(value["input"]).__name__
        raise BadMessage(f"the envelope's 'input' must be a JSON object, not {kind}", record_id)
    return record_id, value["input"]


@dataclass
class StreamCounters:
    """What one stream process has done since it started."""

    received: int = 0
    published: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    retried: int = 0
    released: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class _Outcome:
    """One try of one input: the record fields, or why the fleet (not the input) failed."""

    fields: dict[str, Any]
    transient: str | None = None


class StreamService:
    """Consumes one topic through a StreamConnector and answers every message on the output topic."""

    def __init__(
        self,
        name: str,
        config: StreamSettings,
        fleet: GatewayApp,
        connector: StreamConnector,
        pipeline: CompiledPipeline,
        drain_timeout_s: float = 10.0,
        replica: int = 0,
    ) -> None:
        self.name = name
        self.replica = replica
        self.config = config
        self.fleet = fleet
        self.connector = connector
        self.pipeline = pipeline
        self.drain_timeout_s = drain_timeout_s
        self.group = connector_group(name, config)
        self.is_pipeline = config.pipeline is not None
        self.target = f"pipeline:{config.pipeline}" if self.is_pipeline else f"model:{config.model}"
        self.counters = StreamCounters()
        self.ready = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        """Open the fleet client and the connector, then consume; raises StreamError if the server is down."""
        await self.fleet.start()
        await self.connector.open()
        self._task = asyncio.get_running_loop().create_task(self._consume())
        self.ready = True

    async def stop(self) -> None:
        """Take no more messages, give those in hand ``drain_timeout_s`` to finish, then close.

        Messages still unanswered then come back to the next consumer.
        """
        self.ready = False
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.connector.close()
        await self.fleet.stop()

    async def _consume(self) -> None:
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                free = self.config.max_in_flight - len(self._in_flight)
                if free <= 0:
                    await asyncio.wait({*self._in_flight, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await self.connector.receive(free, RECEIVE_WAIT_S)
                except StreamError as err:
                    log.warning("stream %s: %s; reconnecting", self.name, err)
                    await self._reconnect()
                    continue
                except Exception:
                    log.exception("stream %s: receiving failed unexpectedly; reconnecting", self.name)
                    await self._reconnect()
                    continue
                for message in messages:
                    self.counters.received += 1
                    task = asyncio.ensure_future(self._handle(message))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
        finally:
            stopping.cancel()
            if self._in_flight:
                _, late = await asyncio.wait(self._in_flight, timeout=self.drain_timeout_s)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.wait(late)

    async def _reconnect(self) -> None:
        self.ready = False
        delay_s = RECONNECT_BACKOFF_INITIAL_S
        while not self._stopping.is_set():
            with contextlib.suppress(StreamError):
                await self.connector.close()
            if await self._sleep(delay_s):
                return
            try:
                await self.connector.open()
            except StreamError as err:
                log.warning("stream %s: cannot reconnect: %s", self.name, err)
                delay_s = min(2 * delay_s, RECONNECT_BACKOFF_MAX_S)
                continue
            self.counters.reconnects += 1
            self.ready = True
            return

    async def _sleep(self, delay_s: float) -> bool:
        """Wait ``delay_s`` seconds; True when a stop was asked for meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        return self._stopping.is_set()

    async def _handle(self, message: StreamMessage) -> None:
        try:
            await self._answer(message)
        except asyncio.CancelledError:
            await self._release(message, "the service stopped before it finished")
            raise
        except Exception as err:
            if not isinstance(err, StreamError):
                log.exception("stream %s: message %s failed unexpectedly", self.name, message.id)
            # A failure that repeats (a publish the server cannot route, say) must not turn into a
            # hot loop of redeliveries: hold the message, and its slot, for a while first.
            backoff_s = min(RETRY_BACKOFF_INITIAL_S * 2 ** (message.attempt - 1), RETRY_BACKOFF_MAX_S)
            await self._sleep(backoff_s)
            await self._release(message, str(err) if isinstance(err, StreamError) else repr(err))

    async def _release(self, message: StreamMessage, why: str) -> None:
        log.warning(
            "stream %s: message %s not answered (%s); it will be delivered again", self.name, message.id, why
        )
        self.counters.released += 1
        with contextlib.suppress(StreamError):
            await self.connector.release(message)

    async def _answer(self, message: StreamMessage) -> None:
        """Publish the message's one record (output or dead letters), then ack it."""
        max_attempts = self.config.max_attempts
        if message.attempt > max_attempts:
            unanswered = message.attempt - 1
            why = f"delivered {unanswered} times without an answer (its consumer died or hung)"
            await self._dead_letter(message, message.id, unanswered, why)
            return
        try:
            record_id, value = decode_message(message.body, message.id)
        except BadMessage as err:
            record = self._record(message, err.record_id, message.attempt, error=str(err))
            await self._publish(message, self.config.output, record)
            self.counters.failed += 1
            return
        attempt = message.attempt
        while True:
            outcome = await self._try(message, value)
            if outcome.transient is None:
                record = self._record(message, record_id, attempt, **outcome.fields)
                await self._publish(message, self.config.output, record)
                if record["status"] == "succeeded":
                    self.counters.succeeded += 1
                else:
                    self.counters.failed += 1
                return
            if attempt >= max_attempts:
                await self._dead_letter(
                    message, record_id, attempt, f"gave up after {attempt} attempts: {outcome.transient}"
                )
                return
            log.warning(
                "stream %s: message %s attempt %d failed: %s",
                self.name,
                message.id,
                attempt,
                outcome.transient,
            )
            self.counters.retried += 1
            backoff_s = min(RETRY_BACKOFF_INITIAL_S * 2 ** (attempt - message.attempt), RETRY_BACKOFF_MAX_S)
            if await self._sleep(backoff_s):
                await self._release(message, "the service is stopping")
                return
            attempt += 1

    async def _try(self, message: StreamMessage, value: dict[str, Any]) -> _Outcome:
        run_id = f"{self.group}:{message.id}"
        try:
            outcomes, runs, _, store_error = await self.fleet.pipelines.execute(
                self.pipeline,
                [value],
                uuid.uuid4().hex.encode(),
                self.config.request_timeout_s,
                store=self.is_pipeline,
                run_ids=[run_id],
            )
        except Exception as err:
            return _Outcome({}, f"{type(err).__name__}: {err}")
        outcome, run = outcomes[0], runs[0]
        if store_error is not None:
            return _Outcome({}, store_error)
        if outcome.status == "failed" and not outcome.client_error:
            return _Outcome({}, outcome.error or "the fleet failed")
        fields: dict[str, Any] = {"model_versions": run.model_versions}
        if self.is_pipeline:
            fields["run_id"] = run.id
        if outcome.status == "failed":
            fields["error"] = outcome.error
        else:
            fields["output"] = outcome.output if self.is_pipeline else outcome.output["output"]
        return _Outcome(fields)

    def _record(
        self,
        message: StreamMessage,
        record_id: Any,
        attempts: int,
        output: Any = None,
        error: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "id": record_id,
            "message_id": message.id,
            "service": self.name,
            "target": self.target,
            "status": "failed" if error is not None else "succeeded",
            "output": output,
            "error": error,
            "model_versions": extra.pop("model_versions", {}),
            "attempts": attempts,
            **extra,
        }

    async def _dead_letter(self, message: StreamMessage, record_id: Any, attempts: int, error: str) -> None:
        record = self._record(message, record_id, attempts, error=error)
        record["body"] = message.body.decode("utf-8", errors="replace")
        await self._publish(message, self.config.dead_letter_topic, record)
        self.counters.dead += 1
        log.error("stream %s: message %s dead-lettered: %s", self.name, message.id, error)

    async def _publish(self, message: StreamMessage, topic: str, record: dict[str, Any]) -> None:
        key = f"{self.group}:{message.id}" + (":dead" if topic == self.config.dead_letter_topic else "")
        await self.connector.publish(topic, orjson.dumps(record), key=key)
        self.counters.published += 1
        await self.connector.ack(message)


def connector_group(service: str, config: StreamSettings) -> str:
    """The consumer group the replicas of ``service`` share: ``group`` if set, else the service name."""
    return config.group or service


def describe(service: StreamService) -> dict[str, Any]:
    """The status that ``GET /v1/stream`` answers."""
    return {
        "service": service.name,
        "replica": service.replica,
        "ready": service.ready,
        "group": service.group,
        "input": service.config.input,
        "output": service.config.output,
        "dead_letter": service.config.dead_letter_topic,
        "target": service.target,
        "max_in_flight": service.config.max_in_flight,
        "in_flight": service.in_flight,
        **asdict(service.counters),
    }
