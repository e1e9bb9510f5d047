"""The job store's contract: every test body runs against real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from tests.contract.conftest import engine_of

from modelfleet.store import (
    MAX_RESULTS_LIMIT,
    Job,
    JobNotFound,
    JobRejected,
    JobResult,
    JobStore,
    PipelineRun,
    StoreError,
    make_job_store,
    make_run_store,
)
from modelfleet.store.jobs import BatchSpec
from modelfleet.store.migrations import MIGRATIONS, Migration, MigrationFailed, applied_migrations, migrate
from modelfleet.store.schema import jobs, schema_migrations

T = TypeVar("T")
T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def a_job(job_id: str = "job-1", total: int = 4, **changes: Any) -> Job:
    job = Job(
        id=job_id,
        target_kind="pipeline",
        target="moderation",
        status="pending",
        total=total,
        done=0,
        failed=0,
        callback_url=None,
        error=None,
        created_at=T0,
        updated_at=T0,
        finished_at=None,
    )
    return replace(job, **changes)


def ok(position: int, output: Any = None) -> JobResult:
    return JobResult(position, {"label": f"ok-{position}"} if output is None else output, None)


def error(position: int, message: str = "model raised ValueError") -> JobResult:
    return JobResult(position, None, message)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[JobStore]:
    store = make_job_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def test_a_created_job_reads_back_exactly(store_url: str) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    original = a_job(
        "job-ünïcode-🚀",
        total=1_000_000,
        target_kind="model",
        target="sentiment",
        callback_url="https://example.com/hooks/jobs?token=abc",
        created_at=datetime(2026, 3, 4, 10, 36, 7, 123456, tzinfo=india),
        updated_at=datetime(2026, 3, 4, 10, 36, 8, 654321, tzinfo=india),
    )

    async def body() -> tuple[Job, Job | None]:
        async with opened(store_url) as store:
            await store.create_job(original)
            await store.create_job(a_job("other"))
            return await store.get_job(original.id), await store.find_job(original.id)

    got, found = run(body())

    assert got == original
    assert found == original
    assert got.created_at == datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    assert got.created_at.tzinfo is UTC
    assert got.updated_at.tzinfo is UTC
    assert got.finished_at is None


def test_find_job_returns_none_and_get_job_raises_for_an_unknown_id(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            await store.create_job(a_job("known"))
            for unknown in ("unknown", "known\x00", ""):
                assert await store.find_job(unknown) is None
                with pytest.raises(JobNotFound, match="no job with id"):
                    await store.get_job(unknown)
            assert await store.find_job("known") is not None

    run(body())


def test_creating_a_job_again_keeps_the_stored_one(store_url: str) -> None:
    first = a_job("job-1", total=3)
    again = replace(first, target="other", total=7, status="canceled", callback_url="http://x/")

    async def body() -> Job:
        async with opened(store_url) as store:
            await store.create_job(first)
            await store.save_results(first.id, [ok(0)])
            await store.create_job(again)
            await store.create_job(first)
            return await store.get_job(first.id)

    stored = run(body())

    assert (stored.target, stored.total, stored.status, stored.done) == ("moderation", 3, "in_progress", 1)


def test_start_job_moves_only_a_pending_job_to_in_progress(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            await store.create_job(a_job("pending"))
            started = await store.start_job("pending")
            assert started.status == "in_progress"
            assert started.updated_at > T0
            assert started.finished_at is None
            assert await store.get_job("pending") == started
            # Starting again (a second worker takes a chunk) changes nothing
            assert await store.start_job("pending") == started

            await store.create_job(a_job("canceled"))
            canceled = await store.cancel_job("canceled")
            assert await store.start_job("canceled") == canceled

            await store.create_job(a_job("completed", total=1))
            completed = await store.save_results("completed", [ok(0)])
            assert await store.start_job("completed") == completed

            with pytest.raises(JobNotFound):
                await store.start_job("unknown")

    run(body())


def test_saving_results_counts_progress_then_completes_the_job(store_url: str) -> None:
    async def body() -> list[Job]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=4))
            return [
                await store.save_results("job", [ok(1), ok(0)]),
                await store.save_results("job", [ok(3)]),
                await store.save_results("job", [ok(2)]),
                await store.get_job("job"),
            ]

    half, three, last, stored = run(body())

    assert (half.status, half.done, half.failed, half.finished_at) == ("in_progress", 2, 0, None)
    assert half.to_dict()["progress"] == 0.5
    assert (three.status, three.done) == ("in_progress", 3)
    assert (last.status, last.done, last.failed) == ("completed", 4, 0)
    assert last.finished_at is not None
    assert last.to_dict()["progress"] == 1.0
    assert last.error is None
    assert stored == last


def test_a_job_with_any_failed_input_ends_failed(store_url: str) -> None:
    async def body() -> tuple[Job, Job, list[JobResult]]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=3))
            partial = await store.save_results("job", [ok(0), error(1, "input [1]: missing field 'text'")])
            final = await store.save_results("job", [ok(2)])
            return partial, final, await store.results("job")

    partial, final, results = run(body())

    assert (partial.status, partial.done, partial.failed) == ("in_progress", 2, 1)
    assert (final.status, final.done, final.failed) == ("failed", 3, 1)
    assert final.finished_at is not None
    # The job as a whole did not fail: only one input did, and that input's result says why
    assert final.error is None
    assert results[1] == JobResult(1, None, "input [1]: missing field 'text'")


def test_a_redelivered_chunk_keeps_the_first_results_and_the_counts(store_url: str) -> None:
    # Given a chunk whose results are stored, the broker delivers it again and the model now answers
    # differently (or fails)
    first = [ok(0, "first-0"), error(1, "first error"), ok(2, "first-2")]
    redelivered = [error(0, "late error"), ok(1, "late-1"), ok(2, "late-2")]

    async def body() -> tuple[Job, Job, Job, list[JobResult]]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=5))
            after_first = await store.save_results("job", first)
            after_again = await store.save_results("job", redelivered)
            after_overlap = await store.save_results("job", [ok(2, "overlap-2"), ok(3, "overlap-3")])
            return after_first, after_again, after_overlap, await store.results("job")

    after_first, after_again, after_overlap, results = run(body())

    # Then the first result of each position is kept, and nothing is counted twice
    assert results == [*first, ok(3, "overlap-3")]
    assert (after_first.done, after_first.failed) == (3, 1)
    assert after_again == after_first  # nothing new: not even updated_at moves
    assert (after_overlap.done, after_overlap.failed, after_overlap.status) == (4, 1, "in_progress")


def test_a_position_repeated_within_one_save_is_stored_once_the_first_wins(store_url: str) -> None:
    async def body() -> tuple[Job, list[JobResult]]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=2))
            job = await store.save_results("job", [ok(0, "a"), error(0), ok(0, "c"), ok(1, "b")])
            return job, await store.results("job")

    job, results = run(body())

    assert results == [ok(0, "a"), ok(1, "b")]
    assert (job.done, job.failed, job.status) == (2, 0, "completed")


def test_two_stores_saving_overlapping_chunks_at_once_keep_one_result_per_position(store_url: str) -> None:
    # Given two workers (here: two stores) redelivering overlapping chunks of one job, where one
    # worker's model fails every input and the other's succeeds
    total = 30
    chunks = [range(0, 10), range(5, 20), range(15, 30), range(0, 30)]

    async def body() -> tuple[Job, list[Job], list[JobResult]]:
        async with opened(store_url) as a, opened(store_url) as b:
            await a.create_job(a_job("raced", total=total))
            # When both save every chunk several times at the same moment
            saves = [
                a.save_results("raced", [ok(p, f"a-{p}") for p in chunk])
                if worker == "a"
                else b.save_results("raced", [error(p, f"b-{p}") for p in chunk])
                for _ in range(3)
                for chunk in chunks
                for worker in ("a", "b")
            ]
            returned = await asyncio.gather(*saves)
            return await b.get_job("raced"), list(returned), await a.results("raced", limit=MAX_RESULTS_LIMIT)

    job, returned, results = run(body())

    # Then every position has exactly one result, from one worker or the other
    assert [r.position for r in results] == list(range(total))
    for result in results:
        assert result in (
            ok(result.position, f"a-{result.position}"),
            error(result.position, f"b-{result.position}"),
        )
    # And the counts match what is stored, whatever the interleaving
    assert job.done == total
    assert job.failed == sum(r.error is not None for r in results)
    assert job.status == ("failed" if job.failed else "completed")
    assert job.finished_at is not None
    # And the last save to commit counted everything the others had stored
    assert max(j.done for j in returned) == total


def test_different_chunks_saved_at_once_are_all_counted(store_url: str) -> None:
    # Given 40 workers (here: four stores, ten saves each) finishing different chunks of one job
    async def body() -> tuple[Job, list[Job]]:
        stores = [make_job_store(store_url) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            await stores[0].create_job(a_job("busy", total=400))
            # When they all save at the same moment
            returned = await asyncio.gather(
                *(
                    stores[n % 4].save_results(
                        "busy", [ok(p) if p % 7 else error(p) for p in range(10 * n, 10 * n + 10)]
                    )
                    for n in range(40)
                )
            )
            return await stores[1].get_job("busy"), list(returned)
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    job, returned = run(body())

    # Then no save's count is lost to another's: each save recounts what was committed before it
    assert (job.done, job.failed, job.status) == (400, len(range(0, 400, 7)), "failed")
    assert sorted(j.done for j in returned) == list(range(10, 410, 10))


def test_a_chunk_saved_by_two_stores_at_once_is_kept_whole_from_one(store_url: str) -> None:
    # Given two workers (here: two stores) that got the same chunk and answered differently
    async def body() -> tuple[Job, list[JobResult]]:
        async with opened(store_url) as a, opened(store_url) as b:
            await a.create_job(a_job("raced", total=10))
            # When both save it at the same moment, several times
            await asyncio.gather(
                *(
                    store.save_results("raced", [ok(p, name) for p in range(10)])
                    for _ in range(5)
                    for store, name in ((a, "a"), (b, "b"))
                )
            )
            return await a.get_job("raced"), await b.results("raced")

    job, results = run(body())

    # Then one worker's results are kept, all of them, never a mix
    assert results in ([ok(p, "a") for p in range(10)], [ok(p, "b") for p in range(10)])
    assert (job.done, job.failed, job.status) == (10, 0, "completed")


def test_positions_outside_the_job_are_refused_and_nothing_of_the_save_is_stored(store_url: str) -> None:
    async def body() -> tuple[Job, list[JobResult]]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=3))
            for bad in (3, -1, 10**6):
                with pytest.raises(ValueError, match=r"positions must be 0\.\.2"):
                    await store.save_results("job", [ok(0), ok(bad)])
            with pytest.raises(ValueError, match="int"):
                await store.save_results("job", [ok(0), ok(True)])
            with pytest.raises(JobNotFound):
                await store.save_results("unknown", [ok(0)])
            with pytest.raises(JobNotFound):
                await store.save_results("unknown", [])
            return await store.get_job("job"), await store.results("job")

    job, results = run(body())

    assert (job.status, job.done) == ("pending", 0)
    assert results == []


def test_results_come_by_position_in_pages(store_url: str) -> None:
    # Given 25 inputs whose results arrive out of order, with gaps still open
    arrival = [[20, 21, 22, 23, 24], [0, 1, 2], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [3, 4, 5, 6]]

    async def body() -> tuple[list[list[int]], list[JobResult], list[JobResult], list[JobResult]]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=25))
            await store.create_job(a_job("neighbour", total=25))
            await store.save_results("neighbour", [ok(p, "neighbour") for p in range(25)])
            for chunk in arrival:
                await store.save_results("job", [ok(p) for p in chunk])
            pages: list[list[int]] = []
            for offset in range(0, 30, 10):
                pages.append([r.position for r in await store.results("job", offset=offset, limit=10)])
            return (
                pages,
                await store.results("job"),
                await store.results("job", offset=100),
                await store.results("job", offset=20, limit=MAX_RESULTS_LIMIT),
            )

    pages, everything, past_the_end, tail = run(body())

    stored = sorted(p for chunk in arrival for p in chunk)
    assert pages == [stored[:10], stored[10:20], stored[20:]]
    assert [r.position for r in everything] == stored
    assert everything[0] == ok(0)
    assert past_the_end == []
    assert [r.position for r in tail] == [23, 24]


def test_results_refuses_bad_arguments_and_unknown_jobs(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            await store.create_job(a_job("job"))
            bad_arguments: list[tuple[dict[str, Any], str]] = [
                ({"offset": -1}, "offset"),
                ({"limit": 0}, "limit"),
                ({"limit": MAX_RESULTS_LIMIT + 1}, "limit"),
                ({"limit": True}, "limit"),
            ]
            for arguments, message in bad_arguments:
                with pytest.raises(ValueError, match=message):
                    await store.results("job", **arguments)
            with pytest.raises(JobNotFound):
                await store.results("unknown")
            assert await store.results("job", limit=MAX_RESULTS_LIMIT) == []

    run(body())


def test_cancel_stops_pending_and_running_jobs_but_not_finished_ones(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            for job_id in ("pending", "running", "completed"):
                await store.create_job(a_job(job_id, total=2))
            await store.start_job("running")
            await store.save_results("running", [ok(0)])
            completed = await store.save_results("completed", [ok(0), ok(1)])

            canceled = await store.cancel_job("pending")
            assert (canceled.status, canceled.done) == ("canceled", 0)
            assert canceled.finished_at is not None
            assert await store.get_job("pending") == canceled

            running = await store.cancel_job("running")
            assert (running.status, running.done) == ("canceled", 1)
            assert running.finished_at is not None

            assert await store.cancel_job("completed") == completed
            # Canceling twice keeps the first cancel's time
            assert await store.cancel_job("pending") == canceled

            with pytest.raises(JobNotFound):
                await store.cancel_job("unknown")

    run(body())


def test_results_saved_after_cancel_are_kept_but_the_job_stays_canceled(store_url: str) -> None:
    # Given a canceled job whose chunks were already with workers
    async def body() -> tuple[Job, Job, Job, list[JobResult]]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=3))
            await store.save_results("job", [ok(0)])
            canceled = await store.cancel_job("job")
            # When the workers save their results anyway, even the last ones
            some = await store.save_results("job", [error(1)])
            every = await store.save_results("job", [ok(2)])
            return canceled, some, every, await store.results("job")

    canceled, some, every, results = run(body())

    # Then the results are stored and counted, and the job stays canceled, finished when it was canceled
    assert [r.position for r in results] == [0, 1, 2]
    assert (some.status, some.done, some.failed) == ("canceled", 2, 1)
    assert (every.status, every.done, every.failed) == ("canceled", 3, 1)
    assert every.finished_at == canceled.finished_at


def test_fail_job_fails_an_unfinished_job_as_a_whole(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            for job_id in ("pending", "running", "completed", "canceled"):
                await store.create_job(a_job(job_id, total=2))
            await store.save_results("running", [ok(0)])
            completed = await store.save_results("completed", [ok(0), ok(1)])
            canceled = await store.cancel_job("canceled")

            failed = await store.fail_job("pending", "could not queue the job: broker down \x00")
            assert (failed.status, failed.done) == ("failed", 0)
            assert failed.error == "could not queue the job: broker down \ufffd"
            assert failed.finished_at is not None
            assert await store.get_job("pending") == failed

            running = await store.fail_job("running", "gave up")
            assert (running.status, running.error, running.done) == ("failed", "gave up", 1)

            assert await store.fail_job("completed", "too late") == completed
            assert await store.fail_job("canceled", "too late") == canceled
            assert await store.fail_job("pending", "again") == failed

            # Chunks queued before the failure still store their results; the job stays failed
            later = await store.save_results("running", [ok(1)])
            assert (later.status, later.done, later.error) == ("failed", 2, "gave up")
            assert later.finished_at == running.finished_at

            with pytest.raises(JobNotFound):
                await store.fail_job("unknown", "why")

    run(body())


def test_outputs_read_back_exactly(store_url: str) -> None:
    outputs: list[Any] = [
        {"zeta": "Grüße, 世界 🌍", "alpha": [1, 2.5, None, True, {"deep": ["x", {}]}], "nul": "a\x00b"},
        {"score": 0.1 + 0.2, "one": 1.0, "big": 1e16, "huge": 10**20, "tiny": 5e-324, "neg": -0.0},
        [0.1, -0.2, 1e-7] * 128,
        1.0,
        "just a string",
        False,
        [],
        {},
        None,
    ]
    results = [JobResult(p, output, None) for p, output in enumerate(outputs)]

    async def body() -> list[JobResult]:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=len(outputs) + 1))
            await store.save_results("job", [*results, error(len(outputs), "échec \x00 ✗")])
            return await store.results("job")

    stored = run(body())

    assert stored[:-1] == results
    assert stored[-1] == error(len(outputs), "échec \ufffd ✗")
    # JSON comes back as written: key order, floats that are whole numbers, big integers
    nested: Any = stored[0].output
    numbers: Any = stored[1].output
    assert list(nested) == ["zeta", "alpha", "nul"]
    assert type(numbers["one"]) is float
    assert type(numbers["huge"]) is int
    assert type(stored[3].output) is float
    assert stored[8].output is None


def test_content_the_database_cannot_take_is_rejected_and_nothing_of_the_save_is_stored(
    store_url: str,
) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            await store.create_job(a_job("job", total=2))
            for bad in (float("nan"), float("inf"), object(), {1j: "complex key"}):
                with pytest.raises(JobRejected):
                    await store.save_results("job", [ok(0), ok(1, {"value": bad})])
            assert await store.results("job") == []
            assert (await store.get_job("job")).status == "pending"
            for job in (a_job("nul\x00id"), a_job("ok", target="bad\x00target")):
                with pytest.raises(JobRejected, match="NUL"):
                    await store.create_job(job)
            assert await store.find_job("ok") is None

    run(body())


def test_a_store_that_is_not_open_raises_store_error(store_url: str) -> None:
    async def body() -> None:
        store = make_job_store(store_url)
        with pytest.raises(StoreError, match="not open"):
            await store.find_job("x")
        await store.open()
        await store.create_job(a_job("x"))
        await store.close()
        await store.close()
        with pytest.raises(StoreError, match="not open"):
            await store.save_results("x", [ok(0)])
        await store.open()
        try:
            assert await store.find_job("x") is not None
        finally:
            await store.close()

    run(body())


def test_opening_records_the_jobs_migration(store_url: str) -> None:
    async def body() -> tuple[list[int], list[tuple[int, str]], list[int]]:
        async with opened(store_url):
            pass
        async with engine_of(store_url) as engine:
            again = await migrate(engine)
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(schema_migrations.c.version, schema_migrations.c.name).order_by(
                        schema_migrations.c.version
                    )
                )
                recorded = [(row.version, row.name) for row in rows]
            return again, recorded, await applied_migrations(engine)

    again, recorded, versions = run(body())

    assert again == []
    assert (2, "jobs and job_results") in recorded
    assert versions == [m.version for m in MIGRATIONS]
    assert versions[:2] == [1, 2]


def test_a_database_with_only_the_runs_migration_is_upgraded_and_keeps_its_runs(store_url: str) -> None:
    kept = PipelineRun("kept", "p", {"x": 1}, {"y": 2}, [], "succeeded", None, T0, 1.0)

    async def body() -> tuple[list[int], list[int], PipelineRun, Job]:
        # Given a database migrated before jobs existed, holding a run
        async with engine_of(store_url) as engine:
            await migrate(engine, MIGRATIONS[:1])
            before = await applied_migrations(engine)
        runs = make_run_store(store_url)
        await runs.open()
        try:
            await runs.save_runs([kept])
            # When a job store opens it (alongside the open run store)
            async with opened(store_url) as jobs:
                await jobs.create_job(a_job("job", total=1))
                job = await jobs.save_results("job", [ok(0)])
            async with engine_of(store_url) as engine:
                after = await applied_migrations(engine)
            return before, after, await runs.get_run("kept"), job
        finally:
            await runs.close()

    before, after, stored_run, job = run(body())

    # Then the jobs tables are added and the runs are untouched
    assert before == [1]
    assert after == [m.version for m in MIGRATIONS]
    assert stored_run == kept
    assert job.status == "completed"


def test_stores_opening_a_new_database_at_once_migrate_it_once(store_url: str) -> None:
    async def body() -> list[int]:
        stores = [make_job_store(store_url) if i % 2 else make_run_store(store_url) for i in range(6)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
        finally:
            await asyncio.gather(*(s.close() for s in stores))
        async with engine_of(store_url) as engine:
            return await applied_migrations(engine)

    assert run(body()) == [m.version for m in MIGRATIONS]


def test_jobs_created_together_read_back_together(store_url: str) -> None:
    first = a_job("one", total=2)
    jobs = [first, a_job("two", total=3), replace(first, target="a repeat: the first wins"), a_job("three")]

    async def body() -> tuple[dict[str, Job], dict[str, Job], Job]:
        async with opened(store_url) as store:
            await store.create_jobs(jobs)
            await store.create_jobs([])
            found = await store.find_jobs(["one", "two", "three", "unknown", "one", "nul\x00"])
            return found, await store.find_jobs([]), await store.get_job("one")

    found, nothing, one = run(body())

    assert set(found) == {"one", "two", "three"}
    assert found["two"] == jobs[1]
    assert one == first
    assert nothing == {}


def test_creating_jobs_together_stores_all_or_none(store_url: str) -> None:
    async def body() -> dict[str, Job]:
        async with opened(store_url) as store:
            with pytest.raises(JobRejected, match="NUL"):
                await store.create_jobs([a_job("fine"), a_job("bad", callback_url="http://x/\x00")])
            return await store.find_jobs(["fine", "bad"])

    assert run(body()) == {}


def test_start_jobs_starts_only_the_pending_ones(store_url: str) -> None:
    async def body() -> dict[str, Job]:
        async with opened(store_url) as store:
            await store.create_jobs([a_job("pending"), a_job("canceled"), a_job("done", total=1)])
            await store.cancel_job("canceled")
            await store.save_results("done", [ok(0)])
            await store.start_jobs(["pending", "canceled", "done", "unknown", "nul\x00"])
            await store.start_jobs([])
            return await store.find_jobs(["pending", "canceled", "done"])

    jobs = run(body())

    assert jobs["pending"].status == "in_progress"
    assert jobs["pending"].updated_at > T0
    assert jobs["canceled"].status == "canceled"
    assert jobs["done"].status == "completed"


def test_results_of_several_jobs_are_saved_in_one_transaction(store_url: str) -> None:
    async def body() -> tuple[dict[str, Job], dict[str, Job], list[JobResult], list[JobResult]]:
        async with opened(store_url) as store:
            await store.create_jobs([a_job("a", total=2), a_job("b", total=3)])
            first = await store.save_results_of_jobs({"a": [ok(0), ok(1)], "b": [ok(2), error(0)]})
            # A bad position or an unknown job in the group: nothing of the group is stored
            with pytest.raises(ValueError, match=r"positions must be 0\.\.1"):
                await store.save_results_of_jobs({"b": [ok(1)], "a": [ok(5)]})
            with pytest.raises(JobNotFound):
                await store.save_results_of_jobs({"b": [ok(1)], "unknown": [ok(0)]})
            # A redelivered group adds only what is new
            again = await store.save_results_of_jobs({"a": [error(0), error(1)], "b": [ok(0), ok(1)]})
            return first, again, await store.results("a"), await store.results("b")

    first, again, results_a, results_b = run(body())

    assert (first["a"].status, first["a"].done, first["a"].failed) == ("completed", 2, 0)
    assert (first["b"].status, first["b"].done, first["b"].failed) == ("in_progress", 2, 1)
    assert again["a"] == first["a"]  # nothing new: untouched
    assert (again["b"].status, again["b"].done, again["b"].failed) == ("failed", 3, 1)
    assert results_a == [ok(0), ok(1)]
    assert results_b == [error(0), ok(1), ok(2)]


def test_groups_saved_at_once_in_opposite_orders_are_all_counted(store_url: str) -> None:
    # Given workers saving groups that share jobs, listing them in opposite orders (on PostgreSQL the
    # job rows are locked in one order whatever the group's, so no two saves deadlock)
    ids = [f"job-{n}" for n in range(6)]

    async def body() -> dict[str, Job]:
        async with opened(store_url) as a, opened(store_url) as b:
            await a.create_jobs([a_job(job_id, total=40) for job_id in ids])
            saves = []
            for n in range(20):
                order = ids if n % 2 else list(reversed(ids))
                store = a if n % 2 else b
                saves.append(
                    store.save_results_of_jobs({job_id: [ok(2 * n), ok(2 * n + 1)] for job_id in order})
                )
            await asyncio.gather(*saves)
            return await a.find_jobs(ids)

    jobs = run(body())

    assert {(j.done, j.status) for j in jobs.values()} == {(40, "completed")}


def a_batch(job_id: str = "batch-1", **changes: Any) -> Job:
    spec = BatchSpec("/data/in.jsonl", "/data/out.csv", "jsonl", 256, 4)
    return replace(a_job(job_id), target_kind="model", target="sentiment", total=None, batch=spec, **changes)


def test_a_batch_job_reads_back_and_keeps_no_results_of_its_own(store_url: str) -> None:
    async def body() -> tuple[Job, list[JobResult], Job]:
        async with opened(store_url) as store:
            await store.create_job(a_batch())
            # An inputs job created again under a batch's id, and a batch under an inputs job's id,
            # change nothing
            await store.create_job(a_job("plain"))
            await store.create_jobs([a_batch("plain"), replace(a_job("batch-1"), total=3)])
            with pytest.raises(ValueError, match="is a batch job"):
                await store.save_results("batch-1", [ok(0)])
            return (
                await store.get_job("batch-1"),
                await store.results("batch-1"),
                await store.get_job("plain"),
            )

    got, results, plain = run(body())

    assert got == a_batch()
    assert (got.total, got.progress) == (None, None)
    assert got.to_dict()["batch"] == {
        "input_file": "/data/in.jsonl",
        "output_file": "/data/out.csv",
        "format": "jsonl",
        "chunk_size": 256,
        "concurrency": 4,
    }
    assert "summary" not in got.to_dict()
    assert results == []
    assert plain == a_job("plain")


def test_a_batch_job_counts_rows_forward_only_then_finishes(store_url: str) -> None:
    async def body() -> list[Job]:
        async with opened(store_url) as store:
            await store.create_job(a_batch())
            steps = [
                await store.batch_progress("batch-1", 0, 0),
                await store.batch_progress("batch-1", 512, 3),
                await store.batch_progress("batch-1", 256, 0, total=1000),  # a resumed run recounting
                await store.batch_progress("batch-1", 768, 4),
            ]
            with pytest.raises(ValueError, match="more than 500"):
                await store.batch_progress("batch-1", 0, 0, total=500)
            with pytest.raises(ValueError, match="failed <= done"):
                await store.batch_progress("batch-1", 1, 2)
            steps.append(await store.finish_batch("batch-1", 1000, 4))
            steps.append(await store.batch_progress("batch-1", 1000, 0))  # too late: finished
            return steps

    started, half, counted, more, finished, after = run(body())

    assert (started.status, started.done, started.total) == ("in_progress", 0, None)
    assert (half.done, half.failed, half.total, half.progress) == (512, 3, None, None)
    assert (counted.done, counted.failed, counted.total, counted.progress) == (512, 3, 1000, 0.512)
    assert (more.done, more.failed) == (768, 4)
    assert (finished.status, finished.total, finished.done, finished.failed) == ("failed", 1000, 1000, 4)
    assert finished.finished_at is not None
    assert finished.to_dict()["summary"] == {"rows": 1000, "failed_rows": 4, "output_file": "/data/out.csv"}
    assert after == finished


def test_a_canceled_batch_job_stays_canceled(store_url: str) -> None:
    async def body() -> tuple[Job, Job, Job, Job]:
        async with opened(store_url) as store:
            await store.create_jobs([a_batch(), a_batch("empty")])
            await store.batch_progress("batch-1", 10, 0)
            canceled = await store.cancel_job("batch-1")
            empty = await store.finish_batch("empty", 0, 0)
            await store.create_job(a_job("inputs"))
            with pytest.raises(ValueError, match="not a batch job"):
                await store.finish_batch("inputs", 1, 0)
            with pytest.raises(JobNotFound):
                await store.batch_progress("unknown", 0, 0)
            return (
                canceled,
                await store.batch_progress("batch-1", 20, 0),
                await store.finish_batch("batch-1", 30, 0),
                empty,
            )

    canceled, progressed, finished, empty = run(body())

    assert (canceled.status, canceled.done) == ("canceled", 10)
    assert progressed == canceled
    assert finished == canceled
    assert (empty.status, empty.total, empty.progress) == ("completed", 0, 1.0)


def test_a_batch_job_is_stored_in_its_own_column_with_a_null_total(store_url: str) -> None:
    async def body() -> tuple[list[tuple[Any, ...]], int]:
        async with opened(store_url) as store:
            await store.create_jobs([a_batch(), a_job("inputs", total=2)])
        async with engine_of(store_url) as engine, engine.connect() as connection:
            rows = await connection.execute(select(jobs.c.id, jobs.c.total, jobs.c.batch).order_by(jobs.c.id))
            results = await connection.execute(text("SELECT count(*) FROM job_results"))
            return [tuple(row) for row in rows], results.scalar_one()

    rows, results = run(body())

    spec = a_batch().batch
    assert spec is not None
    assert rows == [("batch-1", None, spec.to_dict()), ("inputs", 2, None)]
    assert results == 0


OLD_SPEC = {
    "input_file": "/data/old.csv",
    "output_file": "/data/old.out.jsonl",
    "format": "csv",
    "chunk_size": 100,
    "concurrency": 2,
}


async def write_old_form_jobs(connection: AsyncConnection) -> None:
    """Jobs as the store wrote them before migration 4: a batch's spec as its result at position -1,
    an uncounted total as -1."""
    insert_job = text(
        "INSERT INTO jobs (id, target_kind, target, status, total, done, failed, callback_url, error,"
        " created_at, updated_at, finished_at)"
        " VALUES (:id, :kind, :target, :status, :total, :done, 0, NULL, NULL, :at, :at, NULL)"
    )
    insert_result = text(
        "INSERT INTO job_results (job_id, position, output, error) VALUES (:job, :position, :output, NULL)"
    )
    common = {"kind": "model", "target": "sentiment", "at": T0}
    await connection.execute(
        insert_job,
        [
            {"id": "uncounted", "status": "pending", "total": -1, "done": 0} | common,
            {"id": "counted", "status": "in_progress", "total": 500, "done": 100} | common,
            {"id": "inputs", "status": "in_progress", "total": 3, "done": 2} | common,
        ],
    )
    await connection.execute(
        insert_result,
        [
            {"job": "uncounted", "position": -1, "output": json.dumps(OLD_SPEC)},
            {"job": "counted", "position": -1, "output": json.dumps(OLD_SPEC | {"chunk_size": 50})},
            {"job": "inputs", "position": 0, "output": json.dumps({"label": "ok-0"})},
            {"job": "inputs", "position": 1, "output": json.dumps({"label": "ok-1"})},
        ],
    )


def describe_jobs_tables(connection: Any) -> dict[str, Any]:
    inspector = inspect(connection)
    return {
        "columns": [(c["name"], c["nullable"]) for c in inspector.get_columns("jobs")],
        "indexes": sorted(str(i["name"]) for i in inspector.get_indexes("jobs")),
        "references": [
            (fk["referred_table"], fk["constrained_columns"], fk["options"].get("ondelete"))
            for fk in inspector.get_foreign_keys("job_results")
        ],
    }


def test_batch_jobs_stored_before_migration_4_are_moved_into_the_batch_column(store_url: str) -> None:
    async def body() -> dict[str, Any]:
        # Given a database at migration 3 holding batch jobs in the old form and a job of inputs
        async with engine_of(store_url) as engine:
            await migrate(engine, MIGRATIONS[:3])
            async with engine.begin() as connection:
                await write_old_form_jobs(connection)
        # When a job store opens it
        async with opened(store_url) as store:
            found = await store.find_jobs(["uncounted", "counted", "inputs"])
            results = await store.results("inputs")
            progressed = await store.batch_progress("uncounted", 10, 1, total=40)
            completed = await store.save_results("inputs", [ok(2)])
            with pytest.raises(ValueError, match="is a batch job"):
                await store.save_results("counted", [ok(0)])
        async with engine_of(store_url) as engine:
            async with engine.connect() as connection:
                leftovers = await connection.execute(
                    text("SELECT count(*) FROM job_results WHERE position < 0")
                )
                shape = await connection.run_sync(describe_jobs_tables)
            # The foreign key from job_results still holds and still cascades
            async with engine.begin() as connection:
                await connection.execute(text("DELETE FROM jobs WHERE id = 'inputs'"))
                orphans = await connection.execute(text("SELECT count(*) FROM job_results"))
            with pytest.raises(IntegrityError):
                async with engine.begin() as connection:
                    await connection.execute(
                        text("INSERT INTO job_results (job_id, position) VALUES ('no such job', 0)")
                    )
            versions = await applied_migrations(engine)
        return {
            "found": found,
            "results": results,
            "progressed": progressed,
            "completed": completed,
            "leftovers": leftovers.scalar_one(),
            "shape": shape,
            "remaining results": orphans.scalar_one(),
            "versions": versions,
        }

    got = run(body())

    # Then each job reads back with its spec and a None total where it was uncounted
    uncounted, counted, inputs = (got["found"][i] for i in ("uncounted", "counted", "inputs"))
    assert uncounted.batch == BatchSpec("/data/old.csv", "/data/old.out.jsonl", "csv", 100, 2)
    assert (uncounted.total, uncounted.done, uncounted.status) == (None, 0, "pending")
    assert counted.batch == BatchSpec("/data/old.csv", "/data/old.out.jsonl", "csv", 50, 2)
    assert (counted.total, counted.done, counted.progress) == (500, 100, 0.2)
    assert (inputs.batch, inputs.total, inputs.done) == (None, 3, 2)
    assert got["results"] == [ok(0), ok(1)]
    assert (got["progressed"].total, got["progressed"].done, got["progressed"].status) == (
        40,
        10,
        "in_progress",
    )
    assert (got["completed"].status, got["completed"].done) == ("completed", 3)
    assert got["leftovers"] == 0
    # And the upgraded tables are shaped as the table definitions say
    assert got["shape"] == {
        "columns": [(c.name, c.nullable) for c in jobs.columns],
        "indexes": sorted(str(i.name) for i in jobs.indexes),
        "references": [("jobs", ["job_id"], "CASCADE")],
    }
    assert got["remaining results"] == 0
    assert got["versions"] == [m.version for m in MIGRATIONS]


def test_a_table_rebuild_that_breaks_a_foreign_key_is_rolled_back(store_url: str) -> None:
    async def orphan_a_result(connection: AsyncConnection) -> None:
        await connection.execute(text("INSERT INTO job_results (job_id, position) VALUES ('no such job', 0)"))

    async def body() -> tuple[list[int], int]:
        async with engine_of(store_url) as engine:
            await migrate(engine)
            broken = [*MIGRATIONS, Migration(1000, "orphans", orphan_a_result, rebuilds_sqlite_tables=True)]
            # SQLite finds it at the check before commit; PostgreSQL at the insert
            with pytest.raises((MigrationFailed, IntegrityError)):
                await migrate(engine, broken)
            # Foreign keys are enforced again on the connection the migration used
            with pytest.raises(IntegrityError):
                async with engine.begin() as connection:
                    await orphan_a_result(connection)
            async with engine.connect() as connection:
                results = (await connection.execute(text("SELECT count(*) FROM job_results"))).scalar_one()
            return await applied_migrations(engine), results

    versions, results = run(body())

    assert versions == [m.version for m in MIGRATIONS]
    assert results == 0
