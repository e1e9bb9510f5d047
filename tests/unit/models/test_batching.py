from __future__ import annotations

import asyncio

import pytest

from modelfleet.models.batching import DynamicBatcher
from modelfleet.models.model import Batching


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [i * 10 for i in items]


def test_concurrent_requests_are_merged_into_one_call() -> None:
    async def scenario() -> None:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_batch_size=16, max_wait_ms=50))
        # Given 10 callers arriving together, when they submit, then one call sees all of them.
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
        assert results == [[i * 10] for i in range(10)]
        assert model.calls == [list(range(10))]
        await batcher.close()

    asyncio.run(scenario())


def test_results_follow_each_callers_own_order() -> None:
    async def scenario() -> None:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_batch_size=64, max_wait_ms=20))
        a, b, c = await asyncio.gather(batcher.submit([3, 1, 2]), batcher.submit([9]), batcher.submit([5, 4]))
        assert a == [30, 10, 20]
        assert b == [90]
        assert c == [50, 40]
        await batcher.close()

    asyncio.run(scenario())


def test_batch_never_exceeds_max_size() -> None:
    async def scenario() -> None:
        model = Recorder(delay_s=0.005)
        batcher = DynamicBatcher(model, Batching(max_batch_size=4, max_wait_ms=50))
        results = await asyncio.gather(
            *(batcher.submit([i]) for i in range(11)), batcher.submit([100, 101, 102, 103, 104, 105])
        )
        assert [r[0] for r in results[:11]] == [i * 10 for i in range(11)]
        assert results[11] == [1000, 1010, 1020, 1030, 1040, 1050]
        assert all(len(call) <= 4 for call in model.calls)
        assert sorted(x for call in model.calls for x in call) == sorted([*range(11), *range(100, 106)])
        await batcher.close()

    asyncio.run(scenario())


def test_full_batch_runs_without_waiting_for_max_wait() -> None:
    async def scenario() -> None:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_batch_size=4, max_wait_ms=10_000))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(asyncio.gather(*(batcher.submit([i]) for i in range(4))), timeout=2)
        assert loop.time() - started < 1.0
        assert model.calls == [[0, 1, 2, 3]]
        await batcher.close()

    asyncio.run(scenario())


def test_lone_input_runs_after_max_wait() -> None:
    async def scenario() -> None:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_batch_size=32, max_wait_ms=30))
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit([7]) == [70]
        waited = loop.time() - started
        assert 0.025 <= waited < 1.0
        await batcher.close()

    asyncio.run(scenario())


def test_inputs_arriving_during_a_running_batch_form_the_next_batch() -> None:
    async def scenario() -> None:
        model = Recorder(delay_s=0.05)
        batcher = DynamicBatcher(model, Batching(max_batch_size=32, max_wait_ms=0))
        first = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.sleep(0.01)  # the first batch is now running
        rest = await asyncio.gather(*(batcher.submit([i]) for i in range(1, 6)))
        assert await first == [0]
        assert rest == [[10], [20], [30], [40], [50]]
        assert model.calls == [[0], [1, 2, 3, 4, 5]]
        await batcher.close()

    asyncio.run(scenario())


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_going() -> None:
    async def scenario() -> None:
        model = Recorder(fail_on=2)
        batcher = DynamicBatcher(model, Batching(max_batch_size=8, max_wait_ms=20))
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(4)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await batcher.submit([5]) == [50]
        await batcher.close()

    asyncio.run(scenario())


def test_wrong_number_of_outputs_is_an_error_not_a_misalignment() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def scenario() -> None:
        batcher = DynamicBatcher(short, Batching(max_batch_size=8, max_wait_ms=5))
        with pytest.raises(RuntimeError, match="one per input"):
            await batcher.submit([1, 2])
        await batcher.close()

    asyncio.run(scenario())


def test_cancelled_caller_is_dropped_before_the_model_sees_it() -> None:
    async def scenario() -> None:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_batch_size=8, max_wait_ms=50))
        doomed = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0)
        doomed.cancel()
        assert await batcher.submit([2]) == [20]
        assert model.calls == [[2]]
        await batcher.close()

    asyncio.run(scenario())


def test_policy_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batching(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Batching(max_wait_ms=-1)


def test_greedy_idle_calls_run_at_once_and_keep_every_guarantee() -> None:
    async def scenario() -> None:
        model = Recorder(fail_on=3)
        batcher = DynamicBatcher(model, Batching(max_batch_size=4, max_wait_ms=0))
        # An idle greedy batcher runs a lone call in the caller's own task: no batching task exists.
        assert await batcher.submit([1, 2]) == [10, 20]
        assert batcher._task is None
        with pytest.raises(ValueError, match="bad item 3"):
            await batcher.submit([3])
        # A failure leaves the batcher usable; a call over max_batch_size still goes through the queue.
        assert await batcher.submit([4]) == [40]
        assert await batcher.submit([5, 6, 7, 8, 9]) == [50, 60, 70, 80, 90]
        assert model.calls == [[1, 2], [3], [4], [5, 6, 7, 8], [9]]

        async def short(items: list[int]) -> list[int]:
            return items[:-1]

        broken = DynamicBatcher(short, Batching(max_batch_size=4, max_wait_ms=0))
        with pytest.raises(RuntimeError, match="must return one per input"):
            await broken.submit([1, 2])
        await batcher.close()

    asyncio.run(scenario())
