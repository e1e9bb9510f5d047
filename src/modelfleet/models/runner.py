"""Executes one loaded model inside a worker: inline, on its own threads, or through a batcher."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from pydantic import (
    BaseModel,
    PydanticInvalidForJsonSchema,
    PydanticSchemaGenerationError,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
)

from modelfleet.errors import ConfigError, InvalidInput, PredictionFailed
from modelfleet.models.batching import DynamicBatcher
from modelfleet.models.model import Batching, Model


def describe_validation_error(err: ValidationError, prefix: str = "") -> tuple[str, list[dict[str, object]]]:
    """A one-line summary naming each bad field (``[1].text: Field required``) and the details."""
    details: list[dict[str, object]] = []
    for e in err.errors(include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        details.append({"field": f"{prefix}{loc}", "message": e["msg"], "type": e["type"]})
    summary = "; ".join(
        f"{d['field']}: {d['message']}" if d["field"] else str(d["message"]) for d in details[:5]
    )
    if len(details) > 5:
        summary += f"; and {len(details) - 5} more"
    return summary, details


def check_encodable(model: str, schema: type[BaseModel], role: str) -> None:
    """Refuse a model whose input or output has a field with no JSON form, naming the field.

    Both APIs carry every field as JSON or as a tensor (whose fallback is JSON), so a field pydantic
    cannot serialise would fail every request; finding it at load turns that into a start-up error.
    Raises ConfigError.
    """
    try:
        schema.model_json_schema(mode="serialization" if role == "output" else "validation")
        return
    except (PydanticSchemaGenerationError, PydanticInvalidForJsonSchema, PydanticUserError) as err:
        whole = err
    for field, info in schema.model_fields.items():
        try:
            TypeAdapter(info.annotation or Any).json_schema(mode="serialization")
        except (PydanticSchemaGenerationError, PydanticInvalidForJsonSchema, PydanticUserError) as err:
            raise ConfigError(
                f"model {model!r}: {role} field {field!r} ({_type_name(info.annotation)}) has no JSON "
                "or tensor encoding; use str, numbers, bool, lists of them or nested pydantic models"
            ) from err
    raise ConfigError(
        f"model {model!r}: its {role} type {schema.__name__} cannot be encoded as JSON: {whole}"
    )


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__qualname__", None) or repr(annotation)


class ProcessLoad:
    """What this process is doing now, which every runner reads before running a call inline.

    ``requests`` is kept by the worker (each HTTP request it is serving), ``calls`` by the runners
    (model calls under way, queued in a batcher included) and ``on_threads`` by the model threads
    themselves, under ``lock``: a call whose caller gave up (a timeout) still runs there, and
    nothing may run inline beside it. The process is idle for a call when that call is the only
    one and the only request.

    Counting requests matters: while a call runs inline the loop reads no sockets, so requests
    arriving meanwhile wait unseen. Were only model calls counted, each of them would then find the
    process idle in turn and run inline too, and the worker would serve one request at a time (seen:
    230 instead of 420 pipeline requests/s at concurrency 16).
    """

    def __init__(self) -> None:
        self.requests = 0
        self.calls = 0
        self.on_threads = 0
        self.lock = threading.Lock()

    def idle_for_one_call(self) -> bool:
        return self.calls == 1 and self.requests <= 1 and self.on_threads == 0


PROCESS_LOAD = ProcessLoad()


class ModelRunner:
    """Owns a model instance and decides how each call reaches it.

    Sync ``predict`` runs on the model's own thread pool (``max_concurrency`` threads) so a
    CPU-heavy model never blocks the event loop; models marked ``inline`` run on the loop because a
    thread hop would cost more than the work. Batchable models go through a
    :class:`DynamicBatcher`, so concurrent requests share one call.

    With ``idle_inline_ms`` above 0, a one-input call also runs on the loop when the process is
    otherwise idle (see :class:`ProcessLoad`) and this model's recent one-input calls took at most
    that long. Handing work to a thread and back costs two thread wake-ups, about 0.1 ms each on a
    virtual machine, which is a tenth of a small model's call; when nothing else is running, nothing
    waits for the loop meanwhile except requests arriving during the call, delayed by at most about
    ``idle_inline_ms``. Under concurrency calls go to the threads as before.
    """

    # Weight of the newest one-input call in the moving average that gates running inline.
    _AVERAGE_WEIGHT = 0.2

    def __init__(
        self,
        name: str,
        model: Model[Any, Any],
        batching: Batching | None,
        idle_inline_ms: float = 0.0,
    ) -> None:
        if idle_inline_ms < 0:
            raise ValueError(f"idle_inline_ms must be 0 or more, got {idle_inline_ms}")
        self.name = name
        self.model = model
        self.batching = batching
        self.input_type: type[BaseModel] = type(model).input_type
        self.output_type: type[BaseModel] = type(model).output_type
        check_encodable(name, self.input_type, "input")
        check_encodable(name, self.output_type, "output")
        self.version = type(model).version
        self.input_one: TypeAdapter[Any] = TypeAdapter(self.input_type)
        self.input_many: TypeAdapter[Any] = TypeAdapter(list[self.input_type])  # type: ignore[name-defined]
        self.output_one: TypeAdapter[Any] = TypeAdapter(self.output_type)
        self.output_many: TypeAdapter[Any] = TypeAdapter(list[self.output_type])  # type: ignore[name-defined]
        self.ready = False
        # Calls under way: a retired version (its alias moved on) is closed only once this is 0.
        self.in_flight = 0
        # Called with the size of every predict call; the worker points it at its metrics.
        self.on_batch: Callable[[int], None] | None = None
        self.idle_inline_ms = idle_inline_ms
        # Moving average of one-input predict calls, in ms; None until one has been timed.
        self.single_call_ms: float | None = None
        self._is_async = inspect.iscoroutinefunction(model.predict)
        self._inline = type(model).inline
        self._executor: ThreadPoolExecutor | None = None
        if not self._is_async and not self._inline:
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, type(model).max_concurrency), thread_name_prefix=f"model-{name}"
            )
        self._batcher: DynamicBatcher[BaseModel, BaseModel] | None = (
            DynamicBatcher(self._call_model, batching) if batching is not None else None
        )

    def validate_rows(self, rows: list[Any], prefix: str = "") -> list[BaseModel]:
        """Validate plain inputs into the model's input type; raises InvalidInput naming each bad field."""
        try:
            return list(self.input_many.validate_python(rows))
        except ValidationError as err:
            summary, details = describe_validation_error(err, prefix)
            raise InvalidInput(f"invalid input for model {self.name!r}: {summary}", details) from None

    def load(self) -> None:
        """Load the model; call once, before serving."""
        self.model.load()
        self.ready = True

    async def predict(self, inputs: list[BaseModel]) -> list[BaseModel]:
        """Predict ``inputs`` (already validated) and return outputs in the same order.

        Raises PredictionFailed when the model raises.
        """
        self.in_flight += 1
        PROCESS_LOAD.calls += 1
        try:
            if self._batcher is not None:
                try:
                    return await self._batcher.submit(inputs)
                except PredictionFailed:
                    raise
                except Exception as exc:
                    raise PredictionFailed(f"model {self.name!r} failed: {exc}") from exc
            return await self._call_model(inputs)
        finally:
            self.in_flight -= 1
            PROCESS_LOAD.calls -= 1

    async def _call_model(self, inputs: list[BaseModel]) -> list[BaseModel]:
        if self.on_batch is not None:
            self.on_batch(len(inputs))
        try:
            if self._is_async:
                outputs = await cast(Awaitable[list[BaseModel]], self.model.predict(inputs))
            elif self._executor is not None:
                if self._may_run_inline(inputs):
                    # One turn of the loop first: requests whose bytes came in meanwhile start, and
                    # are counted, before the loop is taken.
                    await asyncio.sleep(0)
                if self._may_run_inline(inputs):
                    outputs = self._timed_predict(inputs)
                else:
                    with PROCESS_LOAD.lock:
                        PROCESS_LOAD.on_threads += 1
                    loop = asyncio.get_running_loop()
                    outputs = await loop.run_in_executor(self._executor, self._predict_on_thread, inputs)
            else:
                outputs = cast(list[BaseModel], self.model.predict(inputs))
        except Exception as exc:
            raise PredictionFailed(f"model {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        if len(outputs) != len(inputs):
            raise PredictionFailed(
                f"model {self.name!r} returned {len(outputs)} outputs for {len(inputs)} inputs"
            )
        return outputs

    def _may_run_inline(self, inputs: list[BaseModel]) -> bool:
        average = self.single_call_ms
        return (
            len(inputs) == 1
            and average is not None
            and average <= self.idle_inline_ms
            and PROCESS_LOAD.idle_for_one_call()
        )

    def _predict_on_thread(self, inputs: list[BaseModel]) -> list[BaseModel]:
        try:
            return self._timed_predict(inputs)
        finally:
            with PROCESS_LOAD.lock:
                PROCESS_LOAD.on_threads -= 1

    def _timed_predict(self, inputs: list[BaseModel]) -> list[BaseModel]:
        """``model.predict``, keeping the moving average of one-input calls (on any thread)."""
        started = time.perf_counter()
        outputs = cast(list[BaseModel], self.model.predict(inputs))
        if len(inputs) == 1:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            average = self.single_call_ms
            self.single_call_ms = (
                elapsed_ms if average is None else average + self._AVERAGE_WEIGHT * (elapsed_ms - average)
            )
        return outputs

    async def close(self) -> None:
        """Stop batching and release threads."""
        if self._batcher is not None:
            await self._batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
