"""Stream services in fleet.yaml, the plan and the supervisor's command lines; message bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelfleet.errors import ConfigError
from modelfleet.plan import Endpoint, FleetPlan
from modelfleet.settings import settings_from_dict
from modelfleet.stream.service import BadMessage, decode_message
from modelfleet.supervisor.supervisor import Supervisor, make_plan

STREAM = {"url": "redis://127.0.0.1:6379/0", "input": "events", "output": "scores", "model": "a"}


def fleet(stream: dict[str, Any] | None = None, **service: Any) -> dict[str, Any]:
    return {
        "models": {"a": {"class": "echo"}},
        "pipelines": {"p": {"steps": {"s": {"model": "a"}}}},
        "services": {
            "light": {"models": ["a"]},
            "events": {"kind": "stream", "stream": STREAM if stream is None else stream, **service},
        },
    }


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, source="fleet.yaml")
    return str(info.value)


def test_a_stream_service_gets_defaults_from_its_name() -> None:
    settings = settings_from_dict(fleet())
    stream = settings.services["events"].stream
    assert stream is not None
    assert (stream.max_in_flight, stream.max_attempts, stream.group) == (16, 5, None)
    assert stream.dead_letter_topic == "scores.dead"
    custom = settings_from_dict(fleet({**STREAM, "dead_letter": "rejects", "group": "g1"}))
    assert custom.services["events"].stream is not None
    assert custom.services["events"].stream.dead_letter_topic == "rejects"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (fleet({**STREAM, "model": None}), "services.events.stream: give exactly one target"),
        (fleet({**STREAM, "pipeline": "p"}), "services.events.stream: give exactly one target"),
        (fleet({**STREAM, "model": "nope"}), "services.events.stream.model: 'nope' is not a model hosted"),
        (
            fleet({**STREAM, "model": None, "pipeline": "q"}),
            "stream.pipeline: unknown pipeline 'q' (known: p)",
        ),
        (fleet({**STREAM, "output": "events"}), "output must differ from input"),
        (fleet({**STREAM, "dead_letter": "scores"}), "dead_letter must differ"),
        (fleet({**STREAM, "url": "kafka://x:9092"}), "services.events.stream.url"),
        (fleet({**STREAM, "max_in_flight": 0}), "services.events.stream.max_in_flight"),
        (fleet({**STREAM, "group": "a b"}), "services.events.stream.group"),
        (fleet({**STREAM, "topic": "x"}), "services.events.stream.topic"),
        (fleet(models=["a"]), "a stream service hosts no models"),
    ],
)
def test_a_bad_stream_section_is_refused_naming_the_field(data: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(data)


def test_kind_and_stream_section_go_together() -> None:
    data = fleet()
    del data["services"]["events"]["stream"]
    assert "needs a 'stream' section" in error_of(data)
    data = fleet()
    data["services"]["light"]["stream"] = STREAM
    assert "services.light: Value error" not in error_of(data)
    assert "'stream' is only for services of kind: stream" in error_of(data)


def test_a_model_that_no_service_hosts_cannot_be_a_target() -> None:
    data = fleet()
    data["models"]["b"] = {"class": "echo"}
    data["services"]["events"]["stream"] = {**STREAM, "model": "b"}
    assert "'b' is not a model hosted by any service (hosted: a)" in error_of(data)


def test_stream_services_are_planned_apart_and_started_with_their_own_command(tmp_path: Path) -> None:
    data = fleet(replicas=2)
    data["supervisor"] = {"run_dir": str(tmp_path / "run")}
    data["gateway"] = {"port": 0}
    settings = settings_from_dict(data)
    plan = make_plan(settings)
    assert set(plan.services) == {"light"}
    assert plan.job_workers == {}
    assert len(plan.streams["events"]) == 2
    supervisor = Supervisor(settings, tmp_path / "fleet.yaml")
    supervisor._prepare()
    try:
        argvs = {c.state.name: c.argv for c in supervisor._children}
        events_1 = argvs["events-1"]
        assert supervisor.plan is not None
        port = str(supervisor.plan.streams["events"][1].port)
        assert events_1[3:8] == ["stream", "--service", "events", "--port", port]
        assert events_1[events_1.index("--replica") + 1] == "1"
        assert argvs["events-0"][argvs["events-0"].index("--replica") + 1] == "0"
        assert "--plan" in argvs["events-1"]
        assert "--replica" not in argvs["light-0"]
        assert {c.state.role for c in supervisor._children} == {"worker", "stream", "gateway"}
    finally:
        supervisor.stop()


def test_a_plan_written_before_streams_existed_still_reads() -> None:
    plan = FleetPlan(Endpoint("127.0.0.1", 8000), streams={"events": [Endpoint("127.0.0.1", 9001)]})
    assert FleetPlan.from_json(plan.to_json()) == plan
    old = json.loads(plan.to_json())
    del old["streams"]
    assert FleetPlan.from_json(json.dumps(old)).streams == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"text": "hi"}', ("m-1", {"text": "hi"})),
        (b'{"id": "a7", "input": {"text": "hi"}}', ("a7", {"text": "hi"})),
        (b'{"id": 12, "input": {"text": "hi"}}', (12, {"text": "hi"})),
        (b'{"input": {"text": "hi"}}', ("m-1", {"text": "hi"})),
        # not an envelope: other keys too, so the whole object is the input
        (b'{"id": 1, "input": "x", "text": "hi"}', ("m-1", {"id": 1, "input": "x", "text": "hi"})),
    ],
)
def test_a_body_is_an_input_or_an_envelope(body: bytes, expected: tuple[Any, dict[str, Any]]) -> None:
    assert decode_message(body, "m-1") == expected


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json at all", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "not str"),
        (b'{"id": [1], "input": {}}', "'id' must be a string or an integer"),
        (b'{"id": true, "input": {}}', "'id' must be a string or an integer"),
        (b'{"id": "a", "input": [1]}', "'input' must be a JSON object, not list"),
    ],
)
def test_a_body_that_is_no_input_says_why(body: bytes, fragment: str) -> None:
    with pytest.raises(BadMessage, match=fragment) as raised:
        decode_message(body, "m-1")
    # Only an envelope whose id could be read keeps it; anything else is known by the message id.
    assert raised.value.record_id == ("a" if body.startswith(b'{"id": "a"') else "m-1")
