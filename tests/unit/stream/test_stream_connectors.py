"""The StreamConnector contract, one test body per behaviour, run against every real server.

Redis, NATS JetStream, RabbitMQ and Mosquitto on 127.0.0.1 (see tests/conftest.py STREAM_SERVERS).
A server that is unreachable skips locally and fails under CI=true. Every test uses topics and
client ids of its own and removes them afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from tests.conftest import STREAM_SERVERS, forget_stream_topics, unreachable

from modelfleet.errors import ConfigError
from modelfleet.stream import StreamConnector, StreamError, StreamMessage, make_connector

BACKENDS = list(STREAM_SERVERS)


@dataclass
class Server:
    """One backend for one test: makes topics and connectors, and forgets them all afterwards."""

    backend: str
    url: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    topics: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    opened: list[StreamConnector] = field(default_factory=list)

    def topic(self, role: str) -> str:
        name = f"mftest.{self.tag}.{role}"
        self.topics.append(name)
        return name

    async def connector(
        self,
        source: str,
        consumer: str = "c0",
        group: str | None = None,
        max_in_flight: int = 16,
        ack_timeout_s: float = 30.0,
    ) -> StreamConnector:
        group = group or f"g{self.tag}"
        client = f"{group}-{consumer}"
        if client not in self.clients:
            self.clients.append(client)
        connector = make_connector(
            self.url,
            source,
            group=group,
            consumer=client,
            max_in_flight=max_in_flight,
            ack_timeout_s=ack_timeout_s,
        )
        try:
            await connector.open()
        except StreamError as err:
            unreachable(self.backend, err)
        self.opened.append(connector)
        return connector

    async def forget(self) -> None:
        for connector in self.opened:
            await connector.close()
        await forget_stream_topics(self.url, self.topics, self.clients)


Scenario = Callable[[Server], Awaitable[None]]


def run(backend: str, scenario: Scenario) -> None:
    async def main() -> None:
        server = Server(backend, STREAM_SERVERS[backend])
        try:
            await scenario(server)
        finally:
            await server.forget()

    asyncio.run(main())


async def receive_all(
    connector: StreamConnector, count: int, timeout_s: float = 10.0, batch: int = 16
) -> list[StreamMessage]:
    """Receive until ``count`` messages arrived or ``timeout_s`` passed."""
    out: list[StreamMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out += await connector.receive(min(batch, count - len(out)), wait_s=0.2)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_published_messages_are_received_once_and_gone_after_ack(backend: str) -> None:
    async def scenario(server: Server) -> None:
        source = server.topic("in")
        consumer = await server.connector(source)
        bodies = [f'{{"n": {i}}}'.encode() for i in range(5)]
        for body in bodies:
            await consumer.publish(source, body)
        got = await receive_all(consumer, 5)
        assert sorted(m.body for m in got) == sorted(bodies)
        assert len({m.id for m in got}) == 5
        assert all(m.attempt == 1 for m in got)
        for message in got:
            await consumer.ack(message)
        # Then nothing comes back, not even to a restarted consumer of the same name.
        await consumer.close()
        again = await server.connector(source)
        assert await again.receive(16, wait_s=1.0) == []

    run(backend, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unacked_message_comes_back_to_the_restarted_consumer(backend: str) -> None:
    async def scenario(server: Server) -> None:
        source = server.topic("in")
        first = await server.connector(source, ack_timeout_s=1.0)
        await first.publish(source, b'{"text": "again"}')
        await first.publish(source, b'{"text": "done"}')
        got = await receive_all(first, 2)
        done = next(m for m in got if b"done" in m.body)
        await first.ack(done)
        # When the consumer goes away without acking the other one (as a killed replica would)
        await first.close()
        restarted = await server.connector(source, ack_timeout_s=1.0)
        (back,) = await receive_all(restarted, 1, timeout_s=10)
        # Then it, and only it, is delivered again, counted as a redelivery
        assert back.body == b'{"text": "again"}'
        assert back.attempt == 2
        await restarted.ack(back)
        assert await restarted.receive(16, wait_s=1.5) == []

    run(backend, scenario)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "mqtt"])
def test_another_replica_takes_over_a_dead_replicas_messages(backend: str) -> None:
    # MQTT keeps a session's unacknowledged messages for that client id alone (see connectors/mqtt.py).
    async def scenario(server: Server) -> None:
        source = server.topic("in")
        dead = await server.connector(source, consumer="c0", ack_timeout_s=1.0)
        await dead.publish(source, b'{"text": "orphan"}')
        (held,) = await receive_all(dead, 1)
        # When the replica dies holding it (its connection goes; nobody restarts it)
        await dead.close()
        other = await server.connector(source, consumer="c1", ack_timeout_s=1.0)
        started = time.monotonic()
        (taken,) = await receive_all(other, 1, timeout_s=10)
        # Then the other replica gets it, after at most about the ack timeout
        assert (taken.id, taken.body) == (held.id, held.body)
        assert taken.attempt == 2
        assert time.monotonic() - started < 8
        await other.ack(taken)

    run(backend, scenario)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "mqtt"])
def test_a_live_consumer_keeps_its_messages_past_the_ack_timeout(backend: str) -> None:
    async def scenario(server: Server) -> None:
        source = server.topic("in")
        slow = await server.connector(source, consumer="c0", ack_timeout_s=0.6)
        other = await server.connector(source, consumer="c1", ack_timeout_s=0.6)
        await slow.publish(source, b'{"text": "long work"}')
        (held,) = await receive_all(slow, 1)
        # While the holder works for three ack timeouts, nobody else gets the message
        assert await other.receive(16, wait_s=2.0) == []
        await slow.ack(held)
        assert await other.receive(16, wait_s=1.0) == []

    run(backend, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_released_message_is_delivered_again(backend: str) -> None:
    async def scenario(server: Server) -> None:
        source = server.topic("in")
        connector = await server.connector(source, ack_timeout_s=30.0)
        await connector.publish(source, b'{"text": "retry me"}')
        (message,) = await receive_all(connector, 1)
        await connector.release(message)
        if backend == "mqtt":
            # MQTT cannot give a message back on a live connection: it returns at the next one.
            await connector.close()
            connector = await server.connector(source)
        (again,) = await receive_all(connector, 1, timeout_s=10)
        assert (again.id, again.body) == (message.id, message.body)
        assert again.attempt == 2
        await connector.ack(again)

    run(backend, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_more_than_max_in_flight_messages_are_handed_out_unacked(backend: str) -> None:
    async def scenario(server: Server) -> None:
        source = server.topic("in")
        connector = await server.connector(source, max_in_flight=3)
        for i in range(8):
            await connector.publish(source, f'{{"n": {i}}}'.encode())
        await asyncio.sleep(0.5)  # let push-based servers send whatever they will
        # Asking for everything gets at most max_in_flight, however long we wait
        first = await receive_all(connector, 8, timeout_s=1.0)
        assert len(first) == 3
        # Each ack makes room for one more, never for more
        await connector.ack(first[0])
        (fourth,) = await receive_all(connector, 8, timeout_s=0.6)
        got = [*first, fourth]
        held = [*first[1:], fourth]
        while len(got) < 8:
            for message in held:
                await connector.ack(message)
            held = await receive_all(connector, min(3, 8 - len(got)))
            assert 0 < len(held) <= 3
            got += held
        for message in held:
            await connector.ack(message)
        assert sorted(m.body for m in got) == sorted(f'{{"n": {i}}}'.encode() for i in range(8))

    run(backend, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_published_to_another_topic_can_be_read_there(backend: str) -> None:
    async def scenario(server: Server) -> None:
        source, output = server.topic("in"), server.topic("out")
        reader = await server.connector(output, consumer="reader")
        writer = await server.connector(source)
        await writer.publish(output, b'{"result": 1}', key="g:1")
        await writer.publish(output, b'{"result": 2}', key="g:2")
        got = await receive_all(reader, 2)
        assert sorted(m.body for m in got) == [b'{"result": 1}', b'{"result": 2}']

    run(backend, scenario)


def test_nats_drops_a_repeated_publication_of_the_same_key() -> None:
    async def scenario(server: Server) -> None:
        output = server.topic("out")
        reader = await server.connector(output, consumer="reader")
        await reader.publish(output, b'{"result": 1}', key="g:S:7")
        await reader.publish(output, b'{"result": 1}', key="g:S:7")
        got = await receive_all(reader, 2, timeout_s=1.5)
        assert [m.body for m in got] == [b'{"result": 1}']

    run("nats", scenario)


def test_a_redis_entry_without_a_body_field_is_its_fields_as_an_object() -> None:
    async def scenario(server: Server) -> None:
        import redis.asyncio

        source = server.topic("in")
        connector = await server.connector(source)
        client = redis.asyncio.from_url(server.url)
        try:
            entry_id = await client.xadd(source, {"text": "I love it", "lang": "en"})
            await client.xadd(source, {"body": '{"text": 5}'})
        finally:
            await client.aclose()
        plain, with_body = await receive_all(connector, 2)
        assert plain.id == entry_id.decode()
        assert plain.body == b'{"text":"I love it","lang":"en"}'
        assert with_body.body == b'{"text": 5}'

    run("redis", scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_fails_fast_with_stream_error_when_no_server_listens(backend: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed
    scheme = STREAM_SERVERS[backend].split("://", 1)[0]
    url = f"{scheme}://guest:guest@127.0.0.1:{port}/"

    async def scenario() -> None:
        connector = make_connector(url, "in", group="g", consumer="g-0")
        started = time.monotonic()
        with pytest.raises(StreamError):
            await connector.open()
        assert time.monotonic() - started < 12
        with pytest.raises(StreamError):
            await connector.receive(1, wait_s=0.1)
        with pytest.raises(StreamError):
            await connector.publish("out", b"{}")

    asyncio.run(scenario())


def test_make_connector_names_an_unknown_scheme_and_bad_limits() -> None:
    with pytest.raises(ConfigError, match=r"unknown scheme 'kafka'.*redis://.*mqtt://"):
        make_connector("kafka://127.0.0.1:9092", "in", group="g", consumer="g-0")
    with pytest.raises(ConfigError, match="max_in_flight"):
        make_connector("redis://127.0.0.1", "in", group="g", consumer="g-0", max_in_flight=0)
    with pytest.raises(ConfigError, match="ack_timeout_s"):
        make_connector("redis://127.0.0.1", "in", group="g", consumer="g-0", ack_timeout_s=0)
