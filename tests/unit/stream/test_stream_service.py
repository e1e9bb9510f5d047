"""StreamService decisions (bad messages, retries, dead letters, back-pressure) over a real Redis.

The fleet here has a model service with no replica running, so every model call fails the way a
fleet that is down does; messages that are bad in themselves never reach the fleet at all.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from tests.conftest import STREAM_SERVERS, forget_stream_topics, unreachable

from modelfleet.gateway.app import GatewayApp
from modelfleet.pipeline.spec import single_model_pipeline
from modelfleet.plan import Endpoint, FleetPlan
from modelfleet.settings import settings_from_dict
from modelfleet.stream import StreamError, make_connector
from modelfleet.stream.service import StreamService

URL = STREAM_SERVERS["redis"]


def service_for(tag: str, **stream: Any) -> StreamService:
    config = {
        "url": URL,
        "input": f"mftest.{tag}.in",
        "output": f"mftest.{tag}.out",
        "model": "a",
        "group": f"g{tag}",
        "max_attempts": 2,
        **stream,
    }
    settings = settings_from_dict(
        {
            "models": {"a": {"class": "echo"}},
            "services": {"light": {"models": ["a"]}, "events": {"kind": "stream", "stream": config}},
        }
    )
    stream_settings = settings.services["events"].stream
    assert stream_settings is not None
    # The model service has no replica: every call to it fails as if the fleet were down.
    plan = FleetPlan(Endpoint("127.0.0.1", 1), services={"light": []}, models={"a": "light"})
    connector = make_connector(
        stream_settings.url,
        stream_settings.input,
        group=f"g{tag}",
        consumer=f"g{tag}-0",
        max_in_flight=stream_settings.max_in_flight,
        ack_timeout_s=stream_settings.ack_timeout_s,
    )
    fleet = GatewayApp(plan, settings.gateway)
    return StreamService("events", stream_settings, fleet, connector, single_model_pipeline("a", settings))


Scenario = Callable[[str, redis.asyncio.Redis], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        tag = uuid.uuid4().hex[:10]
        client = redis.asyncio.from_url(URL)
        try:
            await client.ping()
        except Exception as err:
            unreachable("Redis", err)
        try:
            await scenario(tag, client)
        finally:
            await client.aclose()
            await forget_stream_topics(URL, [f"mftest.{tag}.{r}" for r in ("in", "out", "out.dead")])

    asyncio.run(main())


async def records(client: redis.asyncio.Redis, stream: str, count: int, timeout_s: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    entries: list[Any] = []
    while len(entries) < count and time.monotonic() < deadline:
        entries = await client.xrange(stream)
        await asyncio.sleep(0.05)
    return [json.loads(fields[b"body"]) for _, fields in entries]


async def pending(client: redis.asyncio.Redis, tag: str) -> int:
    summary = await client.xpending(f"mftest.{tag}.in", f"g{tag}")
    return int(summary["pending"])


def test_a_bad_message_gets_a_failed_record_and_is_acked_without_touching_the_fleet() -> None:
    async def scenario(tag: str, client: redis.asyncio.Redis) -> None:
        service = service_for(tag)
        await service.start()
        try:
            await client.xadd(f"mftest.{tag}.in", {"body": b"{not json"})
            await client.xadd(f"mftest.{tag}.in", {"body": b'{"id": "e1", "input": 3}'})
            found = await records(client, f"mftest.{tag}.out", 2)
        finally:
            await service.stop()
        # Records come out in the order messages finish, which two at once may swap.
        envelope = next(r for r in found if r.get("id") == "e1")
        bad = next(r for r in found if r is not envelope)
        assert bad["status"] == "failed"
        assert "not JSON" in bad["error"]
        assert (envelope["id"], envelope["status"]) == ("e1", "failed")
        assert "'input' must be a JSON object, not int" in envelope["error"]
        assert (service.counters.failed, service.counters.retried, service.counters.dead) == (2, 0, 0)
        assert await pending(client, tag) == 0

    run(scenario)


def test_a_fleet_failure_is_retried_then_dead_lettered_with_the_body() -> None:
    async def scenario(tag: str, client: redis.asyncio.Redis) -> None:
        service = service_for(tag)
        await service.start()
        try:
            body = b'{"id": "x1", "input": {"text": "hello"}}'
            await client.xadd(f"mftest.{tag}.in", {"body": body})
            (dead,) = await records(client, f"mftest.{tag}.out.dead", 1)
        finally:
            await service.stop()
        assert (dead["id"], dead["status"], dead["attempts"]) == ("x1", "failed", 2)
        assert dead["error"].startswith("gave up after 2 attempts: ")
        assert json.loads(dead["body"]) == json.loads(body)
        assert await client.xlen(f"mftest.{tag}.out") == 0
        assert (service.counters.retried, service.counters.dead, service.counters.published) == (1, 1, 1)
        assert await pending(client, tag) == 0

    run(scenario)


def test_a_message_delivered_too_often_is_dead_lettered_untried() -> None:
    async def scenario(tag: str, client: redis.asyncio.Redis) -> None:
        source, group = f"mftest.{tag}.in", f"g{tag}"
        await client.xgroup_create(source, group, id="0", mkstream=True)
        await client.xadd(source, {"body": b'{"id": "k1", "input": {"text": "kills"}}'})
        # Given a message two consumers took and died with (two deliveries, never answered)
        (entry_id, _), *_ = (await client.xreadgroup(group, "died-1", {source: ">"}, count=1))[0][1]
        await client.xclaim(source, group, "died-2", min_idle_time=0, message_ids=[entry_id])
        service = service_for(tag, ack_timeout_s=0.2)
        await service.start()
        try:
            # When the service takes it over after the ack timeout (its third delivery)
            (dead,) = await records(client, f"mftest.{tag}.out.dead", 1)
        finally:
            await service.stop()
        # Then it goes to the dead letters without a model call
        assert dead["id"] == dead["message_id"] == entry_id.decode()
        assert dead["error"] == "delivered 2 times without an answer (its consumer died or hung)"
        assert dead["attempts"] == 2
        assert service.counters.retried == 0
        assert await pending(client, tag) == 0

    run(scenario)


def test_no_more_than_max_in_flight_messages_are_worked_on_at_once() -> None:
    async def scenario(tag: str, client: redis.asyncio.Redis) -> None:
        service = service_for(tag, max_in_flight=2, max_attempts=2)
        for i in range(6):
            await client.xadd(f"mftest.{tag}.in", {"body": json.dumps({"id": i, "input": {"text": "t"}})})
        seen: list[int] = []
        await service.start()
        try:
            deadline = time.monotonic() + 15
            while service.counters.dead < 6 and time.monotonic() < deadline:
                seen.append(service.in_flight)
                seen.append(await pending(client, tag))
                await asyncio.sleep(0.02)
        finally:
            await service.stop()
        # Each message is held about a quarter second (one retry); six of them, two at a time
        assert service.counters.dead == 6
        assert max(seen) == 2
        assert service.counters.received == 6

    run(scenario)


def test_start_fails_with_stream_error_when_the_server_is_down() -> None:
    async def scenario() -> None:
        service = service_for(uuid.uuid4().hex[:10], url="redis://127.0.0.1:1/0")
        try:
            with pytest.raises(StreamError, match="cannot connect"):
                await service.start()
            assert service.ready is False
        finally:
            await service.fleet.stop()

    asyncio.run(scenario())
