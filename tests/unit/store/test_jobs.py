"""Job records: JSON output, the checks made when one is built, and choosing a job store by URL."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import modelfleet.errors
from modelfleet.errors import ConfigError
from modelfleet.store import Job, JobNotFound, JobRejected, JobResult, StoreError, make_job_store
from modelfleet.store.jobs import TERMINAL
from modelfleet.store.sql_jobs import SqlJobStore

T0 = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def a_job(**changes: Any) -> Job:
    job = Job(
        id="j1",
        target_kind="model",
        target="sentiment",
        status="in_progress",
        total=8,
        done=2,
        failed=1,
        callback_url="https://example.com/hook",
        error=None,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        finished_at=None,
    )
    return replace(job, **changes)


def test_a_job_becomes_a_json_ready_dict_with_its_progress() -> None:
    finished = a_job(status="failed", done=8, finished_at=T0 + timedelta(minutes=2), error="broker down")

    data = json.loads(json.dumps(a_job().to_dict()))
    done = finished.to_dict()

    assert data == {
        "id": "j1",
        "target_kind": "model",
        "target": "sentiment",
        "status": "in_progress",
        "total": 8,
        "done": 2,
        "failed": 1,
        "progress": 0.25,
        "callback_url": "https://example.com/hook",
        "error": None,
        "created_at": "2026-01-02T03:04:05.000006+00:00",
        "updated_at": "2026-01-02T03:04:06.000006+00:00",
        "finished_at": None,
    }
    assert done["progress"] == 1.0
    assert type(done["progress"]) is float
    assert done["finished_at"] == "2026-01-02T03:06:05.000006+00:00"
    assert done["error"] == "broker down"


def test_job_times_are_normalised_to_utc() -> None:
    zone = timezone(timedelta(hours=-7))

    job = a_job(
        created_at=T0.astimezone(zone), updated_at=T0.astimezone(zone), finished_at=T0.astimezone(zone)
    )

    assert job.created_at == job.updated_at == job.finished_at == T0
    assert job.created_at.tzinfo is UTC
    assert job.finished_at is not None
    assert job.finished_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": "done"}, "unknown status 'done'"),
        ({"target_kind": "dataset"}, "target_kind"),
        ({"total": 0, "done": 0, "failed": 0}, "at least one input"),
        ({"done": 9}, "failed <= done <= total"),
        ({"failed": 3}, "failed <= done <= total"),
        ({"failed": -1}, "failed <= done <= total"),
        ({"created_at": datetime(2026, 1, 1)}, "created_at must be timezone-aware"),
        ({"updated_at": datetime(2026, 1, 1)}, "updated_at must be timezone-aware"),
        ({"finished_at": datetime(2026, 1, 1)}, "finished_at must be timezone-aware"),
    ],
)
def test_an_impossible_job_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        a_job(**changes)


def test_a_result_becomes_a_json_ready_dict() -> None:
    assert JobResult(3, {"label": "pos"}, None).to_dict() == {
        "position": 3,
        "output": {"label": "pos"},
        "error": None,
    }
    assert JobResult(4, None, "boom").to_dict() == {"position": 4, "output": None, "error": "boom"}


def test_terminal_statuses() -> None:
    assert frozenset({"completed", "failed", "canceled"}) == TERMINAL


def test_job_errors_sit_in_the_one_error_tree() -> None:
    # JobNotFound is a lookup miss (the gateway answers 404), not a store failure (503)
    assert issubclass(JobNotFound, modelfleet.errors.ModelfleetError)
    assert not issubclass(JobNotFound, StoreError)
    assert issubclass(JobRejected, StoreError)


def test_making_a_job_store_does_no_io(tmp_path: Path) -> None:
    store = make_job_store(f"sqlite:///{tmp_path / 'not' / 'yet' / 'runs.db'}")

    assert isinstance(store, SqlJobStore)
    assert store.backend == "sqlite"
    assert not (tmp_path / "not").exists()
    assert isinstance(make_job_store("postgresql://nobody@127.0.0.1:1/none"), SqlJobStore)


def test_a_job_store_url_is_checked_like_a_run_store_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'mysql'") as caught:
        make_job_store("mysql://user:hunter2@db/jobs")
    assert "hunter2" not in str(caught.value)

    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ConfigError, match=r"pip install 'modelfleet\[postgres\]'"):
        make_job_store("postgresql://fleet@db/jobs")
