from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pydantic import BaseModel

from modelfleet.errors import PredictionFailed
from modelfleet.models.model import Batching, Model
from modelfleet.models.runner import ModelRunner


class In(BaseModel):
    n: int


class Out(BaseModel):
    n: int
    thread: str


class SlowSync(Model[In, Out]):
    input_type = In
    output_type = Out

    def predict(self, inputs: list[In]) -> list[Out]:
        time.sleep(0.2)  # stands for CPU-heavy work
        return [Out(n=i.n, thread=threading.current_thread().name) for i in inputs]


class Inline(SlowSync):
    inline = True

    def predict(self, inputs: list[In]) -> list[Out]:
        return [Out(n=i.n, thread=threading.current_thread().name) for i in inputs]


class Async(Model[In, Out]):
    input_type = In
    output_type = Out

    async def predict(self, inputs: list[In]) -> list[Out]:
        await asyncio.sleep(0.01)
        return [Out(n=i.n * 2, thread=threading.current_thread().name) for i in inputs]


class Broken(Model[In, Out]):
    input_type = In
    output_type = Out
    inline = True

    def predict(self, inputs: list[In]) -> list[Out]:
        raise ZeroDivisionError("no")


class Short(Model[In, Out]):
    input_type = In
    output_type = Out
    inline = True

    def predict(self, inputs: list[In]) -> list[Out]:
        return []


def test_cpu_heavy_sync_predict_does_not_block_the_event_loop() -> None:
    async def scenario() -> None:
        runner = ModelRunner("slow", SlowSync(), None)
        runner.load()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        outputs = await runner.predict([In(n=1)])
        task.cancel()
        assert outputs[0].n == 1
        assert outputs[0].thread.startswith("model-slow")  # type: ignore[attr-defined]
        # Given a 200 ms predict, when it runs, then the loop kept ticking meanwhile.
        assert ticks >= 8
        await runner.close()

    asyncio.run(scenario())


def test_inline_and_async_models_run_on_the_loop_thread() -> None:
    async def scenario() -> None:
        for model in (Inline(), Async()):
            runner = ModelRunner("m", model, None)
            runner.load()
            outputs = await runner.predict([In(n=3)])
            assert outputs[0].thread == threading.current_thread().name  # type: ignore[attr-defined]
            await runner.close()
        assert (await ModelRunner("a", Async(), None).predict([In(n=3)]))[0].n == 6  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_batched_runner_merges_and_reports_batch_sizes() -> None:
    async def scenario() -> None:
        runner = ModelRunner("b", SlowSync(), Batching(max_batch_size=4, max_wait_ms=50))
        sizes: list[int] = []
        runner.on_batch = sizes.append
        outputs = await asyncio.gather(*(runner.predict([In(n=i)]) for i in range(6)))
        assert [o[0].n for o in outputs] == list(range(6))  # type: ignore[attr-defined]
        assert sizes == [4, 2]
        await runner.close()

    asyncio.run(scenario())


def test_model_errors_become_prediction_failed_naming_the_model() -> None:
    async def scenario() -> None:
        with pytest.raises(PredictionFailed, match="model 'broken' failed: ZeroDivisionError: no"):
            await ModelRunner("broken", Broken(), None).predict([In(n=1)])
        with pytest.raises(PredictionFailed, match="returned 0 outputs for 1 inputs"):
            await ModelRunner("short", Short(), None).predict([In(n=1)])
        with pytest.raises(PredictionFailed, match="model 'batched' failed"):
            await ModelRunner("batched", Broken(), Batching(4, 1)).predict([In(n=1)])

    asyncio.run(scenario())
