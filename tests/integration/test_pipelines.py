"""Pipelines end to end: real gateway and worker processes, results kept in a real database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RunningFleet, call, start_fleet

MODELS: dict[str, Any] = {
    "language": {"class": "fasttext-language"},
    "sentiment": {"class": "vader-sentiment"},
    "spam": {"class": "mf_test_models:KeywordSpam"},
    "intent": {"class": "mf_test_models:KeywordIntent"},
    "failing": {"class": "mf_test_models:Failing"},
    "sleepy": {"class": "mf_test_models:Sleepy"},
    "sleepy2": {"class": "mf_test_models:Sleepy"},
}

PIPELINES: dict[str, Any] = {
    "triage": {
        "description": "language -> (en) spam -> (ham) intent and sentiment",
        "steps": {
            "language": {"model": "language", "input": {"text": "input.text"}},
            "spam": {"model": "spam", "input": {"text": "input.text"}, "when": "language.language == 'en'"},
            "intent": {"model": "intent", "input": {"text": "input.text"}, "when": "spam.label != 'spam'"},
            "sentiment": {
                "model": "sentiment",
                "input": {"text": "input.text"},
                "when": "spam.label != 'spam'",
            },
        },
        "output": {
            "language": "language.language",
            "spam": "spam.label == 'spam'",
            "intent": "intent.label",
            "sentiment": "sentiment.label",
        },
    },
    "policies": {
        "steps": {
            "skipper": {"model": "failing", "on_error": "skip"},
            "defaulter": {"model": "failing", "on_error": {"default": {"text": "fallback"}}},
            "after": {"model": "sentiment", "input": {"text": "defaulter.text"}},
        },
        "output": {"after": "after.label", "defaulted": "defaulter.text", "skipper": "skipper.text"},
    },
    "strict": {"steps": {"must": {"model": "failing"}}},
    "fanout": {
        "steps": {
            "a": {"model": "sleepy", "input": {"text": "input.text", "sleep_ms": "300"}},
            "b": {"model": "sleepy2", "input": {"text": "input.text", "sleep_ms": "300"}},
        },
        "output": {"a": "a.text", "b": "b.text"},
    },
}

PACKED = {"all": {"models": list(MODELS)}}
SPLIT = {name.replace("_", "-"): {"models": [name]} for name in MODELS}


def _config(services: dict[str, Any], store_url: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "models": MODELS,
        "services": services,
        "pipelines": PIPELINES,
        "gateway": {"health_interval_s": 0.2},
    }
    if store_url:
        config["store_url"] = store_url
    return config


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("packed"), _config(PACKED))
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[RunningFleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("split"), _config(SPLIT, postgres_url))
    yield fleet
    fleet.stop()


def run(fleet: RunningFleet, name: str, body: Any, query: str = "", **kw: Any) -> Any:
    return call(f"{fleet.gateway}/v1/pipelines/{name}{query}", "POST", body, **kw)


TEXTS = [
    {"text": "Where is my new card? It still has not arrived"},
    {"text": "Bonjour, je voudrais changer mon code secret"},
    {"text": "WIN a free cruise now, reply YES to claim"},
    {"text": "This refund process is terrible and slow"},
]


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": result["status"],
        "output": result["output"],
        "steps": {n: (s["status"], s["reason"], s["output"]) for n, s in result["steps"].items()},
    }


def test_english_ham_visits_every_step_and_is_stored(packed: RunningFleet) -> None:
    reply = run(packed, "triage", TEXTS[0])
    assert reply.status == 200, reply.body
    result = reply.json()
    assert result["output"] == {
        "language": "en",
        "spam": False,
        "intent": "card_arrival",
        "sentiment": "neutral",
    }
    assert result["skipped"] == {}
    assert all(step["duration_ms"] >= 0 and step["status"] == "ok" for step in result["steps"].values())
    assert result["model_versions"] == {"language": "1", "spam": "1", "intent": "1", "sentiment": "1"}
    assert result["stored"] is True
    stored = call(f"{packed.gateway}/v1/runs/{result['run_id']}").json()
    assert stored["pipeline"] == "triage"
    assert stored["input"] == TEXTS[0]
    assert stored["output"] == result["output"]
    assert [s["name"] for s in stored["steps"]] == list(result["steps"])


def test_non_english_and_spam_skip_the_steps_they_should(packed: RunningFleet) -> None:
    french = run(packed, "triage", TEXTS[1]).json()
    assert french["output"] == {"language": "fr", "spam": False, "intent": None, "sentiment": None}
    assert french["skipped"] == {
        "spam": "condition is false: language.language == 'en'",
        "intent": "needs skipped step 'spam'",
        "sentiment": "needs skipped step 'spam'",
    }
    spam = run(packed, "triage", TEXTS[2]).json()
    assert spam["output"]["spam"] is True
    assert set(spam["skipped"]) == {"intent", "sentiment"}
    assert spam["steps"]["intent"]["reason"] == "condition is false: spam.label != 'spam'"


def test_same_results_under_both_placements(packed: RunningFleet, split: RunningFleet) -> None:
    packed_units = call(f"{packed.gateway}/v1/pipelines/triage").json()["units"]
    split_units = call(f"{split.gateway}/v1/pipelines/triage").json()["units"]
    assert packed_units == [{"service": "all", "steps": ["language", "spam", "intent", "sentiment"]}]
    assert len(split_units) == 4
    for text in TEXTS:
        a = run(packed, "triage", text).json()
        b = run(split, "triage", text).json()
        assert _comparable(a) == _comparable(b)
    batch_a = run(packed, "triage", TEXTS).json()["results"]
    batch_b = run(split, "triage", TEXTS).json()["results"]
    assert [_comparable(r) for r in batch_a] == [_comparable(r) for r in batch_b]
    assert [r["output"]["language"] for r in batch_a] == ["en", "fr", "en", "en"]


def test_independent_steps_run_in_parallel(split: RunningFleet) -> None:
    started = time.monotonic()
    reply = run(split, "fanout", {"text": "x"})
    elapsed = time.monotonic() - started
    assert reply.status == 200, reply.body
    assert reply.json()["output"] == {"a": "x", "b": "x"}
    assert elapsed < 0.55, f"two 300 ms steps took {elapsed:.2f}s: not concurrent"


def test_error_policies(packed: RunningFleet) -> None:
    result = run(packed, "policies", {"text": "boom"}).json()
    assert result["status"] == "succeeded"
    assert result["steps"]["skipper"]["status"] == "skipped"
    assert "asked to fail" in result["steps"]["skipper"]["reason"]
    assert result["steps"]["defaulter"]["status"] == "defaulted"
    assert result["output"] == {"after": "neutral", "defaulted": "fallback", "skipper": None}
    strict = run(packed, "strict", {"text": "boom"})
    assert strict.status == 502
    body = strict.json()
    assert body["status"] == "failed"
    assert body["error"].startswith("step 'must' failed: model 'failing'")
    stored = call(f"{packed.gateway}/v1/runs/{body['run_id']}").json()
    assert stored["status"] == "failed"
    assert stored["error"] == body["error"]


@pytest.mark.parametrize(
    ("name", "body", "status", "fragment"),
    [
        ("nope", {"text": "x"}, 404, "pipeline 'nope' is not defined"),
        ("triage", "{broken", 400, "malformed JSON"),
        ("triage", "7", 422, "must be a JSON object"),
        ("triage", [], 422, "empty"),
        ("triage", [{"text": "ok"}, 3], 422, "input [1] must be a JSON object"),
        ("triage", {"body": "no text field"}, 422, "step 'language' failed: cannot evaluate its expressions"),
        (
            "triage",
            {"text": 42},
            422,
            "step 'language' failed: invalid input for model 'language': [0].text: Input should be",
        ),
    ],
)
def test_bad_pipeline_input(packed: RunningFleet, name: str, body: Any, status: int, fragment: str) -> None:
    reply = run(packed, name, body)
    assert reply.status == status, reply.body
    message = reply.json().get("error") or ""
    assert fragment in message
    assert run(packed, "triage", TEXTS[0]).status == 200


def test_opting_out_of_storage(packed: RunningFleet) -> None:
    result = run(packed, "triage", TEXTS[0], query="?store=false").json()
    assert result["stored"] is False
    assert call(f"{packed.gateway}/v1/runs/{result['run_id']}").status == 404


def test_runs_are_listed_newest_first_and_paged(split: RunningFleet) -> None:
    ids = [run(split, "triage", {"text": f"card question {i}"}).json()["run_id"] for i in range(5)]
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        page = call(f"{split.gateway}/v1/runs?pipeline=triage&limit=2{cursor}").json()
        seen.extend(r["id"] for r in page["runs"])
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen[:5] == ids[::-1]
    assert len(seen) == len(set(seen))
    assert call(f"{split.gateway}/v1/runs?limit=0").status == 400
    assert call(f"{split.gateway}/v1/runs?since=yesterday").status == 400


def test_pipelines_are_described(packed: RunningFleet) -> None:
    listing = call(f"{packed.gateway}/v1/pipelines").json()["pipelines"]
    assert {p["name"] for p in listing} == set(PIPELINES)
    triage = next(p for p in listing if p["name"] == "triage")
    assert ["language", "spam"] in triage["edges"]
    assert triage["steps"][1]["when"] == "language.language == 'en'"
    assert call(f"{packed.gateway}/v1/pipelines/nope").status == 404


def test_runs_are_readable_from_the_cli(packed: RunningFleet) -> None:
    run_id = run(packed, "triage", TEXTS[1]).json()["run_id"]
    listing = packed.cli("runs", "--pipeline", "triage", "--limit", "3", "--json")
    assert listing.returncode == 0, listing.stderr
    assert run_id in [r["id"] for r in json.loads(listing.stdout)["runs"]]
    shown = packed.cli("runs", "--id", run_id)
    assert shown.returncode == 0
    record = json.loads(shown.stdout)
    assert record["output"]["language"] == "fr"
    assert {s["name"]: s["status"] for s in record["steps"]}["spam"] == "skipped"
    table = packed.cli("runs", "--limit", "2")
    assert "spam,intent,sentiment" in table.stdout
    assert packed.cli("runs", "--id", "nope").returncode == 1


def _sql(url: str, query: str, *args: Any) -> list[Any]:
    import asyncpg

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_runs_are_in_the_postgresql_database(split: RunningFleet, postgres_url: str) -> None:
    result = run(split, "triage", TEXTS[2]).json()
    (row,) = _sql(
        postgres_url, "SELECT pipeline, status, output::text FROM runs WHERE id = $1", result["run_id"]
    )
    assert (row["pipeline"], row["status"]) == ("triage", "succeeded")
    assert json.loads(row["output"])["spam"] is True
    steps = _sql(
        postgres_url,
        "SELECT name, status, reason FROM run_steps WHERE run_id = $1 ORDER BY position",
        result["run_id"],
    )
    assert [(s["name"], s["status"]) for s in steps] == [
        ("language", "ok"),
        ("spam", "ok"),
        ("intent", "skipped"),
        ("sentiment", "skipped"),
    ]


def test_a_failed_store_write_is_reported_and_the_answer_still_given(
    fleet_factory: Any, postgres_url: str
) -> None:
    fleet = fleet_factory(_config(PACKED, postgres_url), name="store-down")
    assert run(fleet, "triage", TEXTS[0]).json()["stored"] is True
    database = postgres_url.rsplit("/", 1)[1]
    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    _sql(admin, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        _sql(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        # Given the database refuses connections, when a pipeline runs, then the answer comes back
        # and says plainly that the run was not stored.
        reply = run(fleet, "triage", TEXTS[0])
        assert reply.status == 200
        result = reply.json()
        assert result["output"]["intent"] == "card_arrival"
        assert result["stored"] is False
        assert result["store_error"].startswith("the run was not stored")
    finally:
        _sql(admin, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    assert run(fleet, "triage", TEXTS[0]).json()["stored"] is True


def test_up_refuses_a_bad_pipeline_naming_pipeline_and_step(tmp_path: Any) -> None:
    from tests.conftest import run_up, write_config

    bad = {"steps": {"a": {"model": "language"}, "b": {"model": "sentiment", "when": "a.language = 'en'"}}}
    config = write_config(tmp_path, {**_config(PACKED), "pipelines": {"broken": bad}})
    result = run_up(config)
    assert result.returncode == 2
    assert "pipelines.broken.steps.b.when: bad expression" in result.stderr


def test_jobs_are_refused_plainly_when_the_fleet_has_no_job_worker(packed: RunningFleet) -> None:
    reply = call(f"{packed.gateway}/v1/jobs", "POST", {"pipeline": "triage", "input": {"text": "x"}})
    assert reply.status == 503
    assert "no job-worker service" in reply.json()["error"]
