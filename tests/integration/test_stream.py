"""Stream services end to end: a real fleet whose stream processes consume Redis, NATS, RabbitMQ and
MQTT topics on the local servers, run every message through a pipeline, and publish the results.

One fleet serves the whole module: a worker with the test models and VADER, one stream service per
server (pipeline target), and a two-replica Redis stream service with a plain model target. The
per-server stream services reach their server through a TCP proxy of this test, so a test can cut
their connections the way a network or server failure would. Producers and readers are connectors
of their own, connected directly, with their own consumer groups.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from modelfleet.stream import StreamConnector, StreamError, make_connector
from tests.conftest import STREAM_SERVERS, RunningFleet, call, forget_stream_topics, start_fleet, unreachable

BACKENDS = list(STREAM_SERVERS)
TAG = uuid.uuid4().hex[:8]
MAX_IN_FLIGHT = 4
MAX_ATTEMPTS = 2


def url_of(backend: str) -> str:
    """The server of ``backend``; the model-target service ("model") reads Redis."""
    return STREAM_SERVERS["redis" if backend == "model" else backend]


def topic(backend: str, role: str) -> str:
    return f"mftest.{TAG}.{backend}.{role}"


def group(backend: str) -> str:
    return f"mf{TAG}-{backend}"


def stream_section(backend: str, url: str, **target: str) -> dict[str, Any]:
    return {
        "url": url,
        "input": topic(backend, "in"),
        "output": topic(backend, "out"),
        "group": group(backend),
        "max_in_flight": MAX_IN_FLIGHT,
        "max_attempts": MAX_ATTEMPTS,
        "ack_timeout_s": 2.0,
        **(target or {"pipeline": "triage"}),
    }


CONFIG: dict[str, Any] = {
    "supervisor": {"restart_backoff_initial_s": 0.2, "drain_timeout_s": 3},
    "models": {
        "sentiment": {"class": "vader-sentiment"},
        "sleepy": {"class": "mf_test_models:Sleepy"},
        "failing": {"class": "mf_test_models:Failing"},
    },
    "pipelines": {
        "triage": {
            "steps": {
                "slow": {"model": "sleepy", "input": {"text": "input.text", "sleep_ms": "input.sleep_ms"}},
                "mood": {"model": "sentiment", "input": {"text": "input.text"}},
                "check": {"model": "failing", "input": {"text": "input.text"}},
            },
            "output": {"label": "mood.label", "text": "slow.text"},
        }
    },
}


def fleet_config(urls: dict[str, str]) -> dict[str, Any]:
    """The module's fleet; ``urls`` are the servers' addresses as the stream services see them."""
    return {
        **CONFIG,
        "services": {
            "light": {"models": ["sentiment", "sleepy", "failing"]},
            **{f"s-{b}": {"kind": "stream", "stream": stream_section(b, urls[b])} for b in BACKENDS},
            "s-model": {
                "kind": "stream",
                "replicas": 2,
                "stream": stream_section("model", url_of("model"), model="sentiment"),
            },
        },
    }


class CuttableProxy:
    """A TCP proxy on a free loopback port to a real server; ``cut()`` aborts every connection
    through it (both ends), as a network failure or a server restart would, and keeps listening."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.transports: set[asyncio.WriteTransport] = set()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(timeout=5)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.transports |= {writer.transport, upstream_writer.transport}
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    def cut(self) -> None:
        def abort() -> None:
            for transport in self.transports:
                transport.abort()
            self.transports.clear()

        self.loop.call_soon_threadsafe(abort)

    def close(self) -> None:
        self.server.close()
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


def through(proxy: CuttableProxy, url: str) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Readers:
    """Connectors of the test's own, opened before anything is produced (MQTT keeps nothing for
    a subscriber that comes later), and everything to forget afterwards."""

    opened: list[StreamConnector] = field(default_factory=list)

    async def open(self, backend: str, source: str, name: str) -> StreamConnector:
        connector = make_connector(url_of(backend), source, group=f"t{TAG}{name}", consumer=f"t{TAG}{name}-0")
        await connector.open()
        self.opened.append(connector)
        return connector

    async def close(self) -> None:
        for connector in self.opened:
            await connector.close()
        self.opened.clear()


async def reachable(backend: str) -> None:
    connector = make_connector(
        STREAM_SERVERS[backend], topic(backend, "probe"), group="probe", consumer="p-0"
    )
    await connector.open()
    await connector.close()


@pytest.fixture(scope="module")
def proxies() -> Iterator[dict[str, CuttableProxy]]:
    for backend in BACKENDS:
        try:
            asyncio.run(reachable(backend))
        except StreamError as err:
            unreachable(backend, err)
    made = {}
    for backend in BACKENDS:
        parts = urlsplit(STREAM_SERVERS[backend])
        made[backend] = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 0)
    yield made
    for proxy in made.values():
        proxy.close()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, proxies: dict[str, CuttableProxy]
) -> Iterator[RunningFleet]:
    urls = {b: through(proxies[b], STREAM_SERVERS[b]) for b in BACKENDS}
    running = start_fleet(tmp_path_factory.mktemp("streams"), fleet_config(urls))
    try:
        yield running
    finally:
        running.stop()
        asyncio.run(forget_everything())


