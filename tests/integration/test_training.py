"""Training, the registry and serving together, on a real fleet: bootstrap, train, hot switch, rollback.

One fleet serves a registry-backed ``spam`` classifier (bootstrapped from a slice of the SMS data
on first start) beside a trainer service. Load runs through every switch of the production alias
and must see no failed request.
"""

from __future__ import annotations

import csv
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningFleet, call, start_fleet

SMS = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "sms-spam-collection" / "SMSSpamCollection.tsv"
)
SPAM_TEXT = "WINNER!! You have been selected for a free prize. Call 09061701461 now to claim"


def _sms_slice(path: Path, rows: int = 1500) -> None:
    with (
        SMS.open(encoding="utf-8", newline="") as source,
        path.open("w", encoding="utf-8", newline="") as out,
    ):
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for index, row in enumerate(csv.reader(source, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if index >= rows:
                break
            writer.writerow([row[1], row[0]])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    folder = tmp_path_factory.mktemp("training")
    data = folder / "sms.csv"
    _sms_slice(data)
    config: dict[str, Any] = {
        "models": {
            "spam": {
                "class": "trained-classifier",
                "registry": {
                    "alias": "production",
                    "bootstrap": {"dataset": str(data), "trainer": "tfidf-logreg", "test_fraction": 0.2},
                },
            },
        },
        "services": {"light": {"models": ["spam"]}, "train": {"kind": "trainer"}},
        "training": {"registry_poll_s": 0.2},
    }
    fleet = start_fleet(folder / "fleet", config)
    try:
        yield fleet
    finally:
        fleet.stop()


class Load:
    """Requests to the spam model from two threads until stopped; records versions and failures."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = call(f"{self.gateway}/v1/models/spam/predict", "POST", {"text": SPAM_TEXT})
            if reply.status != 200:
                self.failures.append(f"{reply.status}: {reply.body[:200]!r}")
            else:
                self.versions[reply.json()["version"]] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _wait_job(fleet: RunningFleet, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = call(f"{fleet.gateway}/v1/training/jobs/{job_id}", "GET").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"training job {job_id} did not finish in {timeout_s}s")


def _serving(fleet: RunningFleet) -> str:
    reply = call(f"{fleet.gateway}/v1/models/spam/predict", "POST", {"text": SPAM_TEXT})
    assert reply.status == 200, reply.body
    return str(reply.json()["version"])


def _wait_serving(fleet: RunningFleet, version: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _serving(fleet) != version:
        assert time.monotonic() < deadline, f"the worker never switched to version {version}"
        time.sleep(0.1)


def test_bootstrap_trained_and_promoted_the_first_version(fleet: RunningFleet) -> None:
    assert any("bootstrap: spam version 1 is production" in line for line in fleet.output), fleet.output
    reply = call(f"{fleet.gateway}/v1/models/spam/predict", "POST", {"text": SPAM_TEXT})
    assert reply.status == 200
    assert reply.json()["output"]["label"] == "spam"
    model = call(f"{fleet.gateway}/v1/registry/models/spam", "GET").json()
    assert model["aliases"]["production"] == "1"
    first = call(f"{fleet.gateway}/v1/registry/models/spam/versions/1", "GET").json()
    assert first["dataset"].startswith("spam-train@")
    assert first["metrics"]["macro_f1"] > 0.8


def test_train_promote_switch_and_rollback_under_load_without_errors(fleet: RunningFleet) -> None:
    with Load(fleet.gateway) as load:
        submitted = call(
            f"{fleet.gateway}/v1/training/jobs",
            "POST",
            {
                "model": "spam",
                "dataset": "spam-train",
                "trainer": "tfidf-logreg",
                "params": {"C": 3, "test_fraction": 0.25},
                "promote": {"alias": "production"},
            },
        )
        assert submitted.status == 202, submitted.body
        job = _wait_job(fleet, submitted.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1.0
        new = job["version"]
        assert new != "1"
        assert job["metrics"]["accuracy"] > 0.8
        _wait_serving(fleet, new)
        time.sleep(0.5)
        rolled = call(f"{fleet.gateway}/v1/registry/models/spam/aliases/production/rollback", "POST", {})
        assert rolled.status == 200, rolled.body
        _wait_serving(fleet, "1")
        time.sleep(0.5)
    assert load.failures == []
    assert load.versions["1"] > 0, load.versions
    assert load.versions[new] > 0, load.versions


def test_failed_training_is_recorded_and_production_is_untouched(fleet: RunningFleet) -> None:
    before = call(f"{fleet.gateway}/v1/registry/models/spam/aliases/production", "GET").json()
    # A dataset without the label column the trainer needs: ingested fine, refused by training.
    table = fleet.config.parent / "texts.csv"
    table.write_text("text\nhello\nwin a prize now\n", encoding="utf-8")
    ingest = fleet.cli("lake", "ingest", str(table), "--dataset", "texts-only")
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    submitted = call(
        f"{fleet.gateway}/v1/training/jobs",
        "POST",
        {"model": "spam", "dataset": "texts-only", "promote": {"alias": "production"}},
    )
    assert submitted.status == 202, submitted.body
    job = _wait_job(fleet, submitted.json()["id"])
    assert job["status"] == "failed"
    assert "label column 'label' not found" in job["error"]
    after = call(f"{fleet.gateway}/v1/registry/models/spam/aliases/production", "GET").json()
    assert after == before


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "spam"}, 422, "'dataset' is required"),
        ({"model": "spam", "dataset": "no-such-data"}, 404, "no dataset named 'no-such-data'"),
        ({"model": "spam", "dataset": "spam-train", "trainer": "magic"}, 422, "unknown trainer 'magic'"),
        ({"model": "spam", "dataset": "spam-train", "promote": "yes"}, 422, "'promote' must be an object"),
        ({"model": "spam", "dataset": "spam-train", "colour": 1}, 422, "unknown field(s): colour"),
    ],
)
def test_bad_training_requests_are_refused_with_the_reason(
    fleet: RunningFleet, body: dict[str, Any], status: int, message: str
) -> None:
    reply = call(f"{fleet.gateway}/v1/training/jobs", "POST", body)
    assert reply.status == status, reply.body
    assert message in reply.json()["error"]
