"""NatsBroker behaviour beyond the contract suite: names, batches, answers, dead letters. Real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC

import nats
import pytest
from nats.js.errors import NotFoundError
from tests.conftest import unreachable

from modelfleet.broker import BrokerError
from modelfleet.broker.brokers.nats import NatsBroker, dead_stream_name, stream_name

URL = "nats://127.0.0.1:4222"

Factory = Callable[..., Awaitable[NatsBroker]]


def run(scenario: Callable[[Factory], Awaitable[None]], queues: list[str]) -> None:
    """Run ``scenario`` with a factory of open brokers; close them and delete ``queues``' streams after."""

    async def main() -> None:
        opened: list[NatsBroker] = []

        async def factory(visibility_timeout_s: float = 30.0, max_attempts: int = 3) -> NatsBroker:
            broker = NatsBroker(URL, visibility_timeout_s=visibility_timeout_s, max_attempts=max_attempts)
            try:
                await broker.open()
            except BrokerError as err:
                unreachable("NATS", err)
            opened.append(broker)
            return broker

        try:
            await scenario(factory)
        finally:
            for broker in opened:
                await broker.close()
            if opened:
                client = await nats.connect(URL)
                jetstream = client.jetstream()
                for queue in queues:
                    for stream in (stream_name(queue), dead_stream_name(queue)):
                        with contextlib.suppress(NotFoundError):
                            await jetstream.delete_stream(stream)
                await client.close()

    asyncio.run(main())


def new_queue() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def test_open_fails_fast_with_broker_error_when_no_server_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed

    async def scenario() -> None:
        broker = NatsBroker(f"nats://127.0.0.1:{port}")
        started = time.monotonic()
        with pytest.raises(BrokerError) as raised:
            await broker.open()
        assert time.monotonic() - started < 5.0
        assert raised.value.__cause__ is not None
        with pytest.raises(BrokerError):
            await broker.publish("q", b"x")

    asyncio.run(scenario())


def test_a_closed_broker_refuses_every_operation() -> None:
    queue = new_queue()

    async def scenario(factory: Factory) -> None:
        broker = await factory()
        await broker.close()
        with pytest.raises(BrokerError):
            await broker.publish(queue, b"x")
        with pytest.raises(BrokerError):
            await broker.receive(queue, "c", wait_s=0.1)
        with pytest.raises(BrokerError):
            await broker.depth(queue)
        with pytest.raises(BrokerError):
            await broker.dead_letters(queue)

    run(scenario, [queue])


def test_queue_names_nats_cannot_hold_are_escaped_and_kept_apart() -> None:
    # Given names with a dot, a space, a slash and non-ASCII, and the escaped spelling of one
    base = new_queue()
    dotted, escaped, odd = f"{base}.a", f"{base}~2Ea", f"{base} ü/*>"

    async def scenario(factory: Factory) -> None:
        broker = await factory()
        # When each gets one message
        for queue in (dotted, escaped, odd):
            await broker.publish(queue, queue.encode())
        # Then each queue hands out its own
        for queue in (dotted, escaped, odd):
            (delivery,) = await broker.receive(queue, "c", wait_s=5)
            assert delivery.body == queue.encode()
            await broker.ack(delivery)

    run(scenario, [dotted, escaped, odd])


def test_a_batch_receive_returns_as_soon_as_the_first_message_arrives() -> None:
    queue = new_queue()

    async def scenario(factory: Factory) -> None:
        broker = await factory()
        await broker.depth(queue)  # nothing yet, and nothing created
        waiter = asyncio.ensure_future(broker.receive(queue, "c", max_messages=5, wait_s=10))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await broker.publish(queue, b"only one")
        (delivery,) = await asyncio.wait_for(waiter, 10)
        assert time.monotonic() - started < 2.0
        await broker.ack(delivery)

    run(scenario, [queue])


def test_depth_counts_waiting_and_in_flight_but_not_acked_or_dead() -> None:
    queue = new_queue()

    async def scenario(factory: Factory) -> None:
        broker = await factory(max_attempts=1)
        assert await broker.depth(queue) == 0
        for i in range(3):
            await broker.publish(queue, f"m{i}".encode())
        first, second = await broker.receive(queue, "c", max_messages=2, wait_s=1)
        assert await broker.depth(queue) == 3
        await broker.ack(first)
        await broker.nack(second, "boom")  # attempt 1 of 1: dead
        assert await broker.depth(queue) == 1

    run(scenario, [queue])


def test_a_delivery_can_be_answered_after_its_receiver_closed() -> None:
    queue = new_queue()

    async def scenario(factory: Factory) -> None:
        receiver, other = await factory(), await factory()
        await receiver.publish(queue, b"x")
        (delivery,) = await receiver.receive(queue, "c", wait_s=5)
        await receiver.close()
        await other.ack(delivery)
        assert await other.depth(queue) == 0

    run(scenario, [queue])


def test_dead_letters_keep_any_error_text_and_message_id() -> None:
    queue = new_queue()
    error = 'Traceback (most recent call last):\n  File "x.py"\nValueError: bad ü "input"  '
    message_id = "job: 7/ü\n"

    async def scenario(factory: Factory) -> None:
        broker = await factory(max_attempts=1)
        await broker.publish(queue, b"\x00body", message_id=message_id)
        (delivery,) = await broker.receive(queue, "c", wait_s=5)
        assert delivery.message_id == message_id
        await broker.nack(delivery, error)
        (dead,) = await broker.dead_letters(queue)
        assert (dead.message_id, dead.body, dead.attempts, dead.error) == (message_id, b"\x00body", 1, error)
        assert dead.failed_at.tzinfo == UTC
        assert await broker.dead_letters(new_queue()) == []

    run(scenario, [queue])


def test_dead_letters_are_listed_oldest_first_up_to_the_limit() -> None:
    queue = new_queue()

    async def scenario(factory: Factory) -> None:
        broker = await factory(max_attempts=1)
        ids = [await broker.publish(queue, f"m{i}".encode()) for i in range(4)]
        for delivery in await broker.receive(queue, "c", max_messages=4, wait_s=5):
            await broker.nack(delivery, "boom")
        assert [d.message_id for d in await broker.dead_letters(queue, limit=3)] == ids[:3]
        assert [d.message_id for d in await broker.dead_letters(queue)] == ids

    run(scenario, [queue])
