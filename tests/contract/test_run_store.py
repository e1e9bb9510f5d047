"""The results store's contract: every test body runs against real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection
from tests.contract.conftest import engine_of

from modelfleet.store import (
    MAX_LIST_LIMIT,
    PipelineRun,
    RunNotFound,
    RunPage,
    RunRejected,
    RunStore,
    RunWriter,
    StepRecord,
    StoreError,
    make_run_store,
)
from modelfleet.store.migrations import MIGRATIONS, Migration, applied_migrations, migrate
from modelfleet.store.schema import metadata

T = TypeVar("T")
T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def a_run(
    run_id: str,
    pipeline: str = "moderation",
    created_at: datetime = T0,
    steps: list[StepRecord] | None = None,
    output: Any = None,
) -> PipelineRun:
    return PipelineRun(
        id=run_id,
        pipeline=pipeline,
        input={"text": f"input of {run_id}"},
        output={"label": "ok"} if output is None else output,
        steps=steps if steps is not None else [StepRecord("detect", "language", "1", "ok", "en", None, 1.5)],
        status="succeeded",
        error=None,
        created_at=created_at,
        duration_ms=3.25,
        model_versions={"language": "1"},
    )


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[RunStore]:
    store = make_run_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def all_runs(store: RunStore, pipeline: str | None = None) -> list[PipelineRun]:
    return (await store.list_runs(pipeline=pipeline, limit=MAX_LIST_LIMIT)).items


class CountingStore:
    """A real store, passed through, counting ``save_runs`` calls (each is one transaction).

    ``save_now`` declines, as PostgreSQL's always does, so that every save goes through the
    writer's batches, unless ``now`` lets it through to the real store (counted in ``now_calls``).
    """

    def __init__(self, inner: RunStore, now: bool = False) -> None:
        self.inner = inner
        self.now = now
        self.save_calls = 0
        self.now_calls = 0
        self.now_saved = 0

    def save_now(self, runs: Sequence[PipelineRun]) -> bool:
        if not self.now:
            return False
        self.now_calls += 1
        saved = self.inner.save_now(runs)
        self.now_saved += saved
        return saved

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def save_runs(self, runs: Sequence[PipelineRun]) -> None:
        self.save_calls += 1
        await self.inner.save_runs(runs)

    async def get_run(self, run_id: str) -> PipelineRun:
        return await self.inner.get_run(run_id)

    async def find_run(self, run_id: str) -> PipelineRun | None:
        return await self.inner.find_run(run_id)

    async def list_runs(
        self,
        pipeline: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        return await self.inner.list_runs(pipeline, since, limit, cursor)


def test_a_saved_run_reads_back_exactly(store_url: str) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    steps = [
        StepRecord("toxicity", "toxic-v2", "2.1", "ok", {"toxic": False, "score": 0.0125}, None, 4.5),
        StepRecord("translate", "mt", None, "skipped", None, "language is already en", 0.0),
        StepRecord("detect", "language", "1", "defaulted", "en", "timed out; used the default", 30.0),
        StepRecord("sentiment", "vader", "3.3.2", "failed", None, "model raised ValueError", 1.25),
        StepRecord("embed", "minilm", "6", "ok", [0.1, -0.2, 1e-7], None, 2.0),
    ]
    original = PipelineRun(
        id="run-ünïcode-🚀",
        pipeline="moderation",
        input={"zeta": "Grüße, 世界 🌍", "alpha": [1, 2.5, None, True, {"deep": ["x", {}]}], "nul": "a\x00b"},
        output={"score": 0.1 + 0.2, "one": 1.0, "big": 1e16, "huge": 10**20, "tiny": 5e-324, "neg": -0.0},
        steps=steps,
        status="failed",
        error="step sentiment failed",
        created_at=datetime(2026, 3, 4, 10, 36, 7, 123456, tzinfo=india),
        duration_ms=41.125,
        model_versions={"toxic-v2": "2.1", "language": "1"},
    )
    scalar = replace(a_run("scalar"), input=None, output=1.0, steps=[])

    async def body() -> tuple[PipelineRun, PipelineRun]:
        async with opened(store_url) as store:
            await store.save_runs([original, scalar])
            return await store.get_run(original.id), await store.get_run("scalar")

    stored, stored_scalar = run(body())

    assert stored == original
    assert stored.created_at == datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    assert stored.created_at.tzinfo is UTC
    assert [step.name for step in stored.steps] == ["toxicity", "translate", "detect", "sentiment", "embed"]
    # JSON comes back as written: key order, floats that are whole numbers, big integers.
    assert list(stored.input) == ["zeta", "alpha", "nul"]
    assert type(stored.output["one"]) is float
    assert type(stored.output["big"]) is float
    assert type(stored.output["huge"]) is int
    assert stored_scalar == scalar
    assert type(stored_scalar.output) is float
    assert stored_scalar.input is None


def test_find_run_returns_none_and_get_run_raises_for_an_unknown_id(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            await store.save_runs([a_run("known")])
            assert await store.find_run("unknown") is None
            with pytest.raises(RunNotFound, match="unknown"):
                await store.get_run("unknown")
            assert (await store.find_run("known")) is not None

    run(body())


def test_saving_a_stored_run_again_keeps_the_first_and_its_steps(store_url: str) -> None:
    first = a_run("job-1", steps=[StepRecord("a", "m", "1", "ok", 1, None, 1.0)])
    redelivered = replace(
        first,
        output={"label": "different"},
        steps=[
            StepRecord("x", "m", "2", "failed", None, "boom", 2.0),
            StepRecord("y", "m", "2", "ok", 2, None, 1),
        ],
    )

    async def body() -> list[PipelineRun]:
        async with opened(store_url) as store:
            await store.save_runs([first])
            await store.save_runs([redelivered])
            await store.save_runs([first, a_run("job-2")])
            return await all_runs(store)

    stored = run(body())

    assert sorted(r.id for r in stored) == ["job-1", "job-2"]
    assert next(r for r in stored if r.id == "job-1") == first


def test_a_run_repeated_within_one_batch_is_stored_once(store_url: str) -> None:
    first = a_run("dup", steps=[StepRecord("a", "m", None, "ok", "first", None, 1.0)])
    second = replace(first, steps=[StepRecord("b", "m", None, "ok", "second", None, 1.0)] * 3)

    async def body() -> list[PipelineRun]:
        async with opened(store_url) as store:
            await store.save_runs([first, a_run("other"), second])
            return await all_runs(store)

    stored = run(body())

    assert sorted(r.id for r in stored) == ["dup", "other"]
    assert next(r for r in stored if r.id == "dup") == first


def test_two_stores_saving_the_same_run_at_once_store_one_of_them_whole(store_url: str) -> None:
    # Given two processes (here: two stores) redelivering the same run with different steps
    one = a_run("raced", steps=[StepRecord(f"one-{i}", "m", None, "ok", i, None, 1.0) for i in range(3)])
    two = replace(one, steps=[StepRecord(f"two-{i}", "m", None, "ok", i, None, 1.0) for i in range(5)])

    async def body() -> PipelineRun:
        async with opened(store_url) as a, opened(store_url) as b:
            # When both save it at the same moment
            await asyncio.gather(*(s.save_runs([r]) for _ in range(5) for s, r in ((a, one), (b, two))))
            return await a.get_run("raced")

    stored = run(body())

    # Then one version is kept with its own steps, never a mix
    assert stored in (one, two)


def test_list_runs_is_newest_first_and_filters_by_pipeline_and_since(store_url: str) -> None:
    saved = [
        a_run("m-old", "moderation", T0 - timedelta(hours=2)),
        a_run("m-mid", "moderation", T0 - timedelta(hours=1)),
        a_run("m-new", "moderation", T0),
        a_run("s-mid", "search", T0 - timedelta(minutes=30)),
        a_run("s-new", "search", T0 + timedelta(microseconds=1)),
    ]

    async def body() -> dict[str, list[str]]:
        async with opened(store_url) as store:
            await store.save_runs(saved)

            async def ids(**kwargs: Any) -> list[str]:
                return [r.id for r in (await store.list_runs(**kwargs)).items]

            return {
                "all": await ids(),
                "moderation": await ids(pipeline="moderation"),
                "since": await ids(since=T0 - timedelta(hours=1)),
                "since_in_another_zone": await ids(
                    since=(T0 - timedelta(hours=1)).astimezone(timezone(timedelta(hours=-7)))
                ),
                "both": await ids(pipeline="search", since=T0),
                "none": await ids(pipeline="unknown"),
            }

    found = run(body())

    assert found["all"] == ["s-new", "m-new", "s-mid", "m-mid", "m-old"]
    assert found["moderation"] == ["m-new", "m-mid", "m-old"]
    assert found["since"] == ["s-new", "m-new", "s-mid", "m-mid"]  # since is inclusive
    assert found["since_in_another_zone"] == found["since"]
    assert found["both"] == ["s-new"]
    assert found["none"] == []


def test_pages_visit_every_run_once_in_a_stable_order(store_url: str) -> None:
    # Given 25 runs in groups of five sharing a created_at, ids not in time order, another pipeline too
    saved = [a_run(f"run-{(7 * n) % 25:02d}", "paged", T0 + timedelta(seconds=n // 5)) for n in range(25)] + [
        a_run(f"elsewhere-{n}", "other", T0 + timedelta(seconds=n)) for n in range(3)
    ]
    expected = [r.id for r in sorted(saved[:25], key=lambda r: (r.created_at, r.id), reverse=True)]

    async def body() -> tuple[list[list[str]], list[str]]:
        async with opened(store_url) as store:
            await store.save_runs(saved)
            pages: list[list[str]] = []
            cursor: str | None = None
            while True:
                page = await store.list_runs(pipeline="paged", limit=10, cursor=cursor)
                pages.append([r.id for r in page.items])
                if len(pages) == 1:
                    # A run saved while paging is newer than the cursor: it must not shift the pages.
                    await store.save_runs([a_run("late", "paged", T0 + timedelta(hours=1))])
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            again = await store.list_runs(pipeline="paged", limit=MAX_LIST_LIMIT)
            return pages, [r.id for r in again.items]

    pages, listed_again = run(body())

    # When paging with limit 10, then every run comes exactly once, newest first, ties by id
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [run_id for page in pages for run_id in page] == expected
    assert listed_again == ["late", *expected]


def test_a_full_last_page_has_no_next_cursor(store_url: str) -> None:
    async def body() -> tuple[RunPage, RunPage]:
        async with opened(store_url) as store:
            await store.save_runs([a_run(f"r{n}", created_at=T0 + timedelta(seconds=n)) for n in range(4)])
            first = await store.list_runs(limit=2)
            assert first.next_cursor is not None
            return first, await store.list_runs(limit=2, cursor=first.next_cursor)

    first, last = run(body())

    assert [r.id for r in first.items] == ["r3", "r2"]
    assert [r.id for r in last.items] == ["r1", "r0"]
    assert last.next_cursor is None


BAD_LIST_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"limit": 0}, "limit"),
    ({"limit": MAX_LIST_LIMIT + 1}, "limit"),
    ({"limit": -5}, "limit"),
    ({"since": datetime(2026, 1, 1)}, "timezone-aware"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": ""}, "cursor"),
]


def test_list_runs_refuses_bad_arguments(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            for arguments, message in BAD_LIST_ARGUMENTS:
                with pytest.raises(ValueError, match=message):
                    await store.list_runs(**arguments)
            assert (await store.list_runs(limit=MAX_LIST_LIMIT)).items == []

    run(body())


def test_opening_again_applies_no_migration_twice(store_url: str) -> None:
    async def body() -> tuple[list[int], list[int]]:
        async with opened(store_url) as store:
            await store.save_runs([a_run("kept")])
        async with opened(store_url) as store:
            assert await store.find_run("kept") is not None
        async with engine_of(store_url) as engine:
            again = await migrate(engine)
            return again, await applied_migrations(engine)

    applied_again, recorded = run(body())

    assert applied_again == []
    assert recorded == [m.version for m in MIGRATIONS]


def test_stores_opening_a_new_database_at_once_migrate_it_once(store_url: str) -> None:
    async def body() -> tuple[list[int], list[PipelineRun]]:
        stores = [make_run_store(store_url) for _ in range(6)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            await asyncio.gather(*(s.save_runs([a_run(f"from-{i}")]) for i, s in enumerate(stores)))
            async with engine_of(store_url) as engine:
                return await applied_migrations(engine), await all_runs(stores[0])
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    recorded, runs = run(body())

    assert recorded == [m.version for m in MIGRATIONS]
    assert len(runs) == 6


def test_processes_opening_a_new_database_at_once_migrate_it_once(store_url: str, tmp_path: Path) -> None:
    # Given several processes that wait for each other before opening the same new database
    processes = 4
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        from pathlib import Path
        from modelfleet.store import open_run_store

        url, barrier, index, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        (barrier / index).touch()
        while len(list(barrier.iterdir())) < count:
            time.sleep(0.005)

        async def main():
            store = await open_run_store(url)
            await store.close()

        asyncio.run(main())
        """
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # When they all open it at once
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, store_url, str(barrier), str(i), str(processes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]
    outputs = [child.communicate(timeout=120)[0] for child in children]

    # Then every one succeeds and each migration is recorded once
    assert [child.returncode for child in children] == [0] * processes, "\n".join(outputs)

    async def recorded() -> list[int]:
        async with engine_of(store_url) as engine:
            return await applied_migrations(engine)

    assert run(recorded()) == [m.version for m in MIGRATIONS]


