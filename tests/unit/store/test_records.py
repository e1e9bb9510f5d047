"""Run records: JSON round trips and the checks made when one is built."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from modelfleet.store import PipelineRun, StepRecord


def a_run(created_at: datetime) -> PipelineRun:
    return PipelineRun(
        id="r1",
        pipeline="moderation",
        input={"text": "héllo"},
        output=[1, {"a": None}],
        steps=[
            StepRecord("detect", "language", "1", "ok", "en", None, 1.5),
            StepRecord("translate", "mt", None, "skipped", None, "already en", 0.0),
        ],
        status="succeeded",
        error=None,
        created_at=created_at,
        duration_ms=2.5,
        model_versions={"language": "1"},
    )


def test_a_run_survives_a_trip_through_json() -> None:
    original = a_run(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))

    data = json.loads(json.dumps(original.to_dict()))

    assert data["created_at"] == "2026-01-02T03:04:05.000006+00:00"
    assert PipelineRun.from_dict(data) == original


def test_created_at_is_normalised_to_utc() -> None:
    tokyo = timezone(timedelta(hours=9))

    run = a_run(datetime(2026, 1, 2, 12, 0, tzinfo=tokyo))

    assert run.created_at == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert run.created_at.tzinfo is UTC
    assert PipelineRun.from_dict({**run.to_dict(), "created_at": "2026-01-02T12:00:00+09:00"}) == run


def test_a_naive_created_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        a_run(datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        PipelineRun.from_dict({**a_run(datetime.now(UTC)).to_dict(), "created_at": "2026-01-02T00:00:00"})


def test_unknown_statuses_are_refused() -> None:
    data = a_run(datetime.now(UTC)).to_dict()

    with pytest.raises(ValueError, match="unknown status 'done'"):
        PipelineRun.from_dict({**data, "status": "done"})
    with pytest.raises(ValueError, match="unknown status 'maybe'"):
        StepRecord("s", "m", None, "maybe", None, None, 0.0)  # type: ignore[arg-type]


def test_the_store_and_the_gateway_share_one_run_not_found() -> None:
    import modelfleet.errors
    import modelfleet.store

    assert modelfleet.store.RunNotFound is modelfleet.errors.RunNotFound
