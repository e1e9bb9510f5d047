"""RedisBroker behaviour beyond the contract suite: late answers, take-over order, errors. Real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from tests.conftest import unreachable

from modelfleet.broker import BrokerError, Delivery
from modelfleet.broker.brokers.redis import RedisBroker, cursor_key, dead_key, stream_key

URL = "redis://127.0.0.1:6379/0"

Scenario = Callable[[Callable[..., Awaitable[RedisBroker]], str], Awaitable[None]]


def run(scenario: Scenario) -> None:
    """Run ``scenario`` with a factory of open brokers and a fresh queue; close and delete all after."""

    async def main() -> None:
        queue = f"u{uuid.uuid4().hex[:12]}"
        opened: list[RedisBroker] = []

        async def factory(visibility_timeout_s: float = 30.0, max_attempts: int = 3) -> RedisBroker:
            broker = RedisBroker(URL, visibility_timeout_s=visibility_timeout_s, max_attempts=max_attempts)
            try:
                await broker.open()
            except BrokerError as err:
                unreachable("Redis", err)
            opened.append(broker)
            return broker

        try:
            await scenario(factory, queue)
        finally:
            if opened:
                client = opened[0]._connected()
                await client.delete(stream_key(queue), dead_key(queue), cursor_key(queue))
            for broker in opened:
                await broker.close()

    asyncio.run(main())


def test_depth_counts_waiting_and_in_flight_but_not_acked_or_dead() -> None:
    async def scenario(factory: Callable[..., Awaitable[RedisBroker]], queue: str) -> None:
        broker = await factory(max_attempts=1)
        for i in range(3):
            await broker.publish(queue, f"m{i}".encode())
        first, second = await broker.receive(queue, "c", max_messages=2, wait_s=1)
        assert await broker.depth(queue) == 3
        await broker.ack(first)
        await broker.nack(second, "boom")  # attempt 1 of 1: dead
        assert await broker.depth(queue) == 1

    run(scenario)


def test_a_nacked_message_goes_out_before_newer_ones_and_wakes_a_waiting_consumer() -> None:
    async def scenario(factory: Callable[..., Awaitable[RedisBroker]], queue: str) -> None:
        broker = await factory(visibility_timeout_s=30.0)
        failing = await broker.publish(queue, b"a")
        await broker.publish(queue, b"b")
        (delivery,) = await broker.receive(queue, "c1", wait_s=1)
        # Given a consumer already waiting on an empty queue
        assert await broker.receive(queue, "c2", wait_s=0) != []  # takes "b"
        waiter = asyncio.ensure_future(broker.receive(queue, "c2", wait_s=5))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        # When the first consumer nacks
        await broker.nack(delivery, "transient")
        # Then the waiting one gets it within the poll interval, long before the visibility timeout
        (again,) = await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - started < 1.5
        assert (again.message_id, again.attempt) == (failing, 2)
        await broker.ack(again)

    run(scenario)


def test_a_late_nack_or_extend_leaves_the_newer_delivery_alone() -> None:
    async def scenario(factory: Callable[..., Awaitable[RedisBroker]], queue: str) -> None:
        broker = await factory(visibility_timeout_s=0.3, max_attempts=2)
        await broker.publish(queue, b"x")
        (stale,) = await broker.receive(queue, "slow", wait_s=1)
        (current,) = await broker.receive(queue, "fast", wait_s=2)
        assert current.attempt == 2
        # The slow consumer's answers come too late: attempt 1 was already handed out again.
        await broker.extend(stale)
        await broker.nack(stale, "late")
        assert await broker.dead_letters(queue) == []
        assert await broker.receive(queue, "other", wait_s=0) == []
        await broker.ack(current)
        assert await broker.depth(queue) == 0

    run(scenario)


def test_dead_letters_keep_body_id_attempts_error_and_a_utc_time() -> None:
    async def scenario(factory: Callable[..., Awaitable[RedisBroker]], queue: str) -> None:
        broker = await factory(max_attempts=1)
        await broker.publish(queue, b"\x00binary\xff", message_id="job-7")
        (delivery,) = await broker.receive(queue, "c", wait_s=1)
        await broker.nack(delivery, "it broke")
        (dead,) = await broker.dead_letters(queue)
        assert (dead.queue, dead.message_id, dead.body, dead.attempts, dead.error) == (
            queue,
            "job-7",
            b"\x00binary\xff",
            1,
            "it broke",
        )
        assert dead.failed_at.tzinfo is UTC
        assert abs(datetime.now(UTC) - dead.failed_at) < timedelta(seconds=5)

    run(scenario)


def test_expired_deliveries_deep_in_a_long_pending_list_are_found() -> None:
    async def scenario(factory: Callable[..., Awaitable[RedisBroker]], queue: str) -> None:
        broker = await factory(visibility_timeout_s=1.0)
        for i in range(20):
            await broker.publish(queue, f"{i}".encode())
        held = await broker.receive(queue, "c1", max_messages=20, wait_s=1)
        await asyncio.sleep(1.1)
        # Given the first 15 deliveries kept alive and the last 5 expired
        for delivery in held[:15]:
            await broker.extend(delivery)
        # When a consumer asks for one, then Then it gets an expired one, not nothing
        (taken,) = await broker.receive(queue, "c2", wait_s=0.5)
        assert int(taken.body) >= 15
        assert taken.attempt == 2

    run(scenario)


def test_operations_on_a_closed_broker_raise_broker_error() -> None:
    async def main() -> None:
        broker = RedisBroker(URL)
        with pytest.raises(BrokerError, match="closed"):
            await broker.publish("q", b"x")
        with pytest.raises(BrokerError, match="closed"):
            await broker.ack(Delivery("q", "m", b"x", 1, receipt="1-0"))

    asyncio.run(main())


def test_open_fails_with_broker_error_chaining_the_cause() -> None:
    async def main() -> None:
        broker = RedisBroker("redis://:secret@127.0.0.1:1/0")
        with pytest.raises(BrokerError) as raised:
            await broker.open()
        assert raised.value.__cause__ is not None
        assert "secret" not in str(raised.value)

    asyncio.run(main())