def test_the_migrated_database_matches_the_table_definitions(store_url: str) -> None:
    def describe(connection: Any) -> dict[str, tuple[list[str], list[str], list[str]]]:
        inspector = inspect(connection)
        return {
            table: (
                [c["name"] for c in inspector.get_columns(table)],
                sorted(str(i["name"]) for i in inspector.get_indexes(table)),
                sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            )
            for table in inspector.get_table_names()
        }

    async def body() -> dict[str, tuple[list[str], list[str], list[str]]]:
        async with opened(store_url):
            pass
        async with engine_of(store_url) as engine, engine.connect() as connection:
            return await connection.run_sync(describe)

    found = run(body())

    expected = {
        table.name: (
            [c.name for c in table.columns],
            sorted(str(i.name) for i in table.indexes),
            sorted(c.name for c in table.primary_key.columns),
        )
        for table in metadata.sorted_tables
    }
    assert found == expected


def test_a_failing_migration_leaves_nothing_behind(store_url: str) -> None:
    async def create_then_fail(connection: AsyncConnection) -> None:
        await connection.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("migration bug")

    async def create_properly(connection: AsyncConnection) -> None:
        await connection.execute(text("CREATE TABLE half_done (x INTEGER)"))

    async def body() -> tuple[list[int], bool, list[int]]:
        async with engine_of(store_url) as engine:
            broken = [*MIGRATIONS, Migration(1000, "broken", create_then_fail)]
            with pytest.raises(RuntimeError, match="migration bug"):
                await migrate(engine, broken)
            after_failure = await applied_migrations(engine)
            async with engine.connect() as connection:
                exists = await connection.run_sync(lambda c: inspect(c).has_table("half_done"))
            fixed = await migrate(engine, [*MIGRATIONS, Migration(1000, "fixed", create_properly)])
            return after_failure, exists, fixed

    after_failure, half_done_exists, fixed = run(body())

    assert after_failure == [m.version for m in MIGRATIONS]
    assert not half_done_exists
    assert fixed == [1000]


