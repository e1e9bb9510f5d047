"""The fleet end to end: `modelfleet up` starts a gateway and worker replicas as real processes,
and every test talks real HTTP to them."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as tritonhttp

from tests.conftest import ReadinessWatch, RunningFleet, call, free_port, start_fleet

CONFIG: dict[str, Any] = {
    "gateway": {"body_limit_bytes": 65_536, "health_interval_s": 0.2, "health_timeout_s": 0.5},
    "supervisor": {"restart_backoff_initial_s": 0.2, "drain_timeout_s": 5},
    "models": {
        "echo": {"class": "echo"},
        "sentiment": {"class": "vader-sentiment"},
        "language": {"class": "fasttext-language"},
        "sleepy": {"class": "mf_test_models:Sleepy"},
        "failing": {"class": "mf_test_models:Failing"},
        "scale": {"class": "mf_test_models:Scale"},
        "recorder": {"class": "mf_test_models:BatchRecorder"},
    },
    "services": {
        "light": {"models": ["echo", "sentiment", "language", "sleepy", "failing", "scale"], "replicas": 2},
        "batchy": {"models": ["recorder"], "replicas": 1},
    },
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    running = start_fleet(tmp_path_factory.mktemp("fleet"), CONFIG)
    yield running
    running.stop()


def predict(fleet: RunningFleet, model: str, body: Any, **kw: Any) -> Any:
    return call(f"{fleet.gateway}/v1/models/{model}/predict", "POST", body, **kw)


def test_status_lists_every_process_ready_with_pids_and_models(fleet: RunningFleet) -> None:
    status = fleet.status()
    assert status["running"] is True
    names = {p["name"]: p for p in status["processes"]}
    assert set(names) == {"light-0", "light-1", "batchy-0", "gateway"}
    assert all(p["ready"] and p["pid"] for p in names.values())
    assert names["light-0"]["models"] == ["echo", "sentiment", "language", "sleepy", "failing", "scale"]
    assert len({p["pid"] for p in names.values()}) == 4
    text = fleet.cli("status").stdout
    assert "light-1" in text
    assert "recorder" in text


def test_plain_json_single_and_batch(fleet: RunningFleet) -> None:
    one = predict(fleet, "sentiment", {"text": "I love this bank, great service!"})
    assert one.status == 200
    assert one.json()["output"]["label"] == "positive"
    assert one.json()["model"] == "sentiment"
    many = predict(
        fleet, "language", [{"text": "Bonjour, je voudrais une carte"}, {"text": "Where is my card?"}]
    )
    assert many.status == 200
    assert [o["language"] for o in many.json()["outputs"]] == ["fr", "en"]


def test_open_inference_protocol(fleet: RunningFleet) -> None:
    gw = fleet.gateway
    assert call(f"{gw}/v2/health/live").json() == {"live": True}
    assert call(f"{gw}/v2/health/ready").status == 200
    assert call(f"{gw}/v2").json()["name"] == "modelfleet-gateway"
    meta = call(f"{gw}/v2/models/sentiment").json()
    assert meta["name"] == "sentiment"
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert call(f"{gw}/v2/models/sentiment/ready").json() == {"name": "sentiment", "ready": True}
    assert call(f"{gw}/v2/models/sentiment/versions/1/ready").status == 200

    request = {
        "id": "q-1",
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "awful"]}],
    }
    reply = call(f"{gw}/v2/models/sentiment/infer", "POST", request)
    assert reply.status == 200
    body = reply.json()
    assert body["id"] == "q-1"
    assert body["model_name"] == "sentiment"
    labels = next(t for t in body["outputs"] if t["name"] == "label")
    assert labels == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "negative"]}

    vectors = {
        "inputs": [
            {"name": "values", "shape": [2, 2], "datatype": "FP32", "data": [3, 4, 0, 1]},
            {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
        ],
        "outputs": [{"name": "values"}, {"name": "norm"}],
    }
    reply = call(f"{gw}/v2/models/scale/versions/1/infer", "POST", vectors)
    assert reply.status == 200, reply.body
    tensors = {t["name"]: t for t in reply.json()["outputs"]}
    assert set(tensors) == {"values", "norm"}
    assert tensors["values"] == {
        "name": "values",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [6.0, 8.0, 0.0, 2.0],
    }
    assert tensors["norm"]["data"] == [10.0, 2.0]

    missing_version = call(f"{gw}/v2/models/scale/versions/7/infer", "POST", vectors)
    assert missing_version.status == 404
    assert "no version '7'" in missing_version.json()["error"]


def test_tritonclient_binary_tensors_on_a_worker_and_through_the_gateway(fleet: RunningFleet) -> None:
    workers = [p["url"] for p in fleet.replicas("light")]
    for url in [fleet.gateway, *workers]:
        with tritonhttp.InferenceServerClient(url.removeprefix("http://")) as client:
            # Given numeric and BYTES inputs sent as binary, the client's default
            values = tritonhttp.InferInput("values", [2, 2], "FP32")
            values.set_data_from_numpy(np.array([[3, 4], [0, 1]], dtype=np.float32))
            label = tritonhttp.InferInput("label", [2], "BYTES")
            label.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
            # When one output is asked in binary and one as JSON
            asked = [
                tritonhttp.InferRequestedOutput("values", binary_data=True),
                tritonhttp.InferRequestedOutput("norm", binary_data=False),
            ]
            result = client.infer("scale", [values, label], outputs=asked)
            # Then both come back as the arrays they are
            doubled = result.as_numpy("values")
            assert doubled.dtype == np.float32
            assert doubled.tolist() == [[6.0, 8.0], [0.0, 2.0]]
            assert result.get_output("values")["parameters"] == {"binary_data_size": 16}
            assert result.as_numpy("norm").tolist() == [10.0, 2.0]
            assert "data" in result.get_output("norm")
            assert result.as_numpy("label") is None  # not asked for
            text = tritonhttp.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array(["h\u00e9llo".encode()], dtype=np.object_))
            echoed = client.infer("echo", [text])
            assert echoed.as_numpy("text").tolist() == ["h\u00e9llo".encode()]
            assert echoed.as_numpy("length").tolist() == [5]


def test_model_listing_spans_all_services(fleet: RunningFleet) -> None:
    models = call(f"{fleet.gateway}/v1/models").json()["models"]
    assert {(m["name"], m["service"]) for m in models} >= {("echo", "light"), ("recorder", "batchy")}
    detail = call(f"{fleet.gateway}/v1/models/sentiment").json()
    assert detail["input_schema"]["required"] == ["text"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "fragment"),
    [
        ("/v1/models/nope/predict", {"text": "x"}, {}, 404, "model 'nope' is not served"),
        ("/v2/models/nope/infer", {"inputs": []}, {}, 404, "model 'nope' is not served"),
        ("/v1/models/echo/predict", '{"text": "unclosed', {}, 400, "malformed JSON"),
        ("/v1/models/echo/predict", "", {}, 400, "empty body"),
        ("/v1/models/echo/predict", {"txt": "x"}, {}, 422, "text: Field required"),
        (
            "/v1/models/echo/predict",
            [{"text": "ok"}, {"text": 5}],
            {},
            422,
            "[1].text: Input should be a valid string",
        ),
        ("/v1/models/echo/predict", "42", {}, 422, "must be a JSON object"),
        ("/v1/models/echo/predict", [], {}, 422, "empty"),
        (
            "/v1/models/scale/predict",
            {"values": "abc", "label": "x"},
            {},
            422,
            "values: Input should be a valid array",
        ),
        (
            "/v1/models/echo/predict",
            {"text": "x"},
            {"content-type": "text/plain"},
            415,
            "unsupported media type",
        ),
        (
            "/v1/models/echo/predict",
            {"text": "x"},
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "application/json",
        ),
        ("/v1/models/echo/predict", {"text": "x" * 70_000}, {}, 413, "exceeds the limit of 65536 bytes"),
        ("/v2/models/echo/infer", "{oops", {}, 400, "malformed JSON"),
        (
            "/v2/models/echo/infer",
            {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
            {},
            422,
            "needs 3 values",
        ),
        (
            "/v2/models/echo/infer",
            {"inputs": [{"name": "wat", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            {},
            422,
            "unknown input tensor 'wat'",
        ),
        (
            "/v1/models/failing/predict",
            {"text": "boom"},
            {},
            500,
            "model 'failing' failed: RuntimeError: asked to fail",
        ),
        ("/v1/nothing-here", None, {}, 404, "no route"),
    ],
)
def test_bad_input_gets_a_clear_json_error_and_the_fleet_keeps_serving(
    fleet: RunningFleet, path: str, body: Any, headers: dict[str, str], status: int, fragment: str
) -> None:
    reply = call(f"{fleet.gateway}{path}", "POST" if body is not None else "GET", body, headers=headers)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    assert fragment in reply.json()["error"]
    after = predict(fleet, "echo", {"text": "still here"})
    assert after.status == 200
    assert after.json()["output"] == {"text": "still here", "length": 10}


def test_same_bad_inputs_straight_to_a_worker(fleet: RunningFleet) -> None:
    worker = fleet.replicas("light")[0]["url"]
    assert call(f"{worker}/v1/models/nope/predict", "POST", {"text": "x"}).status == 404
    assert call(f"{worker}/v1/models/echo/predict", "POST", "{bad").status == 400
    assert call(f"{worker}/v1/models/echo/predict", "POST", {"text": 1}).status == 422
    assert (
        call(f"{worker}/v1/models/echo/predict", "POST", "x", headers={"content-type": "text/csv"}).status
        == 415
    )
    assert call(f"{worker}/v1/models/echo/predict", "POST", {"text": "x" * 5_000_000}).status == 413
    assert call(f"{worker}/v1/models/echo/predict", "GET").status == 405
    assert call(f"{worker}/v1/models/echo/predict", "POST", {"text": "fine"}).status == 200


def test_request_id_is_echoed_or_made(fleet: RunningFleet) -> None:
    given = predict(fleet, "echo", {"text": "x"}, headers={"x-request-id": "trace-123"})
    assert given.headers["x-request-id"] == "trace-123"
    made = predict(fleet, "echo", {"text": "x"})
    assert len(made.headers["x-request-id"]) == 32
    error = predict(fleet, "nope", {"text": "x"}, headers={"x-request-id": "trace-404"})
    assert error.headers["x-request-id"] == "trace-404"


def test_deadline_gives_504_and_the_worker_keeps_serving(fleet: RunningFleet) -> None:
    started = time.monotonic()
    reply = predict(fleet, "sleepy", {"text": "x", "sleep_ms": 3000}, headers={"x-request-timeout-ms": "300"})
    elapsed = time.monotonic() - started
    assert reply.status == 504
    # The worker gets the time left and usually gives up a moment before the gateway would.
    assert re.search(r"did not answer within the deadline of (29\d|300) ms", reply.json()["error"])
    assert elapsed < 2.0
    assert predict(fleet, "sleepy", {"text": "y", "sleep_ms": 1}).status == 200


def test_concurrent_requests_are_batched_and_answers_stay_with_their_request(fleet: RunningFleet) -> None:
    texts = [f"text-{i}" for i in range(40)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(lambda t: predict(fleet, "recorder", {"text": t}), texts))
    assert all(r.status == 200 for r in replies)
    outputs = [r.json()["output"] for r in replies]
    assert [o["text"] for o in outputs] == texts
    assert max(o["batch_size"] for o in outputs) > 1
    assert all(o["batch_size"] <= 8 for o in outputs)
    worker = fleet.replicas("batchy")[0]["url"]
    metrics = call(f"{worker}/metrics").body.decode()
    assert 'modelfleet_worker_batch_size_count{model="recorder",service="batchy"}' in metrics


def test_metrics_and_openapi(fleet: RunningFleet) -> None:
    predict(fleet, "echo", {"text": "count me"})
    gateway_metrics = call(f"{fleet.gateway}/metrics")
    assert gateway_metrics.headers["content-type"].startswith("text/plain")
    assert 'modelfleet_gateway_requests_total{code="200",service="light"}' in gateway_metrics.body.decode()
    worker = fleet.replicas("light")[0]["url"]
    text = call(f"{worker}/metrics").body.decode()
    assert "modelfleet_worker_requests_total" in text
    assert 'modelfleet_worker_model_ready{model="sentiment",service="light"} 1.0' in text
    spec = call(f"{worker}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    schema = spec["paths"]["/v1/models/sentiment/predict"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    assert schema["schema"]["oneOf"][0] == {"$ref": "#/components/schemas/SentimentInput"}
    assert "SentimentOutput" in spec["components"]["schemas"]


def _hammer(
    fleet: RunningFleet, stop: threading.Event, failures: list[str], pids: set[int], count: list[int]
) -> None:
    while not stop.is_set():
        try:
            reply = predict(fleet, "sleepy", {"text": "x", "sleep_ms": 2}, timeout_s=10)
        except OSError as err:
            failures.append(f"client error: {err}")
            continue
        if reply.status != 200:
            failures.append(f"{reply.status}: {reply.body[:200]!r}")
        else:
            pids.add(reply.json()["output"]["pid"])
            count[0] += 1


def test_killing_a_replica_loses_no_request_and_the_supervisor_restarts_it(fleet: RunningFleet) -> None:
    before = {p["name"]: p for p in fleet.replicas("light")}
    victim = before["light-0"]
    stop = threading.Event()
    failures: list[str] = []
    pids: set[int] = set()
    count = [0]
    threads = [threading.Thread(target=_hammer, args=(fleet, stop, failures, pids, count)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert pids == {victim["pid"], before["light-1"]["pid"]}, "load should reach both replicas"
        # When one replica dies mid-load, then every request still succeeds on the other.
        os.kill(victim["pid"], signal.SIGKILL)
        served_at_kill = count[0]
        time.sleep(2.0)
        assert count[0] > served_at_kill + 20
        # The supervisor restarts the victim under a new pid and the gateway routes to it again.
        deadline = time.monotonic() + 30
        restarted: dict[str, Any] = {}
        while time.monotonic() < deadline:
            restarted = {p["name"]: p for p in fleet.replicas("light")}["light-0"]
            if restarted["ready"] and restarted["pid"] not in (None, victim["pid"]):
                break
            time.sleep(0.2)
        assert restarted["restarts"] == victim["restarts"] + 1
        assert restarted["ready"]
        pids.clear()
        deadline = time.monotonic() + 10
        while restarted["pid"] not in pids and time.monotonic() < deadline:
            time.sleep(0.1)
        assert restarted["pid"] in pids, "the restarted replica should be back in rotation"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []


def test_config_error_is_reported_naming_the_field(tmp_path: Path) -> None:
    from tests.conftest import run_up, write_config

    config = write_config(
        tmp_path, {"models": {"a": {"class": "echo"}}, "services": {"s": {"models": ["a", "b"]}}}
    )
    result = run_up(config)
    assert result.returncode == 2
    assert "services.s.models[1]: unknown model 'b'" in result.stderr


def test_a_model_that_cannot_load_fails_startup_with_its_log(tmp_path: Path) -> None:
    from tests.conftest import run_up, write_config

    config = write_config(
        tmp_path,
        {"models": {"a": {"class": "echo", "params": {"nope": 1}}}, "services": {"s": {"models": ["a"]}}},
    )
    result = run_up(config)
    assert result.returncode == 2
    assert "models.a.params" in result.stderr


def test_cli_predict_through_the_gateway(fleet: RunningFleet) -> None:
    result = fleet.cli("predict", "sentiment", "what a lovely day")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"]["label"] == "positive"
    raw = fleet.cli("predict", "language", '[{"text": "guten Morgen, wie geht es dir"}]')
    assert json.loads(raw.stdout)["outputs"][0]["language"] == "de"
    missing = fleet.cli("predict", "nope", "x")
    assert missing.returncode == 1
    assert "error 404: model 'nope' is not served" in missing.stderr


def _healthy(fleet: RunningFleet, replica: str) -> bool:
    services = call(f"{fleet.gateway}/v1/fleet").json()["services"]
    return next(r["healthy"] for s in services.values() for r in s["replicas"] if r["name"] == replica)


def _wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_replica_that_stops_answering_leaves_rotation_and_comes_back(fleet: RunningFleet) -> None:
    victim = {p["name"]: p for p in fleet.replicas("light")}["light-1"]
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        # Given a frozen replica (alive, but silent), when health probes time out, it leaves rotation.
        assert _wait_for(lambda: not _healthy(fleet, "light-1"), 10), "frozen replica still in rotation"
        replies = [
            predict(fleet, "sleepy", {"text": "x"}, headers={"x-request-timeout-ms": "3000"})
            for _ in range(20)
        ]
        assert [r.status for r in replies] == [200] * 20
        assert victim["pid"] not in {r.json()["output"]["pid"] for r in replies}
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
    assert _wait_for(lambda: _healthy(fleet, "light-1"), 10), "thawed replica not back in rotation"


def test_readiness_polled_from_the_first_moment_of_up_never_lets_a_predict_fail(tmp_path: Path) -> None:
    # Given a fleet of two services with the gateway's default probe interval, on a known port
    port = free_port()
    config = {
        "gateway": {"port": port},
        "models": {
            "echo": {"class": "echo"},
            "slow": {"class": "mf_test_models:SlowToLoad", "params": {"load_s": 2.0}},
        },
        "services": {"one": {"models": ["echo"]}, "two": {"models": ["slow"], "replicas": 2}},
    }
    models = {"echo": {"text": "hi"}, "slow": {"text": "great"}}
    # When a client polls readiness from before `up` starts, and predicts on every model once ready
    watch = ReadinessWatch(f"http://127.0.0.1:{port}", models).start()
    fleet = start_fleet(tmp_path / "fleet", config)
    try:
        time.sleep(3)
    finally:
        watch.stop()
        fleet.stop()
    assert fleet.up_at is not None
    # Then it saw the fleet not ready at first, ready before or when `up` said so, and then
    # nothing but 200s: no readiness flapping and no failed predict
    before = [p for p in watch.probes if p.what == "ready" and p.at < fleet.up_at]
    assert before, "the watch did not start before the fleet"
    assert before[0].status != 200
    after_up = [p for p in watch.probes if p.what == "ready" and p.at >= fleet.up_at]
    assert after_up
    assert [p for p in after_up if p.status != 200] == []
    assert watch.failures_once_ready() == []
    predicted = {p.what for p in watch.probes if p.what in models and p.status == 200}
    assert predicted == set(models)
