"""The jobs API at the gateway.

POST   /v1/jobs        {"pipeline": "triage" | "model": "sentiment", "inputs": [...] | "input": {...},
                        "callback_url": "http://..."}  -> 202 {"job_id", ...} at once
GET    /v1/jobs/{id}[?offset=&limit=]                  -> status, progress, results (paged)
DELETE /v1/jobs/{id}                                   -> cancel a job that has not finished
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from modelfleet.broker.broker import Broker
from modelfleet.errors import InvalidInput, MalformedRequest, ModelfleetError, UpstreamUnavailable
from modelfleet.gateway.pipelines import check_inputs
from modelfleet.http import HTTPError
from modelfleet.jobs.messages import ChunkMessage, job_view
from modelfleet.settings import BrokerSettings, JobSettings
from modelfleet.store.jobs import TERMINAL, Job, JobStore

log = logging.getLogger("modelfleet.gateway")


class JobService:
    """Accepts jobs (stored, then queued chunk by chunk) and reports on them."""

    def __init__(
        self,
        store: JobStore,
        broker: Broker,
        models: set[str],
        pipelines: set[str],
        broker_settings: BrokerSettings,
        settings: JobSettings,
        max_inputs: int = 1_000_000,
        has_workers: bool = True,
    ) -> None:
        self.store = store
        self.broker = broker
        self.models = models
        self.pipelines = pipelines
        self.queue = broker_settings.queue
        self.settings = settings
        self.max_inputs = max_inputs
        self.has_workers = has_workers

    async def start(self) -> None:
        await self.store.open()
        await self.broker.open()

    async def stop(self) -> None:
        await self.broker.close()
        await self.store.close()

    def _target(self, request: dict[str, Any]) -> tuple[str, str]:
        given = [(kind, request[kind]) for kind in ("model", "pipeline") if kind in request]
        if len(given) != 1:
            raise InvalidInput("name exactly one target: 'model' or 'pipeline'")
        kind, name = given[0]
        known = self.models if kind == "model" else self.pipelines
        if not isinstance(name, str) or name not in known:
            raise InvalidInput(f"unknown {kind} {name!r} (known: {', '.join(sorted(known)) or 'none'})")
        return kind, name

    async def submit(self, body: bytes) -> bytes:
        """Store the job, queue its chunks, and return its description; raises on a bad request."""
        if not self.has_workers:
            raise UpstreamUnavailable(
                "this fleet has no job-worker service, so no job would ever run; "
                "add one to fleet.yaml (a service with kind: job-worker)"
            )
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise MalformedRequest(f"malformed JSON: {err}") from None
        if not isinstance(request, dict):
            raise InvalidInput("the body must be a JSON object naming a target and its inputs")
        unknown = set(request) - {"model", "pipeline", "inputs", "input", "callback_url"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        kind, target = self._target(request)
        if ("inputs" in request) == ("input" in request):
            raise InvalidInput("give either 'input' (one object) or 'inputs' (an array)")
        inputs = check_inputs(request.get("inputs", request.get("input")), self.max_inputs)
        callback = request.get("callback_url")
        if callback is not None:
            parts = urlsplit(str(callback))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidInput("callback_url must be an http:// or https:// URL")
        now = datetime.now(UTC)
        job = Job(
            id=uuid.uuid4().hex,
            target_kind=kind,  # type: ignore[arg-type]
            target=target,
            status="pending",
            total=len(inputs),
            done=0,
            failed=0,
            callback_url=callback,
            error=None,
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        await self.store.create_job(job)
        size = self.settings.chunk_size
        try:
            for offset in range(0, len(inputs), size):
                chunk = ChunkMessage(job.id, kind, target, offset, inputs[offset : offset + size])
                await self.broker.publish(self.queue, chunk.encode(), message_id=chunk.message_id)
        except ModelfleetError as err:
            # Chunks already queued will run; the job says why the rest never will.
            await self.store.fail_job(job.id, f"could not queue the job: {err}")
            raise
        return orjson.dumps({**job_view(job), "url": f"/v1/jobs/{job.id}"})

    async def describe(self, job_id: str, query: bytes) -> bytes:
        job = await self.store.get_job(job_id)
        options = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
        try:
            offset = int(options.get("offset", "0"))
            limit = int(options.get("limit", "100"))
        except ValueError:
            raise HTTPError(400, "offset and limit must be whole numbers") from None
        if offset < 0 or not 1 <= limit <= 1000:
            raise HTTPError(400, "offset must be >= 0 and limit between 1 and 1000")
        results = await self.store.results(job_id, offset, limit)
        body: dict[str, Any] = job_view(job)
        body["results"] = [r.to_dict() for r in results]
        body["next_offset"] = offset + limit if offset + limit < job.done else None
        return orjson.dumps(body)

    async def cancel(self, job_id: str) -> bytes:
        job = await self.store.get_job(job_id)
        if job.status in TERMINAL:
            raise HTTPError(409, f"job {job_id} is already {job.status}")
        return orjson.dumps(job_view(await self.store.cancel_job(job_id)))