def test_migrations_out_of_order_are_refused(store_url: str) -> None:
    async def nothing(connection: AsyncConnection) -> None:
        pass

    async def body() -> None:
        async with engine_of(store_url) as engine:
            with pytest.raises(ValueError, match="increasing"):
                await migrate(engine, [Migration(2, "b", nothing), Migration(1, "a", nothing)])

    run(body())


def test_a_store_that_is_not_open_raises_store_error(store_url: str) -> None:
    async def body() -> None:
        store = make_run_store(store_url)
        with pytest.raises(StoreError, match="not open"):
            await store.find_run("x")
        await store.open()
        await store.save_runs([a_run("x")])
        await store.close()
        await store.close()
        with pytest.raises(StoreError, match="not open"):
            await store.save_runs([a_run("y")])
        await store.open()
        try:
            assert await store.find_run("x") is not None
        finally:
            await store.close()

    run(body())


def test_nul_is_refused_in_identifiers_and_replaced_in_messages(store_url: str) -> None:
    failed = replace(
        a_run("with-nul-message", steps=[StepRecord("s", "m", None, "failed", None, "bad\x00byte", 1.0)]),
        status="failed",
        error="model said \x00",
    )

    async def body() -> PipelineRun:
        async with opened(store_url) as store:
            with pytest.raises(RunRejected, match="NUL"):
                await store.save_runs([a_run("bad\x00id")])
            with pytest.raises(RunRejected, match="NUL"):
                await store.save_runs([a_run("ok-id", pipeline="bad\x00pipeline")])
            await store.save_runs([failed])
            return await store.get_run("with-nul-message")

    stored = run(body())

    assert stored.error == "model said \ufffd"
    assert stored.steps[0].reason == "bad\ufffdbyte"


