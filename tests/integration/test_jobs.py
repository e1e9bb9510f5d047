"""Asynchronous jobs end to end: gateway, broker, job-worker processes, results in the store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelfleet.broker import make_broker
from tests.conftest import RunningFleet, call, start_fleet, unreachable

MODELS: dict[str, Any] = {
    "sentiment": {"class": "vader-sentiment"},
    "sleepy": {"class": "mf_test_models:Sleepy"},
    "failing": {"class": "mf_test_models:Failing"},
}
PIPELINES: dict[str, Any] = {
    "mood": {
        "steps": {"sentiment": {"model": "sentiment", "input": {"text": "input.text"}}},
        "output": {"label": "sentiment.label"},
    }
}


def _config(broker_url: str | None = None, job_workers: int = 2) -> dict[str, Any]:
    config: dict[str, Any] = {
        "models": MODELS,
        "pipelines": PIPELINES,
        "services": {
            "light": {"models": list(MODELS), "replicas": 1},
            "jobs": {"kind": "job-worker", "replicas": job_workers, "concurrency": 2},
        },
        "broker": {"visibility_timeout_s": 2.0, "max_attempts": 2, "queue": f"jobs-{uuid.uuid4().hex[:8]}"},
        "jobs": {"chunk_size": 2, "callback_attempts": 3},
        "supervisor": {"restart_backoff_initial_s": 0.2},
    }
    if broker_url:
        config["broker"]["url"] = broker_url
    return config


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    running = start_fleet(tmp_path_factory.mktemp("jobs"), _config())
    yield running
    running.stop()


def submit(fleet: RunningFleet, body: Any) -> Any:
    return call(f"{fleet.gateway}/v1/jobs", "POST", body)


def wait_for_job(fleet: RunningFleet, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = call(f"{fleet.gateway}/v1/jobs/{job_id}?limit=1000").json()
        if job["status"] in ("completed", "failed", "canceled"):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout_s}s: {job}")


def test_a_pipeline_job_is_accepted_at_once_and_answered_in_order(fleet: RunningFleet) -> None:
    texts = ["I love it", "I hate it", "It is a table", "Great work!", "Awful service"]
    reply = submit(fleet, {"pipeline": "mood", "inputs": [{"text": t} for t in texts]})
    assert reply.status == 202, reply.body
    accepted = reply.json()
    assert accepted["status"] == "pending"
    assert accepted["total"] == 5
    job = wait_for_job(fleet, accepted["job_id"])
    assert job["status"] == "completed"
    assert (job["done"], job["failed"], job["progress"]) == (5, 0, 1.0)
    assert [r["position"] for r in job["results"]] == [0, 1, 2, 3, 4]
    assert [r["output"]["label"] for r in job["results"]] == [
        "positive",
        "negative",
        "neutral",
        "positive",
        "negative",
    ]
    # Each input's pipeline run is kept too, under an id derived from the job.
    run = call(f"{fleet.gateway}/v1/runs/{accepted['job_id']}-3").json()
    assert run["input"] == {"text": "Great work!"}


def test_a_model_job_with_one_input_and_a_bad_input(fleet: RunningFleet) -> None:
    job_id = submit(fleet, {"model": "sentiment", "inputs": [{"text": "nice"}, {"text": 5}]}).json()["job_id"]
    job = wait_for_job(fleet, job_id)
    assert job["status"] == "failed"
    assert (job["done"], job["failed"]) == (2, 1)
    good, bad = job["results"]
    assert good["output"]["label"] == "positive"
    assert good["error"] is None
    assert "invalid input for model 'sentiment'" in bad["error"]
    single = submit(fleet, {"model": "sentiment", "input": {"text": "fine"}}).json()
    assert wait_for_job(fleet, single["job_id"])["results"][0]["output"]["label"] == "positive"


def test_the_callback_is_called_when_the_job_is_done(fleet: RunningFleet) -> None:
    received: list[dict[str, Any]] = []
    attempts = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            attempts[0] += 1
            body = self.rfile.read(int(self.headers["content-length"]))
            if attempts[0] == 1:
                self.send_response(503)  # the first call fails: the worker must retry
            else:
                received.append(json.loads(body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = submit(fleet, {"pipeline": "mood", "inputs": [{"text": "ok"}], "callback_url": url}).json()[
            "job_id"
        ]
        wait_for_job(fleet, job_id)
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert received, "callback never arrived"
        assert received[0]["job_id"] == job_id
        assert received[0]["status"] == "completed"
        assert attempts[0] >= 2
    finally:
        server.shutdown()


def test_a_queued_job_can_be_cancelled(fleet: RunningFleet) -> None:
    inputs = [{"text": str(i), "sleep_ms": 300} for i in range(24)]
    job_id = submit(fleet, {"model": "sleepy", "inputs": inputs}).json()["job_id"]
    cancelled = call(f"{fleet.gateway}/v1/jobs/{job_id}", "DELETE")
    assert cancelled.status == 200, cancelled.body
    assert cancelled.json()["status"] == "canceled"
    time.sleep(1.5)
    job = call(f"{fleet.gateway}/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled"
    assert job["done"] < 24
    again = call(f"{fleet.gateway}/v1/jobs/{job_id}", "DELETE")
    assert again.status == 409
    assert "already canceled" in again.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ("{nope", 400, "malformed JSON"),
        ([1], 422, "must be a JSON object"),
        ({"inputs": [{"text": "x"}]}, 422, "exactly one target"),
        ({"model": "sentiment", "pipeline": "mood", "inputs": [{"text": "x"}]}, 422, "exactly one target"),
        ({"model": "nope", "inputs": [{"text": "x"}]}, 422, "unknown model 'nope'"),
        ({"pipeline": "nope", "inputs": [{"text": "x"}]}, 422, "unknown pipeline 'nope'"),
        ({"model": "sentiment"}, 422, "either 'input'"),
        ({"model": "sentiment", "inputs": []}, 422, "empty"),
        ({"model": "sentiment", "inputs": ["x"]}, 422, "input [0] must be a JSON object"),
        ({"model": "sentiment", "inputs": [{}], "callback_url": "ftp://x"}, 422, "callback_url"),
        ({"model": "sentiment", "inputs": [{}], "priority": 1}, 422, "unknown field(s): priority"),
    ],
)
def test_bad_job_bodies_are_refused(fleet: RunningFleet, body: Any, status: int, fragment: str) -> None:
    reply = submit(fleet, body)
    assert reply.status == status, reply.body
    assert fragment in reply.json()["error"]
    assert call(f"{fleet.gateway}/v1/jobs/does-not-exist").status == 404


def test_a_poison_chunk_is_dead_lettered_and_its_inputs_get_the_error(
    fleet: RunningFleet, tmp_path: Any
) -> None:
    job_id = submit(fleet, {"model": "failing", "inputs": [{"text": "boom"}, {"text": "fine"}]}).json()[
        "job_id"
    ]
    job = wait_for_job(fleet, job_id, timeout_s=30)
    assert job["status"] == "failed"
    assert all("gave up after 2 attempts" in r["error"] for r in job["results"])
    settings = _broker_of(fleet)

    async def dead() -> list[Any]:
        broker = make_broker(settings["url"], max_attempts=2)
        await broker.open()
        try:
            return await broker.dead_letters(settings["queue"])
        finally:
            await broker.close()

    letters = [d for d in asyncio.run(dead()) if d.message_id == f"{job_id}:0"]
    assert len(letters) == 1
    assert "asked to fail" in letters[0].error
    assert letters[0].attempts == 2


def _broker_of(fleet: RunningFleet) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load(fleet.config.read_text())
    broker = dict(config["broker"])
    broker.setdefault("url", "sqlite:///.modelfleet/broker.db")
    if broker["url"].startswith("sqlite:///") and not broker["url"].startswith("sqlite:////"):
        broker["url"] = f"sqlite:///{fleet.config.parent / broker['url'][len('sqlite:///') :]}"
    return broker


def test_killing_a_job_worker_mid_job_loses_and_duplicates_nothing(fleet: RunningFleet) -> None:
    inputs = [{"text": f"item-{i}", "sleep_ms": 250} for i in range(16)]
    job_id = submit(fleet, {"model": "sleepy", "inputs": inputs}).json()["job_id"]
    deadline = time.monotonic() + 30
    while call(f"{fleet.gateway}/v1/jobs/{job_id}").json()["done"] < 2:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    victim = next(p for p in fleet.status()["processes"] if p["service"] == "jobs")
    os.kill(victim["pid"], signal.SIGKILL)
    job = wait_for_job(fleet, job_id, timeout_s=60)
    assert job["status"] == "completed", job
    assert [r["position"] for r in job["results"]] == list(range(16))
    assert [r["output"]["text"] for r in job["results"]] == [f"item-{i}" for i in range(16)]


BROKERS = {
    "sqlite": None,
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}


@pytest.mark.parametrize("backend", list(BROKERS))
def test_a_job_is_answered_through_each_broker(backend: str, fleet_factory: Any) -> None:
    url = BROKERS[backend]
    if url is not None:

        async def reachable() -> None:
            broker = make_broker(url)
            await broker.open()
            await broker.close()

        try:
            asyncio.run(reachable())
        except Exception as err:
            unreachable(backend, err)
    running = fleet_factory(_config(url, job_workers=1), name=f"broker-{backend}")
    job_id = submit(
        running, {"pipeline": "mood", "inputs": [{"text": "good"}, {"text": "bad"}, {"text": "ok"}]}
    )
    job = wait_for_job(running, job_id.json()["job_id"])
    assert job["status"] == "completed"
    assert [r["output"]["label"] for r in job["results"]] == ["positive", "negative", "positive"]


# ---------------------------------------------------------------------------------------------- batch jobs


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_file_goes_through_a_model_as_a_batch_job(fleet: RunningFleet, tmp_path: Path) -> None:
    # Given a 5,000-row JSONL file on the fleet's machine, one row of it not JSON
    moods = ["I love it", "I hate it", "It is a table"]
    source, target = tmp_path / "reviews.jsonl", tmp_path / "scored.jsonl"
    _write_jsonl(source, [{"text": f"{moods[i % 3]} #{i}"} for i in range(5000)])
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1234] = "{not json\n"
    source.write_text("".join(lines), encoding="utf-8")

    # When it is submitted as a job
    reply = submit(fleet, {"model": "sentiment", "input_file": str(source), "output_file": str(target)})
    assert reply.status == 202, reply.body
    accepted = reply.json()
    assert accepted["status"] == "pending"
    assert (accepted["total"], accepted["progress"]) == (None, None)  # not counted yet
    assert accepted["batch"]["format"] == "jsonl"
    job = wait_for_job(fleet, accepted["job_id"])

    # Then the output has every row once, in the input's order, and the job sums it up
    assert job["status"] == "failed", job  # one row could not be read
    assert (job["total"], job["done"], job["failed"], job["progress"]) == (5000, 5000, 1, 1.0)
    assert job["summary"] == {"rows": 5000, "failed_rows": 1, "output_file": str(target)}
    assert (job["results"], job["error"]) == ([], None)
    rows = _read_jsonl(target)
    assert [r["row"] for r in rows] == list(range(5000))
    assert [r["output"]["label"] for r in rows[:3]] == ["positive", "negative", "neutral"]
    assert "line 1235 is not valid JSON" in rows[1234]["error"]
    assert all(r["error"] is None and r["output"]["label"] for i, r in enumerate(rows) if i != 1234)
    assert not (tmp_path / "scored.jsonl.parts").exists()


def test_a_bad_batch_job_is_refused_with_the_reason(fleet: RunningFleet, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    _write_jsonl(source, [{"text": "hi"}])
    out = str(tmp_path / "out.jsonl")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input_file": str(tmp_path / "missing.jsonl"), "output_file": out}, "does not exist"),
        ({"input_file": "in.jsonl", "output_file": out}, "input_file must be an absolute path"),
        ({"input_file": str(source), "output_file": "../out.jsonl"}, "output_file must be an absolute path"),
        ({"input_file": str(source)}, "needs 'output_file'"),
        ({"input_file": str(source), "output_file": str(tmp_path / "out.txt")}, "cannot tell the format"),
        ({"input_file": str(source), "output_file": out, "format": "xml"}, "unknown format 'xml'"),
        ({"input_file": str(source), "output_file": str(source)}, "must not be the input_file"),
        ({"input_file": str(source), "output_file": str(tmp_path / "no" / "o.csv")}, "does not exist"),
        ({"input_file": str(source), "output_file": out, "chunk_size": 0}, "chunk_size must be"),
        ({"input_file": str(source), "output_file": out, "inputs": [{}]}, "takes no inputs"),
    ]
    for fields, fragment in cases:
        reply = submit(fleet, {"model": "sentiment", **fields})
        assert reply.status == 422, (fields, reply.body)
        assert fragment in reply.json()["error"], (fields, reply.body)


def test_a_batch_job_resumes_after_its_worker_is_killed(fleet: RunningFleet, tmp_path: Path) -> None:
    # Given a batch slow enough to be caught half-way (40 chunks of 50 rows, 150 ms a chunk)
    source, target = tmp_path / "slow.jsonl", tmp_path / "slow-out.jsonl"
    _write_jsonl(source, [{"text": f"row-{i}", "sleep_ms": 150} for i in range(2000)])
    job_id = submit(
        fleet,
        {
            "model": "sleepy",
            "input_file": str(source),
            "output_file": str(target),
            "chunk_size": 50,
            "concurrency": 2,
        },
    ).json()["job_id"]
    deadline = time.monotonic() + 30
    while (seen := call(f"{fleet.gateway}/v1/jobs/{job_id}").json())["done"] < 300:
        assert time.monotonic() < deadline, "the batch never got going"
        time.sleep(0.05)
    assert (seen["total"], seen["status"]) == (2000, "in_progress")

    # When the job worker running it is killed
    running = [
        p
        for p in fleet.replicas("jobs")
        if call(f"{p['url']}/v1/job-worker").json()["batch_jobs_running"] == 1
    ]
    assert len(running) == 1
    os.kill(running[0]["pid"], signal.SIGKILL)

    # Then the batch is taken up again and finishes, every row exactly once and in order
    job = wait_for_job(fleet, job_id, timeout_s=90)
    assert job["status"] == "completed", job
    assert job["summary"] == {"rows": 2000, "failed_rows": 0, "output_file": str(target)}
    rows = _read_jsonl(target)
    assert [r["row"] for r in rows] == list(range(2000))
    assert [r["output"]["text"] for r in rows] == [f"row-{i}" for i in range(2000)]


def test_a_batch_job_can_be_cancelled_between_chunks(fleet: RunningFleet, tmp_path: Path) -> None:
    source, target = tmp_path / "long.jsonl", tmp_path / "long-out.jsonl"
    _write_jsonl(source, [{"text": f"row-{i}", "sleep_ms": 200} for i in range(400)])
    job_id = submit(
        fleet,
        {
            "model": "sleepy",
            "input_file": str(source),
            "output_file": str(target),
            "chunk_size": 10,
            "concurrency": 1,
        },
    ).json()["job_id"]
    deadline = time.monotonic() + 30
    while call(f"{fleet.gateway}/v1/jobs/{job_id}").json()["done"] < 20:
        assert time.monotonic() < deadline, "the batch never got going"
        time.sleep(0.05)
    assert call(f"{fleet.gateway}/v1/jobs/{job_id}", "DELETE").json()["status"] == "canceled"
    # The worker stops at its next chunk: within a second the batch is off every worker
    deadline = time.monotonic() + 10
    while any(call(f"{p['url']}/v1/job-worker").json()["batch_jobs_running"] for p in fleet.replicas("jobs")):
        assert time.monotonic() < deadline, "the canceled batch kept running"
        time.sleep(0.1)
    job = call(f"{fleet.gateway}/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled"
    assert job["done"] < 400
    assert "summary" not in job
    assert not target.exists()
    assert (tmp_path / "long-out.jsonl.parts").is_dir()  # kept: the same batch submitted again resumes
