"""Rollouts end to end: a real fleet serving two registered versions of a trained classifier.

Two TF-IDF classifiers are trained on different data, stored in the fleet's lake and registered
(production -> 1, canary -> 2) before the fleet starts. The worker follows the registry and loads
every version the rollout names; the gateway splits, shadows and rolls back. Rollouts are changed
with the `modelfleet` CLI, as an operator would.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as tritonhttp

from modelfleet.lake import Lake
from modelfleet.registry import make_registry
from modelfleet.training import get_trainer, save_classifier
from tests.conftest import Reply, RunningFleet, call, start_fleet

MODEL = "intent"
WORDS = {
    "billing": ["invoice", "refund", "charge", "payment", "bill", "fee"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "shipment", "package"],
    "account": ["password", "login", "username", "profile", "email", "locked"],
}
FILLER = ["my", "the", "please", "help", "with", "about", "question", "today"]


def examples(per_class: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(per_class):
        for label, words in WORDS.items():
            texts.append(" ".join(rng.sample(words, 2) + rng.sample(FILLER, 2)))
            labels.append(label)
    return texts, labels


def register_two_versions(directory: Path, data_dir: Path, store_url: str) -> None:
    """Train two classifiers on different samples, put them in the lake, register them as 1 and 2."""
    lake = Lake(str(data_dir / "lake"))

    async def register() -> None:
        registry = make_registry(store_url)
        await registry.open()
        try:
            for number, (per_class, seed) in enumerate([(12, 1), (30, 2)], start=1):
                texts, labels = examples(per_class, seed)
                folder = directory / f"artifact-{number}"
                save_classifier(get_trainer("tfidf-logreg").fit(texts, labels), folder)
                uri = lake.put_artifact(MODEL, str(number), folder)
                version = await registry.register(MODEL, uri, "tfidf-logreg", {}, {}, None)
                assert version.version == str(number)
            await registry.set_alias(MODEL, "production", "1")
            await registry.set_alias(MODEL, "canary", "2")
        finally:
            await registry.close()

    asyncio.run(register())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    directory = tmp_path_factory.mktemp("rollouts")
    data_dir = directory / "data"
    data_dir.mkdir()
    store_url = f"sqlite:///{data_dir / 'modelfleet.db'}"
    register_two_versions(directory, data_dir, store_url)
    config = {
        "data_dir": str(data_dir),
        "store_url": store_url,
        "models": {MODEL: {"class": "trained-classifier", "registry": {"alias": "production"}}},
        "services": {"svc": {"models": [MODEL], "replicas": 2}},
        "gateway": {"rollout_poll_s": 0.2},
        "training": {"registry_poll_s": 0.2},
    }
    running = start_fleet(directory / "fleet", config)
    yield running
    running.stop()


def cli(fleet: RunningFleet, *args: str) -> str:
    result = fleet.cli(*args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def rollout_of(fleet: RunningFleet) -> dict[str, Any] | None:
    listing = call(f"{fleet.gateway}/v1/rollouts").json()
    return next((r for r in listing["rollouts"] if r["model"] == MODEL), None)


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def wait_until_every_replica_loaded(fleet: RunningFleet, version: str) -> None:
    """Wait until each worker replica (asked directly, not through the gateway) serves ``version``."""
    urls = [r["url"] for r in fleet.replicas("svc")]
    assert len(urls) == 2

    def loaded() -> bool:
        return all(call(f"{url}/v2/models/{MODEL}/versions/{version}/ready").status == 200 for url in urls)

    wait_until(f"every replica loaded version {version}", loaded)


def predict(fleet: RunningFleet, text: str, headers: dict[str, str] | None = None) -> Reply:
    return call(f"{fleet.gateway}/v1/models/{MODEL}/predict", "POST", {"text": text}, headers)


def many(fleet: RunningFleet, texts: list[str], headers: dict[str, str] | None = None) -> list[Reply]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda text: predict(fleet, text, headers), texts))


TEXTS = examples(70, seed=99)[0][:200]


def test_a_90_10_split_serves_both_versions_in_proportion_without_failures(fleet: RunningFleet) -> None:
    routes = ["--route", "production=90", "--route", "canary=10"]
    cli(fleet, "rollout", "set", MODEL, *routes, "--sticky-header", "x-user-id")
    wait_until_every_replica_loaded(fleet, "2")
    wait_until("the gateway routes the rollout", lambda: (rollout_of(fleet) or {}).get("active") is True)
    before = rollout_of(fleet)
    assert before is not None

    replies = many(fleet, [TEXTS[n % len(TEXTS)] for n in range(1000)])
    assert [r.status for r in replies if r.status != 200] == []
    served = Counter(r.headers["x-model-version"] for r in replies)
    assert all(r.json()["version"] == r.headers["x-model-version"] for r in replies)
    assert set(served) == {"1", "2"}
    sigma = math.sqrt(1000 * 0.1 * 0.9)
    assert abs(served["2"] - 100) <= 4 * sigma, served

    # The gateway's counters saw the same split, with no errors and no fallbacks.
    after = rollout_of(fleet)
    assert after is not None
    for version in ("1", "2"):
        counts = after["versions"][version]
        previous = before["versions"].get(version, {"requests": 0})["requests"]
        assert counts["requests"] - previous == served[version]
        assert counts["errors"] == counts["fallbacks"] == 0

    # One user sees one version.
    sticky = many(fleet, TEXTS[:50], {"x-user-id": "user-42"})
    assert len({r.headers["x-model-version"] for r in sticky}) == 1


def test_shadow_never_changes_the_answer_and_is_counted(fleet: RunningFleet) -> None:
    cli(fleet, "rollout", "set", MODEL, "--route", "production=100")
    wait_until("the gateway routes all to production", lambda: _routes(fleet) == [("production", "1", 100)])
    plain = many(fleet, TEXTS[:100])

    cli(fleet, "rollout", "set", MODEL, "--route", "production=100", "--shadow", "canary")
    wait_until_every_replica_loaded(fleet, "2")
    wait_until("the gateway shadows to version 2", lambda: _shadow_version(fleet) == "2")
    before = _shadow_total(fleet)
    shadowed = many(fleet, TEXTS[:100])

    assert [(r.status, r.body) for r in shadowed] == [(r.status, r.body) for r in plain]
    assert all(r.headers["x-model-version"] == "1" for r in shadowed)
    wait_until("every shadow copy is counted", lambda: _shadow_total(fleet) - before == 100)
    outcomes = (rollout_of(fleet) or {})["shadow_outcomes"]["2"]
    assert outcomes["error"] == outcomes["dropped"] == 0
    # Different training data: the versions' probabilities differ, and the comparison sees it.
    assert outcomes["differ"] > 0
    metrics = call(f"{fleet.gateway}/metrics").body.decode()
    assert 'modelfleet_gateway_shadow_total{model="intent",outcome="differ",version="2"}' in metrics


def test_binary_tensor_requests_follow_the_rollout_and_their_shadows_compare(fleet: RunningFleet) -> None:
    # Given a shadowed rollout, and Triton's client with its defaults (binary inputs and outputs)
    cli(fleet, "rollout", "set", MODEL, "--route", "production=100", "--shadow", "canary")
    wait_until_every_replica_loaded(fleet, "2")
    wait_until("the gateway shadows to version 2", lambda: _shadow_version(fleet) == "2")
    before = (rollout_of(fleet) or {})["shadow_outcomes"].get("2", {})
    url = fleet.gateway.removeprefix("http://")
    texts = TEXTS[:20]
    with tritonhttp.InferenceServerClient(url) as client:
        tensor = tritonhttp.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        results = [client.infer(MODEL, [tensor]) for _ in range(10)]
    # Then the primary answers in binary, and each shadow copy is compared, never an error
    plain = call(f"{fleet.gateway}/v1/models/{MODEL}/predict", "POST", [{"text": t} for t in texts]).json()
    for result in results:
        assert result.get_response()["model_version"] == "1"
        labels = [v.decode() for v in result.as_numpy("label").tolist()]
        assert labels == [out["label"] for out in plain["outputs"]]

    def counted() -> int:
        now = (rollout_of(fleet) or {})["shadow_outcomes"]["2"]
        return sum(now.get(k, 0) - before.get(k, 0) for k in ("agree", "differ", "error", "dropped"))

    wait_until("every binary shadow copy is counted", lambda: counted() == 10)
    outcomes = (rollout_of(fleet) or {})["shadow_outcomes"]["2"]
    assert outcomes["error"] == before.get("error", 0)
    assert outcomes["dropped"] == before.get("dropped", 0)


def test_rollback_sends_everything_to_production(fleet: RunningFleet) -> None:
    cli(fleet, "rollout", "set", MODEL, "--route", "production=50", "--route", "canary=50")
    wait_until_every_replica_loaded(fleet, "2")
    wait_until("the gateway routes 50/50", lambda: len(_routes(fleet)) == 2)
    assert {r.headers.get("x-model-version") for r in many(fleet, TEXTS[:100])} == {"1", "2"}

    out = cli(fleet, "rollback", MODEL)
    assert "cleared the rollout" in out
    assert "all traffic goes to production (v1)" in out
    wait_until("the gateway has no rollout for the model", lambda: rollout_of(fleet) is None)
    replies = many(fleet, TEXTS[:200])
    assert [r.status for r in replies if r.status != 200] == []
    assert {r.json()["version"] for r in replies} == {"1"}
    assert all("x-model-version" not in r.headers for r in replies)
    shown = cli(fleet, "rollout", "show", MODEL)
    assert "no rollout; all traffic goes to production (v1)" in shown


def _routes(fleet: RunningFleet) -> list[tuple[str, str | None, int]]:
    rollout = rollout_of(fleet)
    if rollout is None or not rollout["active"]:
        return []
    return [(r["ref"], r["version"], r["weight"]) for r in rollout["routes"]]


def _shadow_version(fleet: RunningFleet) -> str | None:
    shadow = (rollout_of(fleet) or {}).get("shadow") or {}
    return shadow.get("version")


def _shadow_total(fleet: RunningFleet) -> int:
    rollout = rollout_of(fleet)
    outcomes = (rollout or {}).get("shadow_outcomes", {}).get("2", {})
    return sum(outcomes.get(name, 0) for name in ("agree", "differ", "error", "dropped"))
