"""Fixtures that start real fleets: separate processes on free loopback ports, talked to over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"


def fleet_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    url: str,
    method: str = "GET",
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Reply:
    """One HTTP request on a fresh connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    hdrs = {"content-type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    if isinstance(body, dict | list):
        body = json.dumps(body)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=hdrs)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


@dataclass
class RunningFleet:
    """A fleet started with `modelfleet up` in a subprocess."""

    process: subprocess.Popen[str]
    config: Path
    run_dir: Path
    gateway: str = ""
    output: list[str] = field(default_factory=list)
    # When "modelfleet is up" was printed (time.monotonic()).
    up_at: float | None = None

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelfleet", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=fleet_env(),
            check=False,
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        return dict(json.loads(result.stdout))

    def replicas(self, service: str) -> list[dict[str, Any]]:
        return [p for p in self.status()["processes"] if p["service"] == service]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_up(config: Path, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`modelfleet up` that is expected to stop on its own (a refused configuration, say)."""
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "up", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=fleet_env(),
        check=False,
    )


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    config = dict(config)
    config.setdefault("data_dir", str(directory / "data"))
    config.setdefault("store_url", f"sqlite:///{directory / 'data' / 'modelfleet.db'}")
    config["gateway"] = {"port": 0, **config.get("gateway", {})}
    config["supervisor"] = {"run_dir": str(directory / "run"), **config.get("supervisor", {})}
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_fleet(directory: Path, config: dict[str, Any] | Path, timeout_s: float = 180.0) -> RunningFleet:
    directory.mkdir(parents=True, exist_ok=True)
    path = config if isinstance(config, Path) else write_config(directory, config)
    process = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "up", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=fleet_env(),
        cwd=directory,
    )
    fleet = RunningFleet(process, path, directory / "run")
    up = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            fleet.output.append(line)
            match = re.search(r"modelfleet is up: gateway (\S+)", line)
            if match:
                fleet.gateway = match.group(1)
                fleet.up_at = time.monotonic()
                up.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not up.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            fleet.stop()
            raise RuntimeError("fleet did not come up:\n" + "".join(fleet.output))
    return fleet


def free_port() -> int:
    """A loopback port free now (for a test that must know the gateway's port before `up`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Probe:
    at: float
    what: str
    status: int | None
    body: bytes = b""


class ReadinessWatch:
    """Polls a gateway's /v2/health/ready from before it exists; once it says 200, also sends a
    predict to each of ``models`` on every round, recording every answer."""

    def __init__(self, gateway: str, models: dict[str, Any], interval_s: float = 0.05) -> None:
        self.gateway = gateway
        self.models = models
        self.interval_s = interval_s
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _call(self, what: str, url: str, method: str = "GET", body: Any = None) -> Probe:
        started = time.monotonic()
        try:
            reply = call(url, method, body, timeout_s=10)
            probe = Probe(started, what, reply.status, reply.body)
        except OSError as err:
            probe = Probe(started, what, None, str(err).encode())
        self.probes.append(probe)
        return probe

    def _run(self) -> None:
        ready_seen = False
        while not self._stop.is_set():
            ready = self._call("ready", f"{self.gateway}/v2/health/ready")
            ready_seen = ready_seen or ready.status == 200
            if ready_seen:
                for model, body in self.models.items():
                    self._call(model, f"{self.gateway}/v1/models/{model}/predict", "POST", body)
            self._stop.wait(self.interval_s)

    def first_ready_at(self) -> float | None:
        return next((p.at for p in self.probes if p.what == "ready" and p.status == 200), None)

    def failures_once_ready(self) -> list[Probe]:
        """Every answer other than 200, readiness or predict, from the first ready 200 on."""
        since = self.first_ready_at()
        if since is None:
            return []
        return [p for p in self.probes if p.at >= since and p.status != 200]


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningFleet] = []

    def factory(config: dict[str, Any] | Path, name: str = "fleet") -> RunningFleet:
        fleet = start_fleet(tmp_path / name, config)
        started.append(fleet)
        return fleet

    yield factory
    for fleet in started:
        fleet.stop()


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def unreachable(what: str, err: Exception) -> None:
    """A real backend that is missing skips locally and fails under CI=true."""
    message = f"{what} is not reachable: {err}"
    if _ci():
        pytest.fail(message + " (CI=true: backends must be up)")
    pytest.skip(message)


ADMIN_URL = os.environ.get("MODELFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONNECT_TIMEOUT_S = 5.0


class PostgresServer:
    """Creates and drops throw-away databases on the test server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"modelfleet_test_{secrets.token_hex(4)}"
        self.created: list[str] = []

    def url_of(self, database: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"

    def create_database(self) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        # template0: template1 refuses to be copied while anyone else is connected to it.
        asyncio.run(self._execute(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        self.created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test that failed half-way may have left connections open.
        asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _execute(self, statement: str) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.admin_url, timeout=CONNECT_TIMEOUT_S)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(ADMIN_URL)
    try:
        asyncio.run(server._execute("SELECT 1"))
    except Exception as err:  # any reason at all: not installed, refused, timed out, bad login
        unreachable(f"PostgreSQL at {_redacted(ADMIN_URL)}", err)
    yield server
    for name in server.created:
        server.drop_database(name)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """One fresh database for the session's fleets (the contract suite takes one per test)."""
    return postgres_server.url_of(postgres_server.create_database())


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"


async def forget_broker_queue(url: str | None, name: str) -> None:
    """Delete a test queue (and its dead letters) from a shared broker server; ignores what is missing."""
    if url is None:
        return
    with contextlib.suppress(Exception):
        if url.startswith("redis://"):
            import redis.asyncio

            client = redis.asyncio.from_url(url)
            try:
                await client.delete(f"mf:{{{name}}}", f"mf:{{{name}}}:dead", f"mf:{{{name}}}:cursor")
            finally:
                await client.aclose()
        elif url.startswith("nats://"):
            import nats

            from modelfleet.broker.brokers.nats import dead_stream_name, stream_name

            connection = await nats.connect(url)
            try:
                for stream in (stream_name(name), dead_stream_name(name)):
                    with contextlib.suppress(Exception):
                        await connection.jetstream().delete_stream(stream)
            finally:
                await connection.close()
        elif url.startswith("amqp://"):
            import aio_pika

            amqp = await aio_pika.connect(url)
            try:
                for queue_name in (name, f"{name}.dead"):
                    # A missing queue closes the channel, so each deletion gets its own.
                    with contextlib.suppress(Exception):
                        channel = await amqp.channel()
                        await channel.queue_delete(queue_name)
                        await channel.close()
            finally:
                await amqp.close()


STREAM_SERVERS = {
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    # A short session expiry, so a session a failed test could not remove goes away by itself.
    "mqtt": "mqtt://127.0.0.1:1883?session_expiry_s=300",
}


async def forget_stream_topics(url: str, topics: Iterable[str], mqtt_clients: Iterable[str] = ()) -> None:
    """Delete what stream tests made on a shared server: Redis streams, the NATS streams the
    connector created, RabbitMQ queues, MQTT sessions; ignores what is missing."""
    if url.startswith("redis://"):
        import redis.asyncio

        client = redis.asyncio.from_url(url)
        try:
            if names := list(topics):
                await client.delete(*names)
        finally:
            await client.aclose()
    elif url.startswith("nats://"):
        import nats

        from modelfleet.stream.connectors.nats import stream_name

        connection = await nats.connect(url)
        try:
            for topic in topics:
                with contextlib.suppress(Exception):
                    await connection.jetstream().delete_stream(stream_name(topic))
        finally:
            await connection.close()
    elif url.startswith("amqp://"):
        import aio_pika

        amqp = await aio_pika.connect(url)
        try:
            for topic in topics:
                with contextlib.suppress(Exception):
                    channel = await amqp.channel()
                    await channel.queue_delete(topic)
                    await channel.close()
        finally:
            await amqp.close()
    elif url.startswith("mqtt://"):
        await asyncio.gather(*(asyncio.to_thread(_end_mqtt_session, url, c) for c in mqtt_clients))


def _end_mqtt_session(url: str, client_id: str) -> None:
    """Connect as ``client_id`` with a clean start and no session expiry: the broker drops its session."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    with contextlib.suppress(OSError):
        host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        client.connect(host, port, clean_start=True, properties=properties)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        client.disconnect()
        client.loop_stop()
