"""Tiny models for tests. Worker processes import them by path, so the fixtures put this folder on
PYTHONPATH."""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel, Field

from modelfleet.models import Batching, Model


class TextIn(BaseModel):
    text: str


class BatchSeen(BaseModel):
    text: str
    batch_size: int
    pid: int


class BatchRecorder(Model[TextIn, BatchSeen]):
    """Echoes each text with the size of the predict call it was part of."""

    input_type = TextIn
    output_type = BatchSeen
    batching = Batching(max_batch_size=8, max_wait_ms=20)

    def __init__(self, delay_ms: float = 5.0) -> None:
        self.delay_s = delay_ms / 1000.0

    def predict(self, inputs: list[TextIn]) -> list[BatchSeen]:
        time.sleep(self.delay_s)  # runs on the model's thread, as CPU-heavy work would
        return [BatchSeen(text=i.text, batch_size=len(inputs), pid=os.getpid()) for i in inputs]


class SleepIn(BaseModel):
    text: str
    sleep_ms: float = Field(0, ge=0, le=60_000)


class SleepOut(BaseModel):
    text: str
    pid: int


class Sleepy(Model[SleepIn, SleepOut]):
    """An async model that waits as long as asked: for deadlines and graceful drain."""

    input_type = SleepIn
    output_type = SleepOut

    async def predict(self, inputs: list[SleepIn]) -> list[SleepOut]:
        await asyncio.sleep(max(i.sleep_ms for i in inputs) / 1000.0)
        return [SleepOut(text=i.text, pid=os.getpid()) for i in inputs]


class FailIn(BaseModel):
    text: str


class Failing(Model[FailIn, FailIn]):
    """Raises on the text 'boom', to show a model error is a clean 500 and the worker lives on."""

    input_type = FailIn
    output_type = FailIn
    inline = True

    def predict(self, inputs: list[FailIn]) -> list[FailIn]:
        if any(i.text == "boom" for i in inputs):
            raise RuntimeError("asked to fail")
        return inputs


class Vector(BaseModel):
    values: list[float]
    label: str


class Scaled(BaseModel):
    values: list[float]
    label: str
    norm: float


class Scale(Model[Vector, Scaled]):
    """Doubles an FP32 vector: exercises 2-D tensors in the Open Inference Protocol."""

    input_type = Vector
    output_type = Scaled
    inline = True

    def predict(self, inputs: list[Vector]) -> list[Scaled]:
        out = []
        for i in inputs:
            doubled = [2 * v for v in i.values]
            out.append(Scaled(values=doubled, label=i.label, norm=sum(v * v for v in doubled) ** 0.5))
        return out


class LabelOut(BaseModel):
    label: str
    score: float


class KeywordSpam(Model[TextIn, LabelOut]):
    """Calls a text spam when it shouts a prize: enough to steer a pipeline in tests."""

    input_type = TextIn
    output_type = LabelOut
    inline = True

    def predict(self, inputs: list[TextIn]) -> list[LabelOut]:
        return [
            LabelOut(label="spam", score=0.99) if "WIN" in i.text else LabelOut(label="ham", score=0.9)
            for i in inputs
        ]


class KeywordIntent(Model[TextIn, LabelOut]):
    """Maps a few banking keywords to intents."""

    input_type = TextIn
    output_type = LabelOut
    inline = True
    keywords = {"card": "card_arrival", "pin": "change_pin", "refund": "request_refund"}

    def predict(self, inputs: list[TextIn]) -> list[LabelOut]:
        out = []
        for item in inputs:
            text = item.text.lower()
            label = next((v for k, v in self.keywords.items() if k in text), "other")
            out.append(LabelOut(label=label, score=0.8))
        return out


class SlowToLoad(Model[TextIn, TextIn]):
    """Echoes the text; its load takes ``load_s`` seconds, as loading real weights does."""

    input_type = TextIn
    output_type = TextIn
    inline = True

    def __init__(self, load_s: float = 2.0) -> None:
        self.load_s = load_s

    def load(self) -> None:
        time.sleep(self.load_s)

    def predict(self, inputs: list[TextIn]) -> list[TextIn]:
        return list(inputs)
