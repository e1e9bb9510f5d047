"""The jobs API at the gateway.

POST   /v1/jobs        {"pipeline": "triage" | "model": "sentiment", "inputs": [...] | "input": {...},
                        "callback_url": "http://..."}  -> 202 {"job_id", ...} at once
POST   /v1/jobs        {"model" | "pipeline": ..., "input_file": "/abs/in.jsonl",
                        "output_file": "/abs/out.csv", "format": "auto", "chunk_size": 1000,
                        "concurrency": 4, "callback_url": ...}
                                                       -> 202: a batch job over a file on the fleet's machine
GET    /v1/jobs/{id}[?offset=&limit=]                  -> status, progress, results (paged) or batch summary
DELETE /v1/jobs/{id}                                   -> cancel a job that has not finished

Accepting a job is group-committed: submissions that arrive while the previous group is being
stored and queued wait and go together, as one transaction creating their jobs and as few broker
messages as their inputs fill (``jobs.chunk_size`` inputs a message). Under load the store and the
broker pay per group, not per job; an idle gateway stores and queues a lone job at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from modelfleet.batch.files import BatchConfigError, detect_format
from modelfleet.broker.broker import Broker
from modelfleet.errors import InvalidInput, MalformedRequest, ModelfleetError, UpstreamUnavailable
from modelfleet.gateway.pipelines import check_inputs
from modelfleet.http import HTTPError
from modelfleet.jobs.messages import BatchMessage, Chunk, ChunkMessage, job_view, pack
from modelfleet.settings import BrokerSettings, JobSettings
from modelfleet.store.errors import JobRejected, StoreError
from modelfleet.store.jobs import TERMINAL, BatchSpec, Job, JobStore

log = logging.getLogger("modelfleet.gateway")

_INPUT_FIELDS = {"model", "pipeline", "inputs", "input", "callback_url"}
_BATCH_FIELDS = {"model", "pipeline", "input_file", "output_file", "format", "chunk_size", "concurrency"}
_BATCH_FIELDS |= {"callback_url"}
MAX_BATCH_CHUNK_SIZE = 10_000
MAX_BATCH_CONCURRENCY = 64


@dataclass
class _Submission:
    """A job waiting to be stored and queued, with what its caller waits on."""

    job: Job
    inputs: list[Any] | None
    done: asyncio.Future[None]
    error: BaseException | None = field(default=None)


class JobService:
    """Accepts jobs (stored, then queued) and reports on them.

    ``max_group`` bounds how many submissions are stored and queued together.
    """

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
        max_group: int = 512,
    ) -> None:
        self.store = store
        self.broker = broker
        self.models = models
        self.pipelines = pipelines
        self.queue = broker_settings.queue
        self.settings = settings
        self.max_inputs = max_inputs
        self.has_workers = has_workers
        self.max_group = max_group
        self.groups = 0
        self._waiting: deque[_Submission] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self.store.open()
        await self.broker.open()

    async def stop(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self.broker.close()
        await self.store.close()

    # ------------------------------------------------------------------------------------ submit

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
        """Store the job, queue it, and return its description; raises on a bad request."""
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
        batch = "input_file" in request or "output_file" in request
        unknown = set(request) - (_BATCH_FIELDS if batch else _INPUT_FIELDS)
        if unknown:
            takes_inputs = batch and unknown & {"inputs", "input"}
            hint = " (a batch job over a file takes no inputs)" if takes_inputs else ""
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}{hint}")
        kind, target = self._target(request)
        inputs: list[Any] | None = None
        spec: BatchSpec | None = None
        if batch:
            spec = _batch_spec(request)
        else:
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
            total=None if inputs is None else len(inputs),
            done=0,
            failed=0,
            callback_url=callback,
            error=None,
            created_at=now,
            updated_at=now,
            finished_at=None,
            batch=spec,
        )
        await self._accept(job, inputs)
        return orjson.dumps({**job_view(job), "url": f"/v1/jobs/{job.id}"})

    async def _accept(self, job: Job, inputs: list[Any] | None) -> None:
        """Return once the job is stored and queued with its group; raises what stopped it."""
        if self._closed:
            raise UpstreamUnavailable("the gateway is shutting down; submit the job again")
        submission = _Submission(job, inputs, asyncio.get_running_loop().create_future())
        self._waiting.append(submission)
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="modelfleet-job-intake")
        # Shielded: a client that hangs up does not withdraw a job that may already be stored.
        await asyncio.shield(submission.done)

    async def _drain(self) -> None:
        try:
            while True:
                if not self._waiting:
                    if self._closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                count = min(self.max_group, len(self._waiting))
                group = [self._waiting.popleft() for _ in range(count)]
                try:
                    await self._store_and_queue(group)
                except Exception as err:
                    log.exception("accepting %d job(s) failed", len(group))
                    _settle(group, err)
                except BaseException:
                    _settle(group, StoreError("the gateway stopped; the job may or may not be stored"))
                    raise
                _settle(group, None)
        finally:
            _settle(list(self._waiting), UpstreamUnavailable("the gateway is shutting down; submit again"))
            self._waiting.clear()

    async def _store_and_queue(self, group: list[_Submission]) -> None:
        self.groups += 1
        stored = await self._create(group)
        messages: list[tuple[ChunkMessage | BatchMessage, list[_Submission]]] = []
        by_target: dict[tuple[str, str], list[tuple[Chunk, _Submission]]] = {}
        size = self.settings.chunk_size
        for submission in stored:
            job = submission.job
            if job.batch is not None:
                batch = BatchMessage(job.id, job.target_kind, job.target, job.batch)
                messages.append((batch, [submission]))
                continue
            assert submission.inputs is not None
            chunks = by_target.setdefault((job.target_kind, job.target), [])
            for offset in range(0, len(submission.inputs), size):
                part = submission.inputs[offset : offset + size]
                chunks.append((Chunk(job.id, offset, part, len(submission.inputs)), submission))
        for (kind, target), chunks in by_target.items():
            owner = {id(chunk): submission for chunk, submission in chunks}
            for message in pack(kind, target, [chunk for chunk, _ in chunks], size):
                by_id = {owner[id(c)].job.id: owner[id(c)] for c in message.chunks}
                messages.append((message, list(by_id.values())))
        outcomes = await asyncio.gather(
            *(self.broker.publish(self.queue, m.encode(), message_id=m.message_id) for m, _ in messages),
            return_exceptions=True,
        )
        failed: dict[str, tuple[_Submission, BaseException]] = {}
        for (_, in_message), outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                for submission in in_message:
                    failed.setdefault(submission.job.id, (submission, outcome))
        for submission, err in failed.values():
            # Chunks already queued will run; the job says why the rest never will.
            try:
                await self.store.fail_job(submission.job.id, f"could not queue the job: {err}")
            except Exception:
                log.exception("could not mark job %s failed", submission.job.id)
            submission.error = err

    async def _create(self, group: list[_Submission]) -> list[_Submission]:
        """Store the group's jobs in one transaction; the submissions whose job was stored.

        When the database refuses one job's content the others are stored one by one, so only
        that submission fails. Any other failure fails the whole group.
        """
        try:
            await self.store.create_jobs([s.job for s in group])
            return group
        except JobRejected:
            if len(group) == 1:
                raise
        stored = []
        for submission in group:
            try:
                await self.store.create_job(submission.job)
                stored.append(submission)
            except JobRejected as err:
                submission.error = err
        return stored

    # ------------------------------------------------------------------------------------ read, cancel

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
        body: dict[str, Any] = job_view(job)
        if job.batch is not None:
            # A batch job's rows' results are in its output file, not in the store.
            body["results"] = []
            body["next_offset"] = None
            return orjson.dumps(body)
        results = await self.store.results(job_id, offset, limit)
        body["results"] = [r.to_dict() for r in results]
        body["next_offset"] = offset + limit if offset + limit < job.done else None
        return orjson.dumps(body)

    async def cancel(self, job_id: str) -> bytes:
        job = await self.store.get_job(job_id)
        if job.status in TERMINAL:
            raise HTTPError(409, f"job {job_id} is already {job.status}")
        return orjson.dumps(job_view(await self.store.cancel_job(job_id)))


def _settle(group: list[_Submission], err: BaseException | None) -> None:
    for submission in group:
        if submission.done.done():
            continue
        failure = submission.error or err
        if failure is None:
            submission.done.set_result(None)
            continue
        submission.done.set_exception(_own_copy(failure))
        # Retrieved here, so a caller that went away leaves no "exception never retrieved".
        submission.done.exception()


def _own_copy(err: BaseException) -> BaseException:
    """One exception object per waiting caller: each raises it in its own task and traceback."""
    kind = type(err) if isinstance(err, ModelfleetError) else StoreError
    try:
        copy = kind(str(err) if kind is type(err) else f"accepting the job failed: {err!r}")
    except TypeError:
        copy = StoreError(f"accepting the job failed: {err}")
    copy.__cause__ = err
    return copy


def _batch_spec(request: dict[str, Any]) -> BatchSpec:
    """The batch job's description, checked against the fleet's file system; InvalidInput says why not."""
    paths: dict[str, Path] = {}
    for name in ("input_file", "output_file"):
        value = request.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"a batch job needs '{name}': an absolute path on the fleet's machine")
        if "\x00" in value or not os.path.isabs(value):
            raise InvalidInput(f"{name} must be an absolute path on the fleet's machine, not {value!r}")
        paths[name] = Path(os.path.normpath(value))
    source, target = paths["input_file"], paths["output_file"]
    if not source.is_file():
        raise InvalidInput(
            f"input_file {str(source)!r} does not exist on the fleet's machine (or is no file)"
        )
    if not target.parent.is_dir():
        raise InvalidInput(f"the folder of output_file, {str(target.parent)!r}, does not exist")
    if target == source or (target.exists() and target.resolve() == source.resolve()):
        raise InvalidInput("output_file must not be the input_file")
    given = request.get("format", "auto")
    if not isinstance(given, str):
        raise InvalidInput("format must be one of auto, csv, jsonl, parquet")
    try:
        fmt = detect_format(source, given)
        detect_format(target)
    except BatchConfigError as err:
        raise InvalidInput(str(err).replace("pass --format", "give 'format'")) from None
    numbers = {}
    # The defaults of `modelfleet batch run`.
    limits = (("chunk_size", 1000, MAX_BATCH_CHUNK_SIZE), ("concurrency", 4, MAX_BATCH_CONCURRENCY))
    for name, default, most in limits:
        value = request.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise InvalidInput(f"{name} must be a whole number from 1 to {most}")
        numbers[name] = value
    return BatchSpec(str(source), str(target), fmt, numbers["chunk_size"], numbers["concurrency"])
