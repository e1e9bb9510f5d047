"""The model registry's contract: every test body runs against real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from modelfleet.errors import AliasNotFound, Conflict, InvalidInput, TrainingJobNotFound, VersionNotFound
from modelfleet.registry import MAX_LIST_LIMIT, ModelVersion, Registry, make_registry
from modelfleet.store import StoreError
from modelfleet.store.engine import connect_store_engine, parse_store_url
from modelfleet.store.migrations import MIGRATIONS, applied_migrations, migrate
from modelfleet.store.schema import schema_migrations

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Registry]:
    registry = make_registry(url)
    await registry.open()
    try:
        yield registry
    finally:
        await registry.close()


def with_registry(url: str, body: Callable[[Registry], Awaitable[T]]) -> T:
    async def go() -> T:
        async with opened(url) as registry:
            return await body(registry)

    return run(go())


async def register(registry: Registry, model: str = "sentiment", **changes: Any) -> ModelVersion:
    fields: dict[str, Any] = {
        "artifact_uri": f"file:///lake/artifacts/{model}/{datetime.now(UTC).timestamp()}.joblib",
        "trainer": "tfidf-logreg",
        "params": {"C": 1.0},
        "metrics": {"accuracy": 0.9},
        "dataset": "reviews@3",
    }
    fields.update(changes)
    return await registry.register(model, **fields)


async def register_many(registry: Registry, count: int, model: str = "sentiment") -> list[ModelVersion]:
    return [await register(registry, model) for _ in range(count)]


def test_versions_are_numbered_per_model_and_read_back_exactly(store_url: str) -> None:
    params = {"C": 0.5, "ngrams": [1, 2], "nested": {"max_features": 20000, "note": "ünïcode 🚀"}}

    async def body(registry: Registry) -> tuple[ModelVersion, ModelVersion, ModelVersion, ModelVersion]:
        first = await register(
            registry, artifact_uri="s3://lake/a.joblib", params=params, metrics={"accuracy": 0.91, "n": 200}
        )
        second = await register(registry, dataset=None)
        other = await register(registry, "language")
        return first, second, other, await registry.get_version("sentiment", "1")

    first, second, other, read_back = with_registry(store_url, body)

    assert [first.version, second.version, other.version] == ["1", "2", "1"]
    assert read_back == first
    assert read_back.params == params
    assert read_back.metrics == {"accuracy": 0.91, "n": 200}
    assert read_back.dataset == "reviews@3"
    assert read_back.artifact_uri == "s3://lake/a.joblib"
    assert read_back.status == "ready"
    assert read_back.created_at.tzinfo is UTC
    assert second.dataset is None


def test_versions_list_newest_first_in_numeric_order_and_numbers_are_never_reused(store_url: str) -> None:
    async def body(registry: Registry) -> tuple[list[str], list[str], ModelVersion]:
        await register_many(registry, 11)
        before = [v.version for v in await registry.versions("sentiment")]
        await registry.delete_version("sentiment", "11")
        await registry.delete_version("sentiment", "5")
        after = [v.version for v in await registry.versions("sentiment")]
        return before, after, await register(registry)

    before, after, newest = with_registry(store_url, body)

    assert before == [str(n) for n in range(11, 0, -1)]
    assert after == ["10", "9", "8", "7", "6", "4", "3", "2", "1"]
    assert newest.version == "12"


def test_concurrent_registers_from_separate_registries_get_distinct_versions(store_url: str) -> None:
    async def body() -> tuple[list[str], list[str]]:
        async with opened(store_url) as one, opened(store_url) as two:
            # The model's row is created by whichever register comes first, racing the rest.
            made = await asyncio.gather(*(register(one if i % 2 else two) for i in range(12)))
            return [v.version for v in made], [v.version for v in await one.versions("sentiment")]

    made, stored = run(body())

    assert sorted(made, key=int) == [str(n) for n in range(1, 13)]
    assert stored == [str(n) for n in range(12, 0, -1)]


def test_resolve_takes_a_version_an_alias_or_production_by_default(store_url: str) -> None:
    async def body(registry: Registry) -> dict[str, str]:
        await register_many(registry, 3)
        await registry.set_alias("sentiment", "production", "2")
        await registry.set_alias("sentiment", "canary", "3")
        return {
            "default": (await registry.resolve("sentiment")).version,
            "alias": (await registry.resolve("sentiment", "canary")).version,
            "number": (await registry.resolve("sentiment", "1")).version,
        }

    assert with_registry(store_url, body) == {"default": "2", "alias": "3", "number": "1"}


def test_resolve_names_what_is_missing(store_url: str) -> None:
    async def body(registry: Registry) -> None:
        await register_many(registry, 2)
        await registry.set_alias("sentiment", "canary", "2")
        with pytest.raises(VersionNotFound, match="no model 'nope' in the registry"):
            await registry.resolve("nope", "1")
        with pytest.raises(VersionNotFound, match=r"no version '7' \(the latest is 2\)"):
            await registry.resolve("sentiment", "7")
        with pytest.raises(AliasNotFound, match=r"no alias 'production' \(aliases: canary\)"):
            await registry.resolve("sentiment")
        with pytest.raises(AliasNotFound, match="no alias 'stable'"):
            await registry.resolve("sentiment", "stable")
        for odd in ("", "07", "Bad Name", "x\x00"):
            with pytest.raises((VersionNotFound, AliasNotFound)):
                await registry.resolve("sentiment", odd)
            with pytest.raises(VersionNotFound):
                await registry.versions(odd)

    with_registry(store_url, body)


def test_promote_then_rollback_walks_back_one_promotion_at_a_time(store_url: str) -> None:
    async def body(registry: Registry) -> list[Any]:
        await register_many(registry, 3)
        steps: list[Any] = []
        for version in ("1", "2", "3"):
            event = await registry.set_alias("sentiment", "production", version)
            steps.append((event.action, event.version, event.previous_version))
        for _ in range(2):
            event = await registry.rollback("sentiment", "production")
            steps.append((event.action, event.version, event.previous_version))
            steps.append((await registry.resolve("sentiment")).version)
        with pytest.raises(Conflict, match="no earlier version to roll back to"):
            await registry.rollback("sentiment", "production")
        steps.append((await registry.aliases("sentiment"))["production"])
        return steps

    assert with_registry(store_url, body) == [
        ("promote", "1", None),
        ("promote", "2", "1"),
        ("promote", "3", "2"),
        ("rollback", "2", "3"),
        "2",
        ("rollback", "1", "2"),
        "1",
        "1",
    ]


def test_a_promotion_after_a_rollback_is_undone_by_the_next_rollback(store_url: str) -> None:
    async def body(registry: Registry) -> list[str | None]:
        await register_many(registry, 4)
        for version in ("1", "2", "3"):
            await registry.set_alias("sentiment", "production", version)
        await registry.rollback("sentiment", "production")  # 3 -> 2
        await registry.set_alias("sentiment", "production", "4")
        return [
            (await registry.rollback("sentiment", "production")).version,  # 4 -> 2
            (await registry.rollback("sentiment", "production")).version,  # 2 -> 1
        ]

    assert with_registry(store_url, body) == ["2", "1"]


def test_rollback_skips_versions_deleted_since_they_were_promoted(store_url: str) -> None:
    async def body(registry: Registry) -> tuple[str | None, str | None]:
        await register_many(registry, 3)
        for version in ("1", "2", "3"):
            await registry.set_alias("sentiment", "production", version)
        await registry.delete_version("sentiment", "2")
        event = await registry.rollback("sentiment", "production")
        return event.version, event.previous_version

    assert with_registry(store_url, body) == ("1", "3")


def test_promoting_to_the_current_version_changes_nothing(store_url: str) -> None:
    async def body(registry: Registry) -> tuple[Any, Any, str, str, int]:
        await register_many(registry, 2)
        first = await registry.set_alias("sentiment", "production", "1")
        token = await registry.state_token()
        again = await registry.set_alias("sentiment", "production", "1")
        events = await registry.history("sentiment")
        return first, again, token, await registry.state_token(), len(events)

    first, again, token_before, token_after, events = with_registry(store_url, body)

    assert again == first
    assert token_after == token_before
    assert events == 1


def test_promotion_is_refused_for_unknown_versions_and_bad_alias_names(store_url: str) -> None:
    async def body(registry: Registry) -> dict[str, str]:
        await register_many(registry, 1)
        with pytest.raises(VersionNotFound, match="no version '2'"):
            await registry.set_alias("sentiment", "production", "2")
        with pytest.raises(VersionNotFound, match="no model 'other'"):
            await registry.set_alias("other", "production", "1")
        for bad in ("3", "Production", "", "with space", "a" * 64):
            with pytest.raises(InvalidInput, match="alias"):
                await registry.set_alias("sentiment", bad, "1")
        with pytest.raises(AliasNotFound):
            await registry.rollback("sentiment", "production")
        return await registry.aliases("sentiment")

    assert with_registry(store_url, body) == {}


def test_concurrent_promotions_of_one_alias_record_an_unbroken_chain(store_url: str) -> None:
    async def body() -> tuple[list[Any], str]:
        async with opened(store_url) as one, opened(store_url) as two:
            await register_many(one, 4)
            await asyncio.gather(
                *(
                    (one if i % 2 else two).set_alias("sentiment", "production", str(i % 4 + 1))
                    for i in range(12)
                )
            )
            events = list(reversed(await one.history("sentiment", "production")))
            return events, (await one.resolve("sentiment")).version

    events, current = run(body())

    # Each promotion saw the one before it: the previous version is always the last one set.
    assert events[0].previous_version is None
    for earlier, later in itertools.pairwise(events):
        assert later.previous_version == earlier.version
    assert events[-1].version == current


def test_deleting_an_alias_is_recorded_and_its_history_starts_afresh(store_url: str) -> None:
    async def body(registry: Registry) -> tuple[Any, dict[str, str], list[str]]:
        await register_many(registry, 3)
        await registry.set_alias("sentiment", "canary", "1")
        await registry.set_alias("sentiment", "canary", "2")
        removed = await registry.delete_alias("sentiment", "canary")
        aliases = await registry.aliases("sentiment")
        with pytest.raises(AliasNotFound):
            await registry.rollback("sentiment", "canary")
        with pytest.raises(AliasNotFound):
            await registry.delete_alias("sentiment", "canary")
        await registry.set_alias("sentiment", "canary", "3")
        with pytest.raises(Conflict):
            await registry.rollback("sentiment", "canary")
        actions = [e.action for e in await registry.history("sentiment", "canary")]
        return removed, aliases, actions

    removed, aliases, actions = with_registry(store_url, body)

    assert (removed.action, removed.version, removed.previous_version) == ("delete", None, "2")
    assert aliases == {}
    assert actions == ["promote", "delete", "promote", "promote"]


def test_history_is_newest_first_per_model_and_alias_with_a_limit(store_url: str) -> None:
    async def body(registry: Registry) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        await register_many(registry, 2)
        await register(registry, "language")
        await registry.set_alias("sentiment", "production", "1")
        await registry.set_alias("sentiment", "canary", "2")
        await registry.set_alias("sentiment", "production", "2")
        await registry.set_alias("language", "production", "1")
        everything = await registry.history("sentiment")
        production = await registry.history("sentiment", "production")
        last = await registry.history("sentiment", limit=1)
        with pytest.raises(InvalidInput, match="limit"):
            await registry.history("sentiment", limit=0)
        with pytest.raises(VersionNotFound):
            await registry.history("unknown")
        return everything, production, last, await registry.history("sentiment", "nothing")

    everything, production, last, nothing = with_registry(store_url, body)

    assert [(e.alias, e.version) for e in everything] == [
        ("production", "2"),
        ("canary", "2"),
        ("production", "1"),
    ]
    assert all(e.model == "sentiment" and e.at.tzinfo is UTC for e in everything)
    assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True)
    assert [e.version for e in production] == ["2", "1"]
    assert last == everything[:1]
    assert nothing == []


def test_a_version_in_use_cannot_be_deleted(store_url: str) -> None:
    async def body(registry: Registry) -> tuple[ModelVersion, list[str]]:
        made = await register_many(registry, 3)
        await registry.set_alias("sentiment", "production", "1")
        await registry.set_alias("sentiment", "canary", "1")
        await registry.set_rollout(
            "sentiment", {"routes": [{"ref": "production", "weight": 50}, {"ref": "2", "weight": 50}]}
        )
        with pytest.raises(Conflict, match=r"alias\(es\) canary, production"):
            await registry.delete_version("sentiment", "1")
        with pytest.raises(Conflict, match="rollout of model 'sentiment' sends traffic to version 2"):
            await registry.delete_version("sentiment", "2")
        with pytest.raises(VersionNotFound):
            await registry.delete_version("sentiment", "9")
        deleted = await registry.delete_version("sentiment", "3")
        assert deleted == made[2]
        with pytest.raises(VersionNotFound):
            await registry.get_version("sentiment", "3")
        await registry.clear_rollout("sentiment")
        await registry.delete_version("sentiment", "2")
        return deleted, [v.version for v in await registry.versions("sentiment")]

    deleted, remaining = with_registry(store_url, body)

    assert deleted.artifact_uri.startswith("file:///lake/artifacts/sentiment/")
    assert remaining == ["1"]


GOOD_ROLLOUT = {
    "routes": [{"ref": "production", "weight": 90}, {"ref": 3, "weight": 10}],
    "sticky_header": "X-User-Id",
    "shadow": "canary",
}

BAD_ROLLOUTS: list[tuple[Any, str]] = [
    ([], "must be a JSON object"),
    ({}, "'routes' must be a non-empty array"),
    ({"routes": []}, "'routes' must be a non-empty array"),
    ({"routes": [{"ref": "production", "weight": 100}], "extra": 1}, r"unknown field\(s\): extra"),
    ({"routes": [{"ref": "production", "weight": 90}]}, "must sum to 100, they sum to 90"),
    ({"routes": [{"ref": "production", "weight": -10}, {"ref": "3", "weight": 110}]}, r"routes\[0\].weight"),
    ({"routes": [{"ref": "production", "weight": True}]}, r"routes\[0\].weight must be a whole number"),
    ({"routes": [{"ref": "production", "weight": 50.0}, {"ref": "3", "weight": 50}]}, "whole number"),
    ({"routes": [{"ref": "production"}]}, "exactly 'ref' and 'weight'"),
    ({"routes": [{"ref": "Bad Ref", "weight": 100}]}, "version number or an alias name"),
    ({"routes": [{"ref": "3", "weight": 50}, {"ref": "3", "weight": 50}]}, "given in more than one route"),
    ({"routes": [{"ref": "production", "weight": 100}], "sticky_header": "x y"}, "HTTP header name"),
    ({"routes": [{"ref": "production", "weight": 100}], "shadow": 2.5}, "shadow must be a version number"),
    ({"routes": [{"ref": "stable", "weight": 100}]}, "ref 'stable' does not resolve: .*no alias 'stable'"),
    ({"routes": [{"ref": "9", "weight": 100}]}, "ref '9' does not resolve: .*no version '9'"),
    ({"routes": [{"ref": "production", "weight": 100}], "shadow": "8"}, "ref '8' does not resolve"),
]


def test_rollouts_are_validated_stored_listed_and_cleared(store_url: str) -> None:
    async def body(registry: Registry) -> tuple[Any, Any, list[Any], bool, bool, Any]:
        await register_many(registry, 3)
        await register(registry, "language")
        await registry.set_alias("sentiment", "production", "2")
        await registry.set_alias("sentiment", "canary", "3")
        for spec, message in BAD_ROLLOUTS:
            with pytest.raises(InvalidInput, match=message):
                await registry.set_rollout("sentiment", spec)
        assert await registry.find_rollout("sentiment") is None
        with pytest.raises(VersionNotFound):
            await registry.set_rollout("unknown", GOOD_ROLLOUT)
        stored = await registry.set_rollout("sentiment", GOOD_ROLLOUT)
        with pytest.raises(Conflict, match="sends traffic to alias 'canary'"):
            await registry.delete_alias("sentiment", "canary")
        found = await registry.find_rollout("sentiment")
        listed = await registry.rollouts()
        cleared = await registry.clear_rollout("sentiment")
        cleared_again = await registry.clear_rollout("sentiment")
        return stored, found, listed, cleared, cleared_again, await registry.find_rollout("sentiment")

    stored, found, listed, cleared, cleared_again, after = with_registry(store_url, body)

    assert found == stored
    assert found.to_dict()["routes"] == [{"ref": "production", "weight": 90}, {"ref": "3", "weight": 10}]
    assert found.spec.sticky_header == "x-user-id"
    assert found.spec.shadow == "canary"
    assert found.updated_at.tzinfo is UTC
    assert listed == [stored]
    assert (cleared, cleared_again, after) == (True, False, None)


def test_the_state_token_moves_with_aliases_and_rollouts_only(store_url: str) -> None:
    async def body(registry: Registry) -> list[str]:
        tokens = [await registry.state_token()]
        await register_many(registry, 2)
        tokens.append(await registry.state_token())
        await registry.set_alias("sentiment", "production", "1")
        tokens.append(await registry.state_token())
        await registry.set_alias("sentiment", "production", "2")
        tokens.append(await registry.state_token())
        await registry.rollback("sentiment", "production")
        tokens.append(await registry.state_token())
        await registry.set_rollout("sentiment", {"routes": [{"ref": "production", "weight": 100}]})
        tokens.append(await registry.state_token())
        await registry.clear_rollout("sentiment")
        tokens.append(await registry.state_token())
        await registry.set_alias("sentiment", "canary", "2")
        tokens.append(await registry.state_token())
        await registry.delete_alias("sentiment", "canary")
        tokens.append(await registry.state_token())
        return tokens

    tokens = with_registry(store_url, body)

    assert tokens[0] == tokens[1], "registering a version does not change routing"
    assert len(set(tokens[1:])) == len(tokens) - 1, tokens


def test_a_second_registry_sees_the_first_ones_changes_through_the_token(store_url: str) -> None:
    async def body() -> tuple[str, str, str]:
        async with opened(store_url) as writer, opened(store_url) as server:
            await register_many(writer, 2)
            await writer.set_alias("sentiment", "production", "1")
            before = await server.state_token()
            await writer.set_alias("sentiment", "production", "2")
            after = await server.state_token()
            return before, after, (await server.resolve("sentiment")).version

    before, after, serving = run(body())

    assert before != after
    assert serving == "2"


def test_models_summarises_versions_latest_and_aliases(store_url: str) -> None:
    async def body(registry: Registry) -> list[dict[str, Any]]:
        assert await registry.models() == []
        await register_many(registry, 10)
        await register(registry, "language")
        await registry.set_alias("sentiment", "production", "9")
        await registry.set_alias("sentiment", "canary", "10")
        gone = await register(registry, "scratch")
        await registry.delete_version("scratch", gone.version)
        return [summary.to_dict() for summary in await registry.models()]

    assert with_registry(store_url, body) == [
        {"model": "language", "versions": 1, "latest": "1", "aliases": {}},
        {
            "model": "sentiment",
            "versions": 10,
            "latest": "10",
            "aliases": {"canary": "10", "production": "9"},
        },
    ]


BAD_REGISTRATIONS: list[tuple[dict[str, Any], str]] = [
    ({"model": "Sentiment"}, "model name 'Sentiment'"),
    ({"model": "1st"}, "model name '1st'"),
    ({"artifact_uri": ""}, "artifact_uri must be a non-empty string"),
    ({"artifact_uri": "file:///a\x00b"}, "without NUL"),
    ({"trainer": 3}, "trainer must be a non-empty string"),
    ({"params": ["C", 1]}, "params must be a JSON object"),
    ({"params": {"C": math.nan}}, "params.C is not storable as JSON: nan is not a finite number"),
    ({"params": {"when": datetime.now(UTC)}}, "params.when is not storable as JSON: a datetime"),
    ({"params": {"grid": [1, (2, 3)]}}, r"params.grid\[1\] is not storable as JSON: a tuple"),
    ({"params": {1: "x"}}, "params has a key that is not a string: 1"),
    ({"metrics": {"accuracy": math.inf}}, "metric 'accuracy' must be a finite number"),
    ({"metrics": {"accuracy": "high"}}, "metric 'accuracy' must be a finite number"),
    ({"metrics": {"accuracy": True}}, "metric 'accuracy' must be a finite number"),
    ({"dataset": "reviews"}, "must be 'name@version'"),
]


def test_bad_registrations_are_refused_and_store_nothing(store_url: str) -> None:
    async def body(registry: Registry) -> list[Any]:
        for changes, message in BAD_REGISTRATIONS:
            fields = {"model": "sentiment", **changes}
            with pytest.raises(InvalidInput, match=message):
                await register(registry, **fields)
        return await registry.models()

    assert with_registry(store_url, body) == []


def test_a_training_job_goes_from_pending_to_succeeded(store_url: str) -> None:
    async def body(registry: Registry) -> list[Any]:
        job = await registry.create_training_job(
            "sentiment",
            "reviews@3",
            "tfidf-logreg",
            {"C": 2.0},
            promote_alias="production",
            promote_metric="accuracy",
        )
        seen = [job]
        claimed = await registry.claim_training_job()
        seen.append(claimed)
        seen.append(await registry.claim_training_job())
        seen.append(await registry.update_training_job(job.id, progress=0.5, message="fitting"))
        version = await register(registry)
        seen.append(
            await registry.update_training_job(
                job.id, status="succeeded", version=version.version, metrics={"accuracy": 0.93}
            )
        )
        seen.append(await registry.get_training_job(job.id))
        with pytest.raises(Conflict, match="already succeeded"):
            await registry.update_training_job(job.id, progress=0.1)
        return seen

    created, claimed, nothing_left, progressed, finished, read_back = with_registry(store_url, body)

    assert (created.status, created.progress, created.finished_at) == ("pending", 0.0, None)
    assert created.promote_alias == "production"
    assert created.promote_metric == "accuracy"
    assert claimed.id == created.id
    assert claimed.status == "running"
    assert nothing_left is None
    assert (progressed.progress, progressed.message, progressed.status) == (0.5, "fitting", "running")
    assert finished.status == "succeeded"
    assert finished.progress == 1.0
    assert finished.version == "1"
    assert finished.metrics == {"accuracy": 0.93}
    assert finished.finished_at is not None
    assert read_back == finished
    assert read_back.to_dict()["finished_at"] == finished.finished_at.isoformat()


def test_a_training_job_can_fail_and_bad_updates_are_refused(store_url: str) -> None:
    async def body(registry: Registry) -> Any:
        job = await registry.create_training_job("sentiment", "reviews@3", "tfidf-logreg", {})
        await register(registry, "language")
        with pytest.raises(TrainingJobNotFound, match="no training job with id 'nope'"):
            await registry.update_training_job("nope", progress=0.1)
        with pytest.raises(TrainingJobNotFound):
            await registry.get_training_job("x\x00")
        for progress in (-0.1, 1.5, math.nan, True):
            with pytest.raises(InvalidInput, match=r"progress must be a number from 0\.0 to 1\.0"):
                await registry.update_training_job(job.id, progress=progress)
        with pytest.raises(InvalidInput, match="unknown training job status 'done'"):
            await registry.update_training_job(job.id, status="done")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="not a registered version of model 'sentiment'"):
            await registry.update_training_job(job.id, version="1")
        await registry.update_training_job(job.id, status="running")
        with pytest.raises(Conflict, match="cannot go back to pending"):
            await registry.update_training_job(job.id, status="pending")
        failed = await registry.update_training_job(job.id, status="failed", error="dataset has one class")
        with pytest.raises(Conflict, match="already failed"):
            await registry.update_training_job(job.id, status="running")
        return failed

    failed = with_registry(store_url, body)

    assert failed.status == "failed"
    assert failed.error == "dataset has one class"
    assert failed.finished_at is not None
    assert failed.version is None


def test_bad_training_jobs_are_refused(store_url: str) -> None:
    async def body(registry: Registry) -> list[Any]:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"model": "Bad"}, "model name"),
            ({"dataset": "reviews"}, "name@version"),
            ({"trainer": ""}, "trainer must be a non-empty string"),
            ({"params": {"x": math.inf}}, "params.x is not storable"),
            ({"promote_alias": "7"}, "alias '7'"),
        ]
        for changes, message in cases:
            fields: dict[str, Any] = {
                "model": "sentiment",
                "dataset": "reviews@3",
                "trainer": "tfidf-logreg",
                "params": {},
                **changes,
            }
            with pytest.raises(InvalidInput, match=message):
                await registry.create_training_job(**fields)
        return await registry.list_training_jobs()

    assert with_registry(store_url, body) == []


def test_training_jobs_list_newest_first_by_model_and_status(store_url: str) -> None:
    async def body(registry: Registry) -> dict[str, list[str]]:
        made = [
            await registry.create_training_job(model, "reviews@3", "tfidf-logreg", {})
            for model in ("sentiment", "language", "sentiment")
        ]
        await registry.claim_training_job()
        with pytest.raises(InvalidInput, match="unknown training job status"):
            await registry.list_training_jobs(status="done")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="limit"):
            await registry.list_training_jobs(limit=MAX_LIST_LIMIT + 1)
        ids = {job.id: name for job, name in zip(made, ("a", "b", "c"), strict=True)}

        def names(jobs: list[Any]) -> list[str]:
            return [ids[job.id] for job in jobs]

        return {
            "all": names(await registry.list_training_jobs()),
            "sentiment": names(await registry.list_training_jobs(model="sentiment")),
            "pending": names(await registry.list_training_jobs(status="pending")),
            "running": names(await registry.list_training_jobs(status="running")),
            "limited": names(await registry.list_training_jobs(limit=1)),
            "bad model": names(await registry.list_training_jobs(model="Bad Name")),
        }

    assert with_registry(store_url, body) == {
        "all": ["c", "b", "a"],
        "sentiment": ["c", "a"],
        "pending": ["c", "b"],
        "running": ["a"],
        "limited": ["c"],
        "bad model": [],
    }


def test_concurrent_claims_never_hand_out_a_job_twice(store_url: str) -> None:
    async def body() -> tuple[list[str], list[str]]:
        async with opened(store_url) as one, opened(store_url) as two:
            made = [await one.create_training_job("sentiment", "reviews@3", "t", {}) for _ in range(4)]
            claims = await asyncio.gather(*((one if i % 2 else two).claim_training_job() for i in range(8)))
            return [job.id for job in made], [job.id for job in claims if job is not None]

    made, claimed = run(body())

    assert sorted(claimed) == sorted(made)


def test_a_closed_registry_raises_store_error(store_url: str) -> None:
    async def body() -> None:
        registry = make_registry(store_url)
        with pytest.raises(StoreError, match="model registry is not open"):
            await registry.models()
        await registry.open()
        await register(registry)
        await registry.close()
        await registry.close()
        with pytest.raises(StoreError, match="not open"):
            await registry.state_token()

    run(body())


def test_a_database_from_before_the_registry_gets_it_when_the_registry_opens_it(store_url: str) -> None:
    async def body() -> tuple[list[int], list[int], list[tuple[int, str]], str]:
        engine = await connect_store_engine(parse_store_url(store_url))
        try:
            await migrate(engine, MIGRATIONS[:2])
            before = await applied_migrations(engine)
            async with opened(store_url) as registry:
                version = (await register(registry)).version
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(schema_migrations.c.version, schema_migrations.c.name).order_by(
                        schema_migrations.c.version
                    )
                )
                recorded = [(row.version, row.name) for row in rows]
            return before, await applied_migrations(engine), recorded, version
        finally:
            await engine.dispose()

    before, after, recorded, version = run(body())

    assert before == [1, 2]
    assert after == [m.version for m in MIGRATIONS]
    assert (3, "registry") in recorded
    assert version == "1"