async def forget_everything() -> None:
    for backend in [*BACKENDS, "model"]:
        url = url_of(backend)
        roles = ("in", "out", "out.dead", "probe")
        clients = [f"{group(backend)}-0", f"{group(backend)}-1", "p-0"]
        clients += [f"t{TAG}{backend}{r}-0" for r in ("out", "dead", "kill", "poison", "poisondead")]
        await forget_stream_topics(url, [topic(backend, r) for r in roles], clients)


async def read_records(
    reader: StreamConnector, wanted: set[Any], timeout_s: float = 30.0, at_least: int | None = None
) -> list[dict[str, Any]]:
    """Records from ``reader`` until every id in ``wanted`` was seen, or ``at_least`` records when
    given (or the time is up); acks them."""
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s

    def done() -> bool:
        return len(records) >= at_least if at_least is not None else wanted <= {r["id"] for r in records}

    while not done() and time.monotonic() < deadline:
        for message in await reader.receive(16, wait_s=0.2):
            records.append(json.loads(message.body))
            await reader.ack(message)
    return records


def envelope(record_id: str, text: Any, sleep_ms: int = 0) -> bytes:
    return json.dumps({"id": record_id, "input": {"text": text, "sleep_ms": sleep_ms}}).encode()


def status_of(fleet: RunningFleet, service: str) -> list[dict[str, Any]]:
    return [call(f"{p['url']}/v1/stream").json() for p in fleet.replicas(service)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_message_gets_its_result_on_the_output_topic(fleet: RunningFleet, backend: str) -> None:
    texts = ["I love it", "I hate it"]
    ids = {f"rt-{i}" for i in range(20)}

    async def scenario() -> list[dict[str, Any]]:
        readers = Readers()
        try:
            output = await readers.open(backend, topic(backend, "out"), f"{backend}out")
            producer = await readers.open(backend, topic(backend, "probe"), f"{backend}producer")
            for i in range(20):
                await producer.publish(topic(backend, "in"), envelope(f"rt-{i}", texts[i % 2]))
            return await read_records(output, ids)
        finally:
            await readers.close()

    records = [r for r in asyncio.run(scenario()) if str(r["id"]).startswith("rt-")]
    assert sorted(r["id"] for r in records) == sorted(ids)  # each exactly once
    for record in records:
        i = int(record["id"].split("-")[1])
        assert record["status"] == "succeeded", record
        assert record["output"] == {"label": ["positive", "negative"][i % 2], "text": texts[i % 2]}
        assert record["target"] == "pipeline:triage"
        assert record["service"] == f"s-{backend}"
        assert set(record["model_versions"]) == {"sentiment", "sleepy", "failing"}
        assert record["attempts"] == 1
    (status,) = status_of(fleet, f"s-{backend}")
    assert status["succeeded"] >= 20
    assert status["max_in_flight"] == MAX_IN_FLIGHT


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stream_process_killed_mid_flow_loses_no_message(fleet: RunningFleet, backend: str) -> None:
    service = f"s-{backend}"
    ids = {f"k-{i}" for i in range(24)}
    (before,) = fleet.replicas(service)
    at_kill: dict[str, Any] = {}

    async def scenario() -> list[dict[str, Any]]:
        readers = Readers()
        try:
            output = await readers.open(backend, topic(backend, "out"), f"{backend}kill")
            producer = await readers.open(backend, topic(backend, "probe"), f"{backend}producer")
            status = call(f"{before['url']}/v1/stream").json()
            done_before = status["succeeded"]
            for i in range(24):
                await producer.publish(topic(backend, "in"), envelope(f"k-{i}", f"item {i}", sleep_ms=150))
            deadline = time.monotonic() + 15
            while status["succeeded"] < done_before + 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                status = call(f"{before['url']}/v1/stream").json()
            at_kill.update(status, done=status["succeeded"] - done_before)
            # When the stream process dies without a word, with messages in hand and unacked
            os.kill(before["pid"], signal.SIGKILL)
            return await read_records(output, ids, timeout_s=40)
        finally:
            await readers.close()

    records = [r for r in asyncio.run(scenario()) if str(r["id"]).startswith("k-")]
    assert 3 <= at_kill["done"] < 24, at_kill  # the kill came mid-flow...
    assert 0 < at_kill["in_flight"] <= MAX_IN_FLIGHT, at_kill  # ...with messages in hand
    # Then the supervisor restarts it, and every message gets its result (some maybe twice)
    assert {r["id"] for r in records} == ids
    assert all(r["status"] == "succeeded" for r in records)
    assert all(r["output"]["text"] == f"item {r['id'][2:]}" for r in records)
    # The messages the dead process held unacked were delivered again, and the server counted it
    assert any(r["attempts"] >= 2 for r in records)
    (after,) = fleet.replicas(service)
    assert after["restarts"] >= before["restarts"] + 1
    assert after["pid"] != before["pid"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_poison_messages_get_error_records_and_never_block_the_stream(
    fleet: RunningFleet, backend: str
) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        readers = Readers()
        try:
            output = await readers.open(backend, topic(backend, "out"), f"{backend}poison")
            dead = await readers.open(backend, topic(backend, "out.dead"), f"{backend}poisondead")
            producer = await readers.open(backend, topic(backend, "probe"), f"{backend}producer")
            inbox = topic(backend, "in")
            await producer.publish(inbox, b"this is { not json")
            await producer.publish(inbox, envelope("p-refused", 5))  # the model answers 422
            await producer.publish(inbox, envelope("p-boom", "boom"))  # the model answers 500
            await producer.publish(inbox, b'{"id": "p-shape", "input": [1, 2]}')
            await producer.publish(inbox, envelope("p-after", "all fine"))
            records = await read_records(output, {"p-refused", "p-shape", "p-after"})
            deadline = time.monotonic() + 10
            while not any("not JSON" in str(r["error"]) for r in records) and time.monotonic() < deadline:
                records += await read_records(output, {"never"}, timeout_s=0.5)
            return records, await read_records(dead, {"p-boom"})
        finally:
            await readers.close()

    records, dead_letters = asyncio.run(scenario())
    by_id = {r["id"]: r for r in records}
    assert by_id["p-after"]["status"] == "succeeded"
    assert by_id["p-after"]["output"]["label"] == "positive"
    refused = by_id["p-refused"]
    assert refused["status"] == "failed"
    assert "invalid input for model" in refused["error"]
    assert "text: Input should be a valid string" in refused["error"]
    assert "the envelope's 'input' must be a JSON object, not list" in by_id["p-shape"]["error"]
    (not_json,) = [r for r in records if "not JSON" in str(r["error"])]
    assert not_json["status"] == "failed"
    assert not_json["id"] == not_json["message_id"]
    assert "p-boom" not in by_id
    (boom,) = [d for d in dead_letters if d["id"] == "p-boom"]
    assert boom["status"] == "failed"
    assert boom["attempts"] == MAX_ATTEMPTS
    assert "gave up after 2 attempts" in boom["error"]
    assert "asked to fail" in boom["error"]
    assert json.loads(boom["body"])["input"]["text"] == "boom"


def test_a_model_target_with_two_replicas_answers_each_message_once(fleet: RunningFleet) -> None:
    ids = {f"m-{i}" for i in range(16)}

    async def scenario() -> list[dict[str, Any]]:
        readers = Readers()
        try:
            output = await readers.open("model", topic("model", "out"), "modelout")
            producer = await readers.open("model", topic("model", "probe"), "modelproducer")
            for i in range(16):
                body = {"id": f"m-{i}", "input": {"text": "great" if i % 2 else "terrible"}}
                await producer.publish(topic("model", "in"), json.dumps(body).encode())
            return await read_records(output, ids)
        finally:
            await readers.close()

    records = asyncio.run(scenario())
    assert sorted(r["id"] for r in records) == sorted(ids)
    for record in records:
        assert record["target"] == "model:sentiment"
        expected = "positive" if int(record["id"][2:]) % 2 else "negative"
        assert record["output"]["label"] == expected
        assert "run_id" not in record
    statuses = status_of(fleet, "s-model")
    assert [s["replica"] for s in statuses] == [0, 1]
    assert sum(s["succeeded"] for s in statuses) >= 16


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stream_rides_out_a_cut_connection_to_its_server(
    fleet: RunningFleet, proxies: dict[str, CuttableProxy], backend: str
) -> None:
    ids = {f"c-{i}" for i in range(12)}
    (replica,) = fleet.replicas(f"s-{backend}")
    at_cut: dict[str, Any] = {}

    async def scenario() -> list[dict[str, Any]]:
        readers = Readers()
        try:
            output = await readers.open(backend, topic(backend, "out"), f"{backend}cut")
            producer = await readers.open(backend, topic(backend, "probe"), f"{backend}producer")
            status = call(f"{replica['url']}/v1/stream").json()
            done_before = status["succeeded"]
            for i in range(12):
                await producer.publish(topic(backend, "in"), envelope(f"c-{i}", f"cut {i}", sleep_ms=150))
            deadline = time.monotonic() + 15
            while status["succeeded"] < done_before + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                status = call(f"{replica['url']}/v1/stream").json()
            at_cut.update(status, done=status["succeeded"] - done_before)
            # When the connection to the server drops mid-flow (the process itself lives on)
            proxies[backend].cut()
            return await read_records(output, ids, timeout_s=40)
        finally:
            await readers.close()

    records = [r for r in asyncio.run(scenario()) if str(r["id"]).startswith("c-")]
    assert 2 <= at_cut["done"] < 12, at_cut
    # Then it reconnects (or its client library does) and every message still gets its result
    assert {r["id"] for r in records} == ids
    assert all(r["status"] == "succeeded" for r in records)
    status = call(f"{replica['url']}/v1/stream").json()
    assert status["ready"] is True
    if backend in ("rabbitmq", "mqtt"):
        # These clients do not reconnect by themselves: the stream service did.
        assert status["reconnects"] >= 1