def test_values_that_are_not_json_are_refused_and_nothing_of_the_batch_is_saved(store_url: str) -> None:
    async def body() -> list[PipelineRun]:
        async with opened(store_url) as store:
            for bad in (float("nan"), float("inf"), object(), {1j: "complex key"}):
                with pytest.raises(RunRejected):
                    await store.save_runs([a_run("good"), a_run("bad", output={"value": bad})])
            return await all_runs(store)

    assert run(body()) == []


def test_save_now_commits_on_sqlite_and_declines_on_postgresql(store_url: str) -> None:
    async def body() -> tuple[bool, list[str]]:
        async with opened(store_url) as store:
            saved = store.save_now([a_run("now", steps=[])]) and store.save_now([a_run("now-too")])
            # Saving a stored run again keeps the first, as save_runs does
            again = store.save_now([a_run("now", output={"label": "changed"})])
            assert again == saved
            return saved, [r.id for r in await all_runs(store)]

    saved, stored = run(body())

    if store_url.startswith("sqlite"):
        assert saved
        assert sorted(stored) == ["now", "now-too"]
    else:
        # PostgreSQL is a network round trip: it never saves without waiting, and did nothing
        assert not saved
        assert stored == []


def test_save_now_refuses_bad_runs_and_a_closed_store(store_url: str) -> None:
    async def body() -> None:
        store = make_run_store(store_url)
        with pytest.raises(StoreError, match="not open"):
            store.save_now([a_run("early")])
        await store.open()
        try:
            bad_runs = [a_run("nan", output={"score": float("nan")}), a_run("nul\x00id")]
            if store_url.startswith("sqlite"):
                with pytest.raises(RunRejected, match="refused the data"):
                    store.save_now(bad_runs[:1])
                with pytest.raises(RunRejected, match="NUL"):
                    store.save_now(bad_runs[1:])
            else:
                # Declined before looking: save_runs, which the caller uses instead, refuses them
                assert not store.save_now(bad_runs)
            assert await all_runs(store) == []
        finally:
            await store.close()

    run(body())


