"""One set of behaviours, run against every broker backend on the machine's real servers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from tests.conftest import forget_broker_queue, unreachable

from modelfleet.broker import Broker, make_broker

BACKENDS = {
    "sqlite": None,
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}

Factory = Callable[..., Awaitable[Broker]]


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def queue(backend: str) -> Iterator[str]:
    name = f"q{uuid.uuid4().hex[:12]}"
    yield name
    # The servers outlive the test run (and CI shares them with later runs): leave nothing behind.
    asyncio.run(forget_broker_queue(BACKENDS[backend], name))


def run(scenario: Callable[[Factory], Awaitable[None]], backend: str, tmp_path: object) -> None:
    """Run ``scenario`` with a factory of open brokers on ``backend``, closing them all after."""

    async def main() -> None:
        opened: list[Broker] = []

        async def factory(visibility_timeout_s: float = 30.0, max_attempts: int = 3) -> Broker:
            url = BACKENDS[backend] or f"sqlite:///{tmp_path}/broker.db"
            broker = make_broker(url, visibility_timeout_s=visibility_timeout_s, max_attempts=max_attempts)
            try:
                await broker.open()
            except Exception as err:
                unreachable(backend, err)
            opened.append(broker)
            return broker

        try:
            await scenario(factory)
        finally:
            for broker in opened:
                await broker.close()

    asyncio.run(main())


def test_a_message_is_delivered_and_once_acked_never_again(
    backend: str, queue: str, tmp_path: object
) -> None:
    async def scenario(factory: Factory) -> None:
        broker = await factory(visibility_timeout_s=0.5)
        message_id = await broker.publish(queue, b'{"x": 1}')
        (delivery,) = await broker.receive(queue, "c1", wait_s=5)
        assert (delivery.message_id, delivery.body, delivery.attempt) == (message_id, b'{"x": 1}', 1)
        await broker.ack(delivery)
        await asyncio.sleep(0.8)
        assert await broker.receive(queue, "c1", wait_s=0.5) == []
        assert await broker.depth(queue) == 0

    run(scenario, backend, tmp_path)


def test_order_is_kept_for_one_consumer(backend: str, queue: str, tmp_path: object) -> None:
    async def scenario(factory: Factory) -> None:
        broker = await factory()
        ids = [await broker.publish(queue, f"m{i}".encode()) for i in range(10)]
        got: list[str] = []
        while len(got) < 10:
            deliveries = await broker.receive(queue, "c1", max_messages=4, wait_s=5)
            assert deliveries, "messages went missing"
            assert len(deliveries) <= 4
            for d in deliveries:
                got.append(d.message_id)
                await broker.ack(d)
        assert got == ids

    run(scenario, backend, tmp_path)


def test_given_message_id_is_kept(backend: str, queue: str, tmp_path: object) -> None:
    async def scenario(factory: Factory) -> None:
        broker = await factory()
        assert await broker.publish(queue, b"x", message_id="job-42") == "job-42"
        (delivery,) = await broker.receive(queue, "c1", wait_s=5)
        assert delivery.message_id == "job-42"
        await broker.ack(delivery)

    run(scenario, backend, tmp_path)


def test_an_unanswered_delivery_comes_back_after_the_visibility_timeout(
    backend: str, queue: str, tmp_path: object
) -> None:
    async def scenario(factory: Factory) -> None:
        broker = await factory(visibility_timeout_s=0.5)
        message_id = await broker.publish(queue, b"work")
        (first,) = await broker.receive(queue, "c1", wait_s=5)
        assert await broker.receive(queue, "c2", wait_s=0.1) == []  # invisible while in flight
        started = time.monotonic()
        again = await broker.receive(queue, "c2", wait_s=5)
        assert time.monotonic() - started < 4.0
        assert [(d.message_id, d.body, d.attempt) for d in again] == [(message_id, b"work", 2)]
        assert first.attempt == 1
        await broker.ack(again[0])

    run(scenario, backend, tmp_path)


def test_extend_keeps_a_slow_delivery_from_coming_back(backend: str, queue: str, tmp_path: object) -> None:
    async def scenario(factory: Factory) -> None:
        broker = await factory(visibility_timeout_s=1.0)
        await broker.publish(queue, b"slow")
        (delivery,) = await broker.receive(queue, "c1", wait_s=5)
        for _ in range(4):
            await asyncio.sleep(0.5)
            await broker.extend(delivery)
        assert await broker.receive(queue, "c2", wait_s=0.3) == []
        await broker.ack(delivery)

    run(scenario, backend, tmp_path)


def test_nack_redelivers_then_dead_letters_with_the_error(backend: str, queue: str, tmp_path: object) -> None:
    async def scenario(factory: Factory) -> None:
        broker = await factory(max_attempts=3)
        message_id = await broker.publish(queue, b"poison")
        attempts = []
        for _ in range(3):
            (delivery,) = await broker.receive(queue, "c1", wait_s=5)
            attempts.append(delivery.attempt)
            await broker.nack(delivery, f"failed on attempt {delivery.attempt}")
        assert attempts == [1, 2, 3]
        assert await broker.receive(queue, "c1", wait_s=0.5) == []
        (dead,) = await broker.dead_letters(queue)
        assert (dead.message_id, dead.body, dead.attempts, dead.error) == (
            message_id,
            b"poison",
            3,
            "failed on attempt 3",
        )
        assert await broker.depth(queue) == 0

    run(scenario, backend, tmp_path)


def test_a_message_that_keeps_killing_its_consumer_is_dead_lettered(
    backend: str, queue: str, tmp_path: object
) -> None:
    async def scenario(factory: Factory) -> None:
        publisher = await factory(visibility_timeout_s=0.3, max_attempts=2)
        await publisher.publish(queue, b"crash")
        for _ in range(2):
            consumer = await factory(visibility_timeout_s=0.3, max_attempts=2)
            assert len(await consumer.receive(queue, "c", wait_s=5)) == 1
            await consumer.close()  # dies without an answer
        survivor = await factory(visibility_timeout_s=0.3, max_attempts=2)
        assert await survivor.receive(queue, "c", wait_s=1.5) == []
        (dead,) = await survivor.dead_letters(queue)
        assert dead.attempts == 2
        assert "without an answer" in dead.error

    run(scenario, backend, tmp_path)


def test_competing_consumers_share_the_work_without_duplicates(
    backend: str, queue: str, tmp_path: object
) -> None:
    async def scenario(factory: Factory) -> None:
        publisher = await factory()
        sent = {await publisher.publish(queue, str(i).encode()) for i in range(40)}
        a, b = await factory(), await factory()
        seen: list[str] = []
        per_consumer = {"a": 0, "b": 0}

        async def consume(broker: Broker, name: str) -> None:
            idle = 0
            while idle < 3:
                deliveries = await broker.receive(queue, name, max_messages=5, wait_s=0.3)
                if not deliveries:
                    idle += 1
                    continue
                idle = 0
                for d in deliveries:
                    seen.append(d.message_id)
                    per_consumer[name] += 1
                    await broker.ack(d)
                await asyncio.sleep(0.01)

        await asyncio.gather(consume(a, "a"), consume(b, "b"))
        assert sorted(seen) == sorted(sent)
        assert per_consumer["a"] > 0
        assert per_consumer["b"] > 0

    run(scenario, backend, tmp_path)


def test_receive_waits_then_returns_nothing_when_empty(backend: str, queue: str, tmp_path: object) -> None:
    async def scenario(factory: Factory) -> None:
        broker = await factory()
        started = time.monotonic()
        assert await broker.receive(queue, "c1", wait_s=0.4) == []
        assert 0.3 <= time.monotonic() - started < 2.0
        waiter = asyncio.ensure_future(broker.receive(queue, "c1", wait_s=5))
        await asyncio.sleep(0.2)
        publisher = await factory()
        await publisher.publish(queue, b"late")
        (delivery,) = await asyncio.wait_for(waiter, 5)
        assert delivery.body == b"late"
        await broker.ack(delivery)

    run(scenario, backend, tmp_path)
