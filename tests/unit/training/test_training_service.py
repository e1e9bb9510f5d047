"""Train -> register -> promote -> rollback through the training service, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.lake import Lake
from modelfleet.registry import Registry, make_registry
from modelfleet.training.service import execute_job

SMS = (
    Path(__file__).resolve().parents[4] / "shared" / "data" / "sms-spam-collection" / "SMSSpamCollection.tsv"
)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    source = tmp_path / "sms.csv"
    with SMS.open(encoding="utf-8", newline="") as raw, source.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for index, row in enumerate(csv.reader(raw, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if index == 1200:
                break
            writer.writerow([row[1], row[0]])
    lake = Lake(str(tmp_path / "lake"))
    lake.ingest(source, "sms", text_column="text", label_column="label")
    (tmp_path / "texts.csv").write_text("text\nhello there\nfree prize now\n", encoding="utf-8")
    lake.ingest(tmp_path / "texts.csv", "texts")
    return lake


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
    else:
        server = request.getfixturevalue("postgres_server")
        name = server.create_database()
        try:
            yield server.url_of(name)
        finally:
            server.drop_database(name)


async def _train(
    registry: Registry, lake: Lake, dataset: str, params: dict[str, object], **promote: str
) -> dict[str, Any]:
    job = await registry.create_training_job(
        "spam", dataset, "tfidf-logreg", params,
        promote_alias=promote.get("alias"), promote_metric=promote.get("metric"),
    )  # fmt: skip
    job = await registry.update_training_job(job.id, status="running")
    return (await execute_job(job, registry, lake)).to_dict()


def test_train_register_promote_and_rollback(lake: Lake, registry_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = make_registry(registry_url)
        await registry.open()
        try:
            ref = lake.get("sms").ref
            first = await _train(registry, lake, ref, {"C": 10}, alias="production")
            assert first["status"] == "succeeded", first
            assert first["version"] == "1"
            assert first["metrics"]["macro_f1"] > 0.85
            version = await registry.get_version("spam", "1")
            assert version.dataset == ref
            assert version.metrics["accuracy"] == first["metrics"]["accuracy"]
            artifact = lake.get_artifact(version.artifact_uri, tmp_path / "cache")
            assert (artifact / "manifest.json").is_file()
            assert (await registry.aliases("spam"))["production"] == "1"

            # A weaker model (heavy regularisation) is registered but does not take production.
            weak = await _train(registry, lake, ref, {"C": 0.001}, alias="production", metric="macro_f1")
            assert weak["status"] == "succeeded"
            assert "not promoted" in weak["message"]
            assert (await registry.aliases("spam"))["production"] == "1"

            # Promoted unconditionally, then rolled back.
            third = await _train(registry, lake, ref, {"C": 3}, alias="production")
            assert (await registry.aliases("spam"))["production"] == third["version"]
            await registry.rollback("spam", "production")
            assert (await registry.aliases("spam"))["production"] == "1"

            # Bad data: the job records why and production stays where it was.
            failed = await _train(registry, lake, lake.get("texts").ref, {}, alias="production")
            assert failed["status"] == "failed"
            assert "label column 'label' not found" in failed["error"]
            assert (await registry.aliases("spam"))["production"] == "1"
        finally:
            await registry.close()

    asyncio.run(scenario())