def test_writer_saves_spaced_runs_at_once_and_bursts_together(store_url: str) -> None:
    async def body() -> None:
        store = CountingStore(make_run_store(store_url), now=True)
        await store.open()
        writer = RunWriter(store, now_spacing_s=0.001)
        try:
            # Given saves 5 ms apart, as at concurrency 1
            for n in range(3):
                await writer.save(a_run(f"spaced-{n}"))
                await asyncio.sleep(0.005)
            if store_url.startswith("sqlite"):
                # Then each was committed on the spot, with no hand-off to the writer task
                assert (store.now_saved, store.save_calls) == (3, 0)
            else:
                assert (store.now_saved, store.save_calls) == (0, 3)
            # When 100 saves arrive at once, then at most the first is saved on the spot
            before_now, before_batches = store.now_calls, store.save_calls
            await asyncio.gather(*(writer.save(a_run(f"burst-{n:03d}")) for n in range(100)))
            assert store.now_calls - before_now <= 1
            assert store.save_calls - before_batches <= 3
            assert len(await all_runs(store)) == 103
            assert (writer.written, writer.failed) == (103, 0)
        finally:
            await writer.close()
            await store.close()

    run(body())


def test_writer_commits_concurrent_saves_together(store_url: str) -> None:
    async def body() -> tuple[int, int, list[PipelineRun]]:
        store = CountingStore(make_run_store(store_url))
        await store.open()
        writer = RunWriter(store)
        try:
            # When 200 requests each save their run at the same time
            saved = [a_run(f"run-{n:03d}", created_at=T0 + timedelta(milliseconds=n)) for n in range(200)]
            await asyncio.gather(*(writer.save(r) for r in saved))
            return store.save_calls, writer.written, await all_runs(store)
        finally:
            await writer.close()
            await store.close()

    transactions, written, stored = run(body())

    # Then they share a handful of transactions, and every run is there
    assert transactions <= 5
    assert written == 200
    assert [r.id for r in stored] == [f"run-{n:03d}" for n in reversed(range(200))]


