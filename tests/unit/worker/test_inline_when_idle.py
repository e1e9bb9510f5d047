"""The worker counts the requests it serves, so that a model call runs inline only when it is alone."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
from pydantic import BaseModel

from modelfleet.models.model import Model
from modelfleet.models.runner import PROCESS_LOAD, ModelRunner
from modelfleet.settings import WorkerSettings
from modelfleet.worker.app import WorkerApp


class In(BaseModel):
    text: str


class Out(BaseModel):
    requests: int
    thread: str


class Probe(Model[In, Out]):
    """Quick, not marked inline: says how many requests the worker served and where it ran."""

    input_type = In
    output_type = Out

    def predict(self, inputs: list[In]) -> list[Out]:
        return [Out(requests=PROCESS_LOAD.requests, thread=threading.current_thread().name) for _ in inputs]


async def post(app: WorkerApp, text: str, body_sent: asyncio.Event | None = None) -> dict[str, Any]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/models/probe/predict",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    body = orjson.dumps({"text": text})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if body_sent is not None:
            await body_sent.wait()  # a client still sending its body
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent
    return dict(orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))["output"])


def test_a_lone_request_runs_inline_and_one_beside_another_request_does_not() -> None:
    app = WorkerApp("s", {"probe": ModelRunner("probe", Probe(), None, idle_inline_ms=5.0)}, WorkerSettings())
    app.load()
    loop_thread = threading.current_thread().name

    async def scenario() -> None:
        first = await post(app, "timed")  # no time measured yet: on the model's thread
        assert first == {"requests": 1, "thread": first["thread"]}
        assert first["thread"].startswith("model-probe")
        # Given the worker serving this request alone, then the call runs on the loop
        assert await post(app, "alone") == {"requests": 1, "thread": loop_thread}
        # Given another request under way, still reading its body, so no model call of its own yet
        body_sent = asyncio.Event()
        other = asyncio.ensure_future(post(app, "slow client", body_sent))
        await asyncio.sleep(0.01)
        # When a request comes meanwhile, then its call keeps off the loop
        second = await post(app, "beside")
        assert second["requests"] == 2
        assert second["thread"].startswith("model-probe")
        body_sent.set()
        assert (await other)["requests"] == 1
        assert PROCESS_LOAD.requests == 0
        await app.close()

    asyncio.run(scenario())
