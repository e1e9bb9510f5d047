from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pydantic import BaseModel, ConfigDict

from modelfleet.errors import ConfigError, PredictionFailed
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


class Quick(Model[In, Out]):
    """A sync model that is not marked inline but takes well under a millisecond."""

    input_type = In
    output_type = Out

    def predict(self, inputs: list[In]) -> list[Out]:
        return [Out(n=i.n, thread=threading.current_thread().name) for i in inputs]


def _thread_of(outputs: list[BaseModel]) -> str:
    return outputs[0].thread  # type: ignore[attr-defined, no-any-return]


def test_a_quick_lone_call_runs_on_the_loop_once_its_time_is_known() -> None:
    async def scenario() -> None:
        runner = ModelRunner("quick", Quick(), Batching(8, 0), idle_inline_ms=5.0)
        runner.load()
        loop_thread = threading.current_thread().name
        # The first call has no measured time yet: it goes to the model's thread and is timed.
        assert _thread_of(await runner.predict([In(n=1)])).startswith("model-quick")
        assert runner.single_call_ms is not None
        assert runner.single_call_ms < 5.0
        # Later lone one-input calls skip the thread hop.
        assert _thread_of(await runner.predict([In(n=2)])) == loop_thread
        assert _thread_of(await runner.predict([In(n=3)])) == loop_thread
        # A call of several inputs is not what was timed: it goes to the thread.
        assert _thread_of(await runner.predict([In(n=4), In(n=5)])).startswith("model-quick")
        await runner.close()

    asyncio.run(scenario())


def test_a_call_while_another_model_call_is_under_way_goes_to_the_thread() -> None:
    async def scenario() -> None:
        quick = ModelRunner("quick", Quick(), None, idle_inline_ms=5.0)
        slow = ModelRunner("slow", SlowSync(), None, idle_inline_ms=5.0)
        await quick.predict([In(n=0)])  # timed, so quick may run inline when alone
        # Given a 200 ms call of another model on its thread
        busy = asyncio.ensure_future(slow.predict([In(n=1)]))
        await asyncio.sleep(0.02)
        # When the quick model is called meanwhile, then it does not take the loop
        assert _thread_of(await quick.predict([In(n=2)])).startswith("model-quick")
        assert _thread_of(await busy).startswith("model-slow")
        # And alone again, it runs on the loop
        assert _thread_of(await quick.predict([In(n=3)])) == threading.current_thread().name
        await quick.close()
        await slow.close()

    asyncio.run(scenario())


def test_slow_models_and_a_zero_budget_never_run_on_the_loop() -> None:
    async def scenario() -> None:
        slow = ModelRunner("slow", SlowSync(), None, idle_inline_ms=5.0)
        never = ModelRunner("never", Quick(), None, idle_inline_ms=0.0)
        for _ in range(2):
            assert _thread_of(await slow.predict([In(n=1)])).startswith("model-slow")
            assert _thread_of(await never.predict([In(n=1)])).startswith("model-never")
        assert slow.single_call_ms is not None
        assert slow.single_call_ms > 100
        await slow.close()
        await never.close()

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="idle_inline_ms"):
        ModelRunner("bad", Quick(), None, idle_inline_ms=-1)


def test_nothing_runs_inline_beside_a_call_whose_caller_gave_up() -> None:
    async def scenario() -> None:
        quick = ModelRunner("quick", Quick(), None, idle_inline_ms=5.0)
        slow = ModelRunner("slow", SlowSync(), None, idle_inline_ms=5.0)
        await quick.predict([In(n=0)])
        # Given a call that timed out for its caller but still runs on the model's thread
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow.predict([In(n=1)]), 0.02)
        # When the quick model is called alone meanwhile, then it still keeps off the loop
        assert _thread_of(await quick.predict([In(n=2)])).startswith("model-quick")
        await asyncio.sleep(0.3)  # the abandoned call finishes
        assert _thread_of(await quick.predict([In(n=3)])) == threading.current_thread().name
        await quick.close()
        await slow.close()

    asyncio.run(scenario())


class Opaque:
    """A type with no JSON form."""


class OpaqueOut(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    label: str
    blob: Opaque


class Unencodable(Model[In, OpaqueOut]):
    input_type = In
    output_type = OpaqueOut

    def predict(self, inputs: list[In]) -> list[OpaqueOut]:
        return [OpaqueOut(label="x", blob=Opaque()) for _ in inputs]


class Nested(BaseModel):
    label: str
    score: float


class RichOut(BaseModel):
    scores: list[Nested]
    best: Nested | None
    values: list[float]


class Rich(Model[In, RichOut]):
    input_type = In
    output_type = RichOut

    def predict(self, inputs: list[In]) -> list[RichOut]:
        return [RichOut(scores=[], best=None, values=[]) for _ in inputs]


def test_a_model_whose_output_cannot_be_encoded_is_refused_at_load_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="model 'odd': output field 'blob' \\(Opaque\\) has no JSON"):
        ModelRunner("odd", Unencodable(), None)
    # lists of objects, optional nested objects and lists of numbers are all fine
    ModelRunner("rich", Rich(), None)
