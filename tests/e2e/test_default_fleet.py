"""The shipped fleet.yaml, as a newcomer starts it: every built-in model answers in both APIs."""

from __future__ import annotations

import math
import time

import pytest

from tests.conftest import ReadinessWatch, RunningFleet, call
from tests.e2e.conftest import DEFAULT_MODELS

pytestmark = pytest.mark.real_weights


def test_readiness_from_the_first_moment_of_up_tells_the_truth(
    default_start: tuple[RunningFleet, ReadinessWatch],
) -> None:
    fleet, watch = default_start
    assert fleet.up_at is not None
    readiness = [p for p in watch.probes if p.what == "ready"]
    assert readiness[0].status != 200, "the watch started after the gateway was already ready"
    assert [p for p in readiness if p.at >= fleet.up_at and p.status != 200] == []
    # Once the gateway said ready, every readiness answer and every predict was a 200
    assert watch.failures_once_ready() == []
    answered = {p.what for p in watch.probes if p.status == 200}
    assert answered >= set(DEFAULT_MODELS)


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_default_fleet_has_two_services_as_configured(default_fleet: RunningFleet) -> None:
    workers = {p["service"]: p for p in default_fleet.status()["processes"] if p["role"] == "worker"}
    assert workers["light"]["models"] == ["sentiment", "language", "spam"]
    assert workers["embed"]["models"] == ["embedder", "intent"]
    assert workers["light"]["pid"] != workers["embed"]["pid"]


def test_every_builtin_model_answers_plain_json(default_fleet: RunningFleet) -> None:
    gw = default_fleet.gateway
    sentiment = call(f"{gw}/v1/models/sentiment/predict", "POST", {"text": "The app is terrible and slow."})
    assert sentiment.json()["output"]["label"] == "negative"
    language = call(f"{gw}/v1/models/language/predict", "POST", {"text": "¿Dónde está mi tarjeta nueva?"})
    assert language.json()["output"]["language"] == "es"
    texts = ["How do I reset my card PIN?", "I forgot my PIN number", "The weather is lovely today"]
    reply = call(f"{gw}/v1/models/embedder/predict", "POST", [{"text": t} for t in texts])
    assert reply.status == 200, reply.body
    vectors = [o["embedding"] for o in reply.json()["outputs"]]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.2


def test_every_builtin_model_answers_the_inference_protocol(default_fleet: RunningFleet) -> None:
    gw = default_fleet.gateway
    request = {
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good day", "bonjour"]}]
    }
    for model in ("sentiment", "language", "embedder"):
        assert call(f"{gw}/v2/models/{model}/ready").status == 200
        reply = call(f"{gw}/v2/models/{model}/versions/1/infer", "POST", request)
        assert reply.status == 200, (model, reply.body)
        assert reply.json()["model_name"] == model
    embedding = call(f"{gw}/v2/models/embedder/infer", "POST", request).json()["outputs"][0]
    assert embedding["datatype"] == "FP32"
    assert embedding["shape"] == [2, 384]
    assert len(embedding["data"]) == 768
    meta = call(f"{gw}/v2/models/embedder").json()
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}]


def test_default_triage_pipeline(default_fleet: RunningFleet) -> None:
    gw = default_fleet.gateway
    english = call(
        f"{gw}/v1/pipelines/triage", "POST", {"text": "My card payment was declined again, awful!"}
    )
    assert english.status == 200, english.body
    result = english.json()
    assert result["output"]["language"] == "en"
    assert result["output"]["spam"] is False
    assert result["output"]["intent"] == "declined_card_payment"
    assert result["output"]["sentiment"] == "negative"
    assert result["skipped"] == {}
    assert set(result["model_versions"]) == {"language", "spam", "intent", "sentiment"}
    french = call(
        f"{gw}/v1/pipelines/triage", "POST", {"text": "Ma carte ne fonctionne plus depuis hier"}
    ).json()
    assert french["output"]["english"] is False
    assert set(french["skipped"]) == {"spam", "intent", "sentiment"}
    spam = call(
        f"{gw}/v1/pipelines/triage",
        "POST",
        {"text": "WINNER!! You have won a 1000 pound cash prize. Call 09061701461 now to claim"},
    ).json()
    assert spam["output"]["spam"] is True
    assert set(spam["skipped"]) == {"intent", "sentiment"}
    assert "spam.label == 'ham'" in spam["skipped"]["intent"]
    assert call(f"{gw}/v1/runs/{result['run_id']}").json()["status"] == "succeeded"


def test_built_in_trained_models_meet_their_quality_bars(default_fleet: RunningFleet) -> None:
    gw = default_fleet.gateway
    # The alias answers with the whole version it points at: metrics, dataset lineage, params.
    intent = call(f"{gw}/v1/registry/models/intent/aliases/production").json()["version"]
    spam = call(f"{gw}/v1/registry/models/spam/aliases/production").json()["version"]
    assert intent["metrics"]["accuracy"] >= 0.92, intent
    assert spam["metrics"]["macro_f1"] >= 0.95, spam
    assert intent["dataset"].startswith("intent-train@")
    assert intent["params"]["test_dataset"].startswith("intent-test@")


def test_default_fleet_runs_jobs(default_fleet: RunningFleet) -> None:
    gw = default_fleet.gateway
    reply = call(
        f"{gw}/v1/jobs", "POST", {"pipeline": "triage", "inputs": [{"text": "great app"}, {"text": "merci"}]}
    )
    assert reply.status == 202, reply.body
    job_id = reply.json()["job_id"]
    deadline = time.monotonic() + 60
    job = call(f"{gw}/v1/jobs/{job_id}").json()
    while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = call(f"{gw}/v1/jobs/{job_id}").json()
    assert job["status"] == "completed", job
    assert [r["output"]["language"] for r in job["results"]] == ["en", "fr"]
