"""RabbitMQBroker behaviour beyond the contract suite: timers, late answers, lost channels. Real RabbitMQ."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
from tests.conftest import unreachable

from modelfleet.broker import BrokerError
from modelfleet.broker.brokers.rabbitmq import RabbitMQBroker

URL = "amqp://guest:guest@127.0.0.1:5672/"

Factory = Callable[..., Awaitable[RabbitMQBroker]]
Scenario = Callable[[Factory, str], Awaitable[None]]


def run(scenario: Scenario) -> None:
    """Run ``scenario`` with a factory of open brokers and a fresh queue; close all and delete the queues."""

    async def main() -> None:
        queue = f"u{uuid.uuid4().hex[:12]}"
        opened: list[RabbitMQBroker] = []

        async def factory(visibility_timeout_s: float = 30.0, max_attempts: int = 3) -> RabbitMQBroker:
            broker = RabbitMQBroker(URL, visibility_timeout_s=visibility_timeout_s, max_attempts=max_attempts)
            try:
                await broker.open()
            except BrokerError as err:
                unreachable("RabbitMQ", err)
            opened.append(broker)
            return broker

        try:
            await scenario(factory, queue)
        finally:
            for broker in opened:
                await broker.close()
            if opened:
                await delete_queues(queue, f"{queue}.dead")

    asyncio.run(main())


async def delete_queues(*names: str) -> None:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


def test_an_expired_last_attempt_is_dead_lettered_by_the_broker_that_held_it() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        broker = await factory(visibility_timeout_s=0.3, max_attempts=1)
        message_id = await broker.publish(queue, b"hangs")
        (delivery,) = await broker.receive(queue, "c", wait_s=5)
        # When nobody answers and nobody else receives, the holder's own timer dead-letters it.
        await asyncio.sleep(0.8)
        (dead,) = await broker.dead_letters(queue)
        assert (dead.message_id, dead.body, dead.attempts) == (message_id, b"hangs", 1)
        assert "without an answer" in dead.error
        assert await broker.depth(queue) == 0
        await broker.ack(delivery)  # too late: ignored, and the channel survives it
        await broker.publish(queue, b"next")
        (nxt,) = await broker.receive(queue, "c", wait_s=5)
        await broker.ack(nxt)
        assert await broker.depth(queue) == 0

    run(scenario)


def test_answers_to_a_timed_out_delivery_are_ignored() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        slow, fast = await factory(visibility_timeout_s=0.3), await factory(visibility_timeout_s=0.3)
        await slow.publish(queue, b"work")
        (stale,) = await slow.receive(queue, "slow", wait_s=5)
        (fresh,) = await fast.receive(queue, "fast", wait_s=5)
        assert (stale.attempt, fresh.attempt) == (1, 2)
        await slow.extend(stale)
        await slow.nack(stale, "late")
        await slow.ack(stale)
        await fast.ack(fresh)
        assert await slow.dead_letters(queue) == []
        assert await slow.receive(queue, "slow", wait_s=0.5) == []
        assert await slow.depth(queue) == 0

    run(scenario)


def test_depth_counts_ready_and_own_in_flight_but_not_acked_or_dead() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        broker = await factory(max_attempts=1)
        assert await broker.depth(queue) == 0
        for i in range(3):
            await broker.publish(queue, f"m{i}".encode())
        first, second = await broker.receive(queue, "c", max_messages=2, wait_s=1)
        assert await broker.depth(queue) == 3
        await broker.ack(first)
        await broker.nack(second, "boom")  # attempt 1 of 1: dead
        assert await broker.depth(queue) == 1

    run(scenario)


def test_dead_letters_are_read_oldest_first_without_being_consumed() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        broker = await factory(max_attempts=1)
        ids = [await broker.publish(queue, f"m{i}".encode()) for i in range(3)]
        for i in range(3):
            (delivery,) = await broker.receive(queue, "c", wait_s=5)
            await broker.nack(delivery, f"error {i}")
        letters = await broker.dead_letters(queue)
        assert [(d.message_id, d.error, d.attempts) for d in letters] == [
            (ids[i], f"error {i}", 1) for i in range(3)
        ]
        assert all(timedelta(0) <= datetime.now(UTC) - d.failed_at < timedelta(minutes=1) for d in letters)
        assert await broker.dead_letters(queue) == letters
        assert await broker.dead_letters(queue, limit=2) == letters[:2]

    run(scenario)


def test_a_batch_returns_what_is_there_without_waiting_for_more() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        broker = await factory()
        for i in range(2):
            await broker.publish(queue, f"m{i}".encode())
        started = time.monotonic()
        deliveries = await broker.receive(queue, "c", max_messages=5, wait_s=3)
        assert time.monotonic() - started < 1.0
        assert [d.body for d in deliveries] == [b"m0", b"m1"]
        for d in deliveries:
            await broker.ack(d)

    run(scenario)


def test_a_cancelled_receive_loses_nothing() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        broker = await factory()
        waiter = asyncio.ensure_future(broker.receive(queue, "c", wait_s=5))
        await asyncio.sleep(0.2)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await broker.publish(queue, b"after")
        (delivery,) = await broker.receive(queue, "c", wait_s=5)
        assert (delivery.body, delivery.attempt) == (b"after", 1)
        await broker.ack(delivery)

    run(scenario)


def test_a_lost_channel_is_reopened_and_its_deliveries_come_back() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        broker = await factory()
        await broker.publish(queue, b"work")
        (lost,) = await broker.receive(queue, "c", wait_s=5)
        # Given the channel dies under the broker (as on a channel error or a server-side close)
        assert broker._channel is not None
        await broker._channel.close()
        # Then the delivery is forgotten, RabbitMQ hands it out again, and the broker carries on.
        await broker.ack(lost)
        (again,) = await broker.receive(queue, "c", wait_s=5)
        assert (again.message_id, again.attempt) == (lost.message_id, 2)
        await broker.ack(again)
        assert await broker.depth(queue) == 0

    run(scenario)


def test_an_unreachable_server_raises_broker_error_without_the_password() -> None:
    broker = RabbitMQBroker("amqp://guest:s3cret@127.0.0.1:1/", visibility_timeout_s=1.0, max_attempts=2)
    with pytest.raises(BrokerError) as caught:
        asyncio.run(broker.open())
    assert caught.value.__cause__ is not None
    assert "s3cret" not in str(caught.value)


def test_a_closed_broker_refuses_operations() -> None:
    async def scenario(factory: Factory, queue: str) -> None:
        broker = await factory()
        await broker.publish(queue, b"x")
        (delivery,) = await broker.receive(queue, "c", wait_s=5)
        await broker.close()
        await broker.close()  # idempotent
        with pytest.raises(BrokerError):
            await broker.publish(queue, b"y")
        with pytest.raises(BrokerError):
            await broker.receive(queue, "c", wait_s=0.1)
        with pytest.raises(BrokerError):
            await broker.ack(delivery)
        with pytest.raises(BrokerError):
            await broker.depth(queue)
        with pytest.raises(BrokerError):
            await broker.dead_letters(queue)
        # The unanswered delivery went back to the queue, counted as a delivery.
        other = await factory()
        (again,) = await other.receive(queue, "c", wait_s=5)
        assert again.attempt == 2
        await other.ack(again)

    run(scenario)


def test_a_receive_racing_the_creation_of_its_queue_still_gets_the_message() -> None:
    # RabbitMQ closes the connection of a basic.get on a quorum queue another client is still
    # creating ("noproc"); the broker reconnects and polls on within wait_s.
    async def scenario(factory: Factory, queue: str) -> None:
        publisher, consumer = await factory(), await factory()
        names = [f"{queue}.{i}" for i in range(10)]
        try:
            for name in names:
                _, deliveries = await asyncio.gather(
                    publisher.publish(name, b"first"), consumer.receive(name, "c", wait_s=5)
                )
                assert [(d.body, d.attempt) for d in deliveries] == [(b"first", 1)]
                await consumer.ack(deliveries[0])
        finally:
            await delete_queues(*names)

    run(scenario)
