"""The contract a user's model class fulfils to be served by a worker."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


@dataclass(frozen=True)
class Batching:
    """How concurrent requests may be merged into one ``predict`` call.

    ``max_batch_size`` caps the inputs in one call; ``max_wait_ms`` is how long the first queued
    input may wait for company before the batch runs anyway.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")


class Model(Generic[In, Out]):
    """A single-task model: typed input and output, loaded once per process, predicting in batches.

    Subclasses set ``input_type`` and ``output_type`` (pydantic models), implement ``load`` and
    ``predict`` (a plain or an ``async def``), and may set:

    - ``batching``: a :class:`Batching` to let the worker merge concurrent requests;
    - ``inline``: True when ``predict`` is cheap (well under a millisecond a call), so the worker
      runs it on the event loop instead of paying a thread hop; leave False for CPU-heavy work;
    - ``max_concurrency``: how many threads may run a sync ``predict`` at once.

    Constructor keyword arguments come from the model's ``params`` in ``fleet.yaml``.
    """

    input_type: ClassVar[type[BaseModel]]
    output_type: ClassVar[type[BaseModel]]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    batching: ClassVar[Batching | None] = None
    inline: ClassVar[bool] = False
    max_concurrency: ClassVar[int] = 1

    def load(self) -> None:
        """Load weights or other state; called once per process before the first predict."""

    def predict(self, inputs: list[In]) -> list[Out] | Awaitable[list[Out]]:
        """Return one output per input, in the same order."""
        raise NotImplementedError
