"""The training API at the gateway: training jobs are stored in the registry, then queued for a trainer.

POST /v1/training/jobs   {"model": "intent", "dataset": "banking77[@version]", "trainer": "tfidf-logreg",
                          "params": {...}, "promote": {"alias": "production", "metric": "accuracy"}}
                         -> 202 {"id", "status": "pending", ...} at once
GET  /v1/training/jobs[?model=&status=&limit=]      newest first
GET  /v1/training/jobs/{id}                          status, progress, message, version, metrics, error
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import orjson

from modelfleet.broker.broker import Broker
from modelfleet.errors import InvalidInput, MalformedRequest, ModelfleetError, UpstreamUnavailable
from modelfleet.http import HTTPError
from modelfleet.registry import Registry

_FIELDS = frozenset({"model", "dataset", "trainer", "params", "promote"})
DEFAULT_TRAINER = "tfidf-logreg"


class TrainingAPI:
    """Accepts training jobs and reports on them; ``has_trainers`` is False when no trainer service runs."""

    def __init__(
        self, registry: Registry, broker: Broker, queue: str, lake: Any, has_trainers: bool = True
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.queue = queue
        self.lake = lake
        self.has_trainers = has_trainers

    async def start(self) -> None:
        await self.broker.open()

    async def stop(self) -> None:
        await self.broker.close()

    async def handle(self, method: str, parts: list[str], query: bytes, body: bytes) -> tuple[int, bytes]:
        """``parts`` is the path after /v1/training; raises HTTPError and domain errors."""
        if not parts or parts[0] != "jobs" or len(parts) > 2:
            raise HTTPError(404, "no such training resource; use /v1/training/jobs[/{id}]")
        if len(parts) == 2:
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {method} not allowed here; use GET")
            return 200, orjson.dumps((await self.registry.get_training_job(parts[1])).to_dict())
        if method in ("GET", "HEAD"):
            options = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
            try:
                limit = int(options.get("limit", "100"))
            except ValueError:
                raise HTTPError(400, "limit must be a whole number") from None
            status: Any = options.get("status")
            found = await self.registry.list_training_jobs(options.get("model"), status, limit)
            return 200, orjson.dumps({"jobs": [job.to_dict() for job in found]})
        if method != "POST":
            raise HTTPError(405, f"method {method} not allowed here; use GET or POST")
        return 202, await self.submit(body)

    async def submit(self, body: bytes) -> bytes:
        if not self.has_trainers:
            raise UpstreamUnavailable(
                "this fleet has no trainer service, so no training job would ever run; add one to "
                "fleet.yaml (a service with kind: trainer) or train locally: modelfleet train --local"
            )
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise MalformedRequest(f"malformed JSON: {err}") from None
        if not isinstance(request, dict):
            raise InvalidInput("the body must be a JSON object with model, dataset and trainer")
        unknown = set(request) - _FIELDS
        if unknown:
            raise InvalidInput(
                f"unknown field(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(_FIELDS))})"
            )
        for field in ("model", "dataset"):
            if not isinstance(request.get(field), str) or not request[field]:
                raise InvalidInput(f"'{field}' is required and must be a string")
        trainer = request.get("trainer", DEFAULT_TRAINER)
        check_trainer(trainer)
        params = request.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidInput("'params' must be a JSON object")
        alias, metric = parse_promote(request.get("promote"))
        dataset, test_dataset = await asyncio.to_thread(
            check_datasets, self.lake, request["dataset"], params.get("test_dataset")
        )
        if test_dataset is not None:
            params = {**params, "test_dataset": test_dataset}
        job = await self.registry.create_training_job(
            request["model"], dataset, trainer, params, promote_alias=alias, promote_metric=metric
        )
        try:
            await self.broker.publish(self.queue, job.id.encode(), message_id=job.id)
        except ModelfleetError as err:
            await self.registry.update_training_job(job.id, status="failed", error=f"could not queue: {err}")
            raise
        return orjson.dumps({**job.to_dict(), "url": f"/v1/training/jobs/{job.id}"})


def check_trainer(trainer: object) -> str:
    """The trainer's name; raises InvalidInput listing the known trainers."""
    from modelfleet.training.trainers import TRAINERS

    if not isinstance(trainer, str) or trainer not in TRAINERS:
        raise InvalidInput(f"unknown trainer {trainer!r} (known: {', '.join(sorted(TRAINERS))})")
    return trainer


def parse_promote(value: object) -> tuple[str | None, str | None]:
    """``{"alias": "production", "metric": "accuracy"}`` (metric optional), or None."""
    if value is None:
        return None, None
    if not isinstance(value, dict) or not set(value) <= {"alias", "metric"} or "alias" not in value:
        raise InvalidInput("'promote' must be an object with 'alias' and optionally 'metric'")
    alias, metric = value["alias"], value.get("metric")
    if not isinstance(alias, str) or (metric is not None and not isinstance(metric, str)):
        raise InvalidInput("'promote.alias' and 'promote.metric' must be strings")
    return alias, metric


def check_datasets(lake: Any, dataset: str, test_dataset: object) -> tuple[str, str | None]:
    """The datasets as pinned ``name@version`` refs (a bare name means its newest version).

    Pinned at submit time, so a job trains on the data that was there when it was asked for.
    Raises DatasetNotFound unless the dataset (and test dataset) are in the lake.
    """
    from modelfleet.lake import parse_ref

    if test_dataset is not None and not isinstance(test_dataset, str):
        raise InvalidInput("params.test_dataset must be a dataset name[@version]")
    pinned: list[str | None] = []
    for ref in (dataset, test_dataset):
        if ref is None:
            pinned.append(None)
            continue
        name, version = parse_ref(ref)
        pinned.append(lake.get(name, version).ref)
    assert pinned[0] is not None
    return pinned[0], pinned[1]