def test_writer_respects_max_batch(store_url: str) -> None:
    async def body() -> tuple[int, int]:
        store = CountingStore(make_run_store(store_url))
        await store.open()
        writer = RunWriter(store, max_batch=16)
        try:
            await asyncio.gather(*(writer.save(a_run(f"r{n}")) for n in range(64)))
            return store.save_calls, len(await all_runs(store))
        finally:
            await writer.close()
            await store.close()

    transactions, stored = run(body())

    assert transactions == 64 // 16
    assert stored == 64


def test_writer_raises_to_every_waiter_of_a_failed_transaction_and_keeps_working(store_url: str) -> None:
    async def body() -> None:
        store = make_run_store(store_url)
        await store.open()
        writer = RunWriter(store)
        try:
            await writer.save(a_run("before"))
            # Given the database goes away (here: the store is closed under the writer)
            await store.close()
            # When ten requests save at once, then each hears that its run was not saved
            results = await asyncio.gather(
                *(writer.save(a_run(f"lost-{n}")) for n in range(10)), return_exceptions=True
            )
            assert all(isinstance(r, StoreError) and not isinstance(r, RunRejected) for r in results), results
            assert len({id(r) for r in results}) == 10
            assert writer.failed == 10
            # And once the database is back, the same writer saves again
            await store.open()
            await writer.save(a_run("after"))
            assert sorted(r.id for r in await all_runs(store)) == ["after", "before"]
            assert writer.written == 2
        finally:
            await writer.close()
            await store.close()

    run(body())


def test_writer_fails_only_the_runs_the_database_refuses(store_url: str) -> None:
    async def body() -> None:
        store = CountingStore(make_run_store(store_url))
        await store.open()
        writer = RunWriter(store)
        try:
            # Given one batch where some runs cannot be stored
            batch = [
                a_run("good-1"),
                a_run("not-json", output={"score": float("nan")}),
                a_run("good-2"),
                a_run("nul\x00id"),
                a_run("good-3"),
            ]
            # When they are saved concurrently
            results = await asyncio.gather(*(writer.save(r) for r in batch), return_exceptions=True)
            # Then only those fail, the others are saved, retried one by one after the batch failed
            assert [type(r).__name__ for r in results] == [
                "NoneType",
                "RunRejected",
                "NoneType",
                "RunRejected",
                "NoneType",
            ]
            assert store.save_calls == 1 + len(batch)
            assert (writer.written, writer.failed) == (3, 2)
            await writer.save(a_run("next"))
            assert sorted(r.id for r in await all_runs(store)) == ["good-1", "good-2", "good-3", "next"]
        finally:
            await writer.close()
            await store.close()

    run(body())


def test_closing_the_writer_flushes_queued_runs_then_refuses_more(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as store:
            writer = RunWriter(store, max_batch=8)
            tasks = [asyncio.create_task(writer.save(a_run(f"queued-{n}"))) for n in range(30)]
            await asyncio.sleep(0)  # let every save enqueue its run
            await writer.close()
            assert all(t.done() and t.exception() is None for t in tasks)
            assert len(await all_runs(store)) == 30
            with pytest.raises(StoreError, match="closed"):
                await writer.save(a_run("too-late"))
            await writer.close()

    run(body())


def test_a_cancelled_save_still_writes_its_run(store_url: str) -> None:
    async def body() -> None:
        async with opened(store_url) as real:
            # A store that never saves on the spot, so the run waits in the writer's queue
            store = CountingStore(real)
            writer = RunWriter(store)
            try:
                task = asyncio.create_task(writer.save(a_run("impatient")))
                await asyncio.sleep(0)
                task.cancel()
                await writer.save(a_run("patient"))
                assert task.cancelled()
                assert sorted(r.id for r in await all_runs(store)) == ["impatient", "patient"]
            finally:
                await writer.close()

    run(body())
