"""The model registry on SQLite or PostgreSQL: one SQLAlchemy Core implementation for both."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Integer, Row, Table, delete, func, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from modelfleet.registry.errors import (
    AliasNotFound,
    Conflict,
    InvalidInput,
    RegistryRejected,
    TrainingJobNotFound,
    VersionNotFound,
)
from modelfleet.registry.registry import (
    DEFAULT_ALIAS,
    MAX_LIST_LIMIT,
    TRAINING_STATUSES,
    TRAINING_TERMINAL,
    AliasAction,
    AliasEvent,
    ModelSummary,
    ModelVersion,
    Rollout,
    RolloutSpec,
    TrainingJob,
    TrainingStatus,
    VersionStatus,
    check_alias,
    check_dataset,
    check_json_object,
    check_metrics,
    check_model_name,
    check_text,
    is_name,
    is_version_number,
)
from modelfleet.store.engine import Backend, write_transaction
from modelfleet.store.lifecycle import StoreEngine
from modelfleet.store.schema import (
    alias_events,
    model_aliases,
    model_versions,
    registered_models,
    rollouts,
    training_jobs,
)
from modelfleet.store.translation import printable, translated


class SqlRegistry:
    """The model registry in SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``).

    Shares the database and its migrations with the run and job stores. Every change to a
    model's versions, aliases or rollout first locks the model's row in ``registered_models``
    (SQLite's write lock does it on SQLite), so concurrent promotions, rollbacks and deletions of
    one model take turns and each sees the others' effects. ``busy_timeout_ms`` is how long a
    SQLite writer waits for another's lock. Raises ConfigError for a URL it cannot use.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000) -> None:
        self._engine = StoreEngine(url, busy_timeout_ms, "model registry", RegistryRejected)

    @property
    def backend(self) -> Backend:
        return self._engine.backend

    async def open(self) -> None:
        await self._engine.open()

    async def close(self) -> None:
        await self._engine.close()

    async def register(
        self,
        model: str,
        artifact_uri: str,
        trainer: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        dataset: str | None = None,
    ) -> ModelVersion:
        check_model_name(model)
        uri = cast(str, check_text("artifact_uri", artifact_uri))
        trainer_name = cast(str, check_text("trainer", trainer))
        stored_params = check_json_object("params", params)
        stored_metrics = check_metrics(metrics)
        lineage = check_dataset(dataset)
        engine = self._engine.get()
        now = datetime.now(UTC)
        # One statement creates the model's row or counts on from it, under the row's lock, so
        # concurrent registrations get distinct numbers on both backends.
        number = self._upsert(
            registered_models,
            {"model": model, "last_version": 1, "generation": 0, "created_at": now},
            [registered_models.c.model],
            {"last_version": registered_models.c.last_version + 1},
        ).returning(registered_models.c.last_version)
        with translated(f"registering a version of model {model!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                version = str((await connection.execute(number)).scalar_one())
                registered = ModelVersion(
                    model=model,
                    version=version,
                    artifact_uri=uri,
                    trainer=trainer_name,
                    params=stored_params,
                    metrics=stored_metrics,
                    dataset=lineage,
                    status="ready",
                    created_at=now,
                )
                await connection.execute(model_versions.insert().values(_version_row(registered)))
        return registered

    async def models(self) -> list[ModelSummary]:
        engine = self._engine.get()
        counts = (
            select(
                model_versions.c.model,
                func.count().label("versions"),
                func.max(sql_cast(model_versions.c.version, Integer)).label("latest"),
            )
            .group_by(model_versions.c.model)
            .order_by(model_versions.c.model)
        )
        with translated("listing registered models", RegistryRejected):
            async with engine.connect() as connection:
                rows = (await connection.execute(counts)).all()
                alias_rows = (await connection.execute(select(model_aliases))).all()
        aliases: dict[str, dict[str, str]] = {}
        for row in sorted(alias_rows, key=lambda r: (r.model, r.alias)):
            aliases.setdefault(row.model, {})[row.alias] = row.version
        return [
            ModelSummary(row.model, row.versions, str(row.latest), aliases.get(row.model, {})) for row in rows
        ]

    async def versions(self, model: str) -> list[ModelVersion]:
        engine = self._engine.get()
        query = (
            select(model_versions)
            .where(model_versions.c.model == model)
            .order_by(sql_cast(model_versions.c.version, Integer).desc())
        )
        with translated(f"listing versions of model {model!r}", RegistryRejected):
            async with engine.connect() as connection:
                await _model_row(connection, model)
                rows = (await connection.execute(query)).all()
        return [_version_from(row) for row in rows]

    async def get_version(self, model: str, version: str) -> ModelVersion:
        engine = self._engine.get()
        with translated(f"reading version {version!r} of model {model!r}", RegistryRejected):
            async with engine.connect() as connection:
                return await _version_of(connection, model, version)

    async def resolve(self, model: str, ref: str | None = None) -> ModelVersion:
        engine = self._engine.get()
        with translated(f"resolving {ref!r} of model {model!r}", RegistryRejected):
            async with engine.connect() as connection:
                return await _resolve(connection, model, DEFAULT_ALIAS if ref is None else ref)

    async def aliases(self, model: str) -> dict[str, str]:
        engine = self._engine.get()
        with translated(f"reading aliases of model {model!r}", RegistryRejected):
            async with engine.connect() as connection:
                await _model_row(connection, model)
                return await _aliases_of(connection, model)

    async def set_alias(self, model: str, alias: str, version: str) -> AliasEvent:
        check_alias(alias)
        engine = self._engine.get()
        now = datetime.now(UTC)
        with translated(f"promoting version {version!r} of model {model!r} to {alias!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                await _model_row(connection, model, lock=True)
                await _version_of(connection, model, version)
                current = await _alias_version(connection, model, alias)
                if current == version:
                    last = await _last_event(connection, model, alias)
                    if last is not None:
                        return last
                await connection.execute(
                    self._upsert(
                        model_aliases,
                        {"model": model, "alias": alias, "version": version, "updated_at": now},
                        [model_aliases.c.model, model_aliases.c.alias],
                        {"version": version, "updated_at": now},
                    )
                )
                event = await _record(connection, model, alias, "promote", version, current, now)
                await _bump(connection, model)
        return event

    async def rollback(self, model: str, alias: str) -> AliasEvent:
        engine = self._engine.get()
        now = datetime.now(UTC)
        with translated(f"rolling back alias {alias!r} of model {model!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                await _model_row(connection, model, lock=True)
                current = await _alias_version(connection, model, alias)
                if current is None:
                    raise await _alias_not_found(connection, model, alias)
                history = await connection.execute(
                    select(alias_events.c.action, alias_events.c.version)
                    .where(alias_events.c.model == model, alias_events.c.alias == alias)
                    .order_by(alias_events.c.id)
                )
                stack = _promotion_stack((row.action, row.version) for row in history)
                existing = set(
                    (
                        await connection.execute(
                            select(model_versions.c.version).where(model_versions.c.model == model)
                        )
                    ).scalars()
                )
                # The top is the version the alias points at now; below it, the ones it was
                # promoted from, skipping versions deleted since.
                while stack and (stack[-1] == current or stack[-1] not in existing):
                    stack.pop()
                if not stack:
                    raise Conflict(
                        f"alias {alias!r} of model {model!r} has no earlier version to roll back to "
                        f"(it points at version {current})"
                    )
                target = stack[-1]
                await connection.execute(
                    update(model_aliases)
                    .where(model_aliases.c.model == model, model_aliases.c.alias == alias)
                    .values(version=target, updated_at=now)
                )
                event = await _record(connection, model, alias, "rollback", target, current, now)
                await _bump(connection, model)
        return event

    async def delete_alias(self, model: str, alias: str) -> AliasEvent:
        engine = self._engine.get()
        now = datetime.now(UTC)
        with translated(f"deleting alias {alias!r} of model {model!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                await _model_row(connection, model, lock=True)
                current = await _alias_version(connection, model, alias)
                if current is None:
                    raise await _alias_not_found(connection, model, alias)
                rollout = await _rollout_of(connection, model)
                if rollout is not None and alias in rollout.spec.refs():
                    raise Conflict(
                        f"the rollout of model {model!r} sends traffic to alias {alias!r}; "
                        "change or clear the rollout first"
                    )
                gone = delete(model_aliases).where(
                    model_aliases.c.model == model, model_aliases.c.alias == alias
                )
                await connection.execute(gone)
                event = await _record(connection, model, alias, "delete", None, current, now)
                await _bump(connection, model)
        return event

    async def history(self, model: str, alias: str | None = None, limit: int = 100) -> list[AliasEvent]:
        _check_limit(limit)
        engine = self._engine.get()
        query = select(alias_events).where(alias_events.c.model == model)
        if alias is not None:
            query = query.where(alias_events.c.alias == alias)
        query = query.order_by(alias_events.c.id.desc()).limit(limit)
        with translated(f"reading the alias history of model {model!r}", RegistryRejected):
            async with engine.connect() as connection:
                await _model_row(connection, model)
                if alias is not None and not is_name(alias):
                    return []
                rows = (await connection.execute(query)).all()
        return [_event_from(row) for row in rows]

    async def delete_version(self, model: str, version: str) -> ModelVersion:
        engine = self._engine.get()
        with translated(f"deleting version {version!r} of model {model!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                await _model_row(connection, model, lock=True)
                doomed = await _version_of(connection, model, version)
                users = (
                    await connection.execute(
                        select(model_aliases.c.alias)
                        .where(model_aliases.c.model == model, model_aliases.c.version == version)
                        .order_by(model_aliases.c.alias)
                    )
                ).scalars()
                named = list(users)
                if named:
                    raise Conflict(
                        f"version {version} of model {model!r} is what alias(es) {', '.join(named)} "
                        "point at; promote another version (or delete the alias) first"
                    )
                rollout = await _rollout_of(connection, model)
                if rollout is not None and version in rollout.spec.refs():
                    raise Conflict(
                        f"the rollout of model {model!r} sends traffic to version {version}; "
                        "change or clear the rollout first"
                    )
                await connection.execute(
                    delete(model_versions).where(
                        model_versions.c.model == model, model_versions.c.version == version
                    )
                )
        return doomed

    async def set_rollout(self, model: str, spec: RolloutSpec | Mapping[str, Any]) -> Rollout:
        parsed = spec if isinstance(spec, RolloutSpec) else RolloutSpec.from_dict(spec)
        engine = self._engine.get()
        now = datetime.now(UTC)
        with translated(f"setting the rollout of model {model!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                await _model_row(connection, model, lock=True)
                for ref in parsed.refs():
                    try:
                        await _resolve(connection, model, ref)
                    except (VersionNotFound, AliasNotFound) as err:
                        raise InvalidInput(f"rollout: ref {ref!r} does not resolve: {err}") from None
                await connection.execute(
                    self._upsert(
                        rollouts,
                        {"model": model, "spec": parsed.to_dict(), "updated_at": now},
                        [rollouts.c.model],
                        {"spec": parsed.to_dict(), "updated_at": now},
                    )
                )
                await _bump(connection, model)
        return Rollout(model, parsed, now)

    async def find_rollout(self, model: str) -> Rollout | None:
        engine = self._engine.get()
        if not is_name(model):
            return None
        with translated(f"reading the rollout of model {model!r}", RegistryRejected):
            async with engine.connect() as connection:
                return await _rollout_of(connection, model)

    async def rollouts(self) -> list[Rollout]:
        engine = self._engine.get()
        with translated("reading rollouts", RegistryRejected):
            async with engine.connect() as connection:
                rows = (await connection.execute(select(rollouts).order_by(rollouts.c.model))).all()
        return [_rollout_from(row) for row in rows]

    async def clear_rollout(self, model: str) -> bool:
        engine = self._engine.get()
        with translated(f"clearing the rollout of model {model!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                await _model_row(connection, model, lock=True)
                result = await connection.execute(delete(rollouts).where(rollouts.c.model == model))
                if not result.rowcount:
                    return False
                await _bump(connection, model)
        return True

    async def state_token(self) -> str:
        engine = self._engine.get()
        # Generations only grow, so their sum changes with every alias or rollout change.
        query = select(func.coalesce(func.sum(registered_models.c.generation), 0))
        with translated("reading the registry's state", RegistryRejected):
            async with engine.connect() as connection:
                return str((await connection.execute(query)).scalar_one())

    async def create_training_job(
        self,
        model: str,
        dataset: str,
        trainer: str,
        params: Mapping[str, Any],
        *,
        promote_alias: str | None = None,
        promote_metric: str | None = None,
    ) -> TrainingJob:
        now = datetime.now(UTC)
        job = TrainingJob(
            id=uuid.uuid4().hex,
            model=check_model_name(model),
            dataset=cast(str, check_dataset(dataset, required=True)),
            trainer=cast(str, check_text("trainer", trainer)),
            params=check_json_object("params", params),
            promote_alias=check_alias(promote_alias) if promote_alias is not None else None,
            promote_metric=check_text("promote_metric", promote_metric, required=False),
            status="pending",
            progress=0.0,
            message=None,
            version=None,
            metrics=None,
            error=None,
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        engine = self._engine.get()
        with translated(f"creating a training job for model {model!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                await connection.execute(training_jobs.insert().values(_job_row(job)))
        return job

    async def get_training_job(self, job_id: str) -> TrainingJob:
        engine = self._engine.get()
        with translated("reading a training job", RegistryRejected):
            async with engine.connect() as connection:
                row = await _training_job_row(connection, job_id)
        return _job_from(row)

    async def list_training_jobs(
        self, model: str | None = None, status: TrainingStatus | None = None, limit: int = 100
    ) -> list[TrainingJob]:
        _check_limit(limit)
        if status is not None and status not in TRAINING_STATUSES:
            known = ", ".join(sorted(TRAINING_STATUSES))
            raise InvalidInput(f"unknown training job status {status!r} (known: {known})")
        query = select(training_jobs)
        if model is not None:
            query = query.where(training_jobs.c.model == model)
        if status is not None:
            query = query.where(training_jobs.c.status == status)
        query = query.order_by(training_jobs.c.created_at.desc(), training_jobs.c.id.desc()).limit(limit)
        engine = self._engine.get()
        if model is not None and not is_name(model):
            return []
        with translated("listing training jobs", RegistryRejected):
            async with engine.connect() as connection:
                rows = (await connection.execute(query)).all()
        return [_job_from(row) for row in rows]

    async def claim_training_job(self) -> TrainingJob | None:
        engine = self._engine.get()
        now = datetime.now(UTC)
        # SKIP LOCKED lets concurrent claimers on PostgreSQL pass over a job another is claiming;
        # on SQLite the write lock taken at BEGIN makes them take turns.
        oldest = (
            select(training_jobs)
            .where(training_jobs.c.status == "pending")
            .order_by(training_jobs.c.created_at, training_jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with translated("claiming a training job", RegistryRejected):
            async with write_transaction(engine) as connection:
                row = (await connection.execute(oldest)).one_or_none()
                if row is None:
                    return None
                await connection.execute(
                    update(training_jobs)
                    .where(training_jobs.c.id == row.id)
                    .values(status="running", updated_at=now)
                )
        return _job_from(row, status="running", updated_at=now)

    async def update_training_job(
        self,
        job_id: str,
        *,
        status: TrainingStatus | None = None,
        progress: float | None = None,
        message: str | None = None,
        version: str | None = None,
        metrics: Mapping[str, float] | None = None,
        error: str | None = None,
    ) -> TrainingJob:
        values: dict[str, Any] = {}
        if status is not None:
            if status not in TRAINING_STATUSES:
                known = ", ".join(sorted(TRAINING_STATUSES))
                raise InvalidInput(f"unknown training job status {status!r} (known: {known})")
            values["status"] = status
        if progress is not None:
            if (
                isinstance(progress, bool)
                or not isinstance(progress, int | float)
                or not math.isfinite(progress)
                or not 0.0 <= progress <= 1.0
            ):
                raise InvalidInput(f"progress must be a number from 0.0 to 1.0, not {progress!r}")
            values["progress"] = float(progress)
        if message is not None:
            values["message"] = printable(message)
        if metrics is not None:
            values["metrics"] = check_metrics(metrics)
        if error is not None:
            values["error"] = printable(error)
        engine = self._engine.get()
        now = datetime.now(UTC)
        with translated(f"updating training job {job_id!r}", RegistryRejected):
            async with write_transaction(engine) as connection:
                row = await _training_job_row(connection, job_id, lock=True)
                if row.status in TRAINING_TERMINAL:
                    raise Conflict(f"training job {job_id} already {row.status}; it cannot change any more")
                if status == "pending" and row.status != "pending":
                    raise Conflict(f"training job {job_id} is {row.status}; it cannot go back to pending")
                if version is not None:
                    if not await _has_version(connection, row.model, version):
                        raise InvalidInput(
                            f"version {version!r} is not a registered version of model {row.model!r}"
                        )
                    values["version"] = version
                if status in TRAINING_TERMINAL:
                    values["finished_at"] = now
                if status == "succeeded":
                    values["progress"] = 1.0
                values["updated_at"] = now
                await connection.execute(
                    update(training_jobs).where(training_jobs.c.id == job_id).values(**values)
                )
        return _job_from(row, **values)

    def _upsert(
        self,
        table: Table,
        values: dict[str, Any],
        keys: list[Any],
        changes: dict[str, Any],
    ) -> Insert:
        if self._engine.backend == "sqlite":
            lite = sqlite.insert(table).values(**values)
            return lite.on_conflict_do_update(index_elements=keys, set_=changes)
        pg = postgresql.insert(table).values(**values)
        return pg.on_conflict_do_update(index_elements=keys, set_=changes)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInput(f"limit must be a whole number 1..{MAX_LIST_LIMIT}, not {limit!r}")


def _promotion_stack(events: Iterable[tuple[str, str | None]]) -> list[str]:
    """The versions an alias was promoted through that rollbacks have not yet undone, oldest first.

    A promotion pushes its version; a rollback pops down to the version it went back to (it may
    have skipped deleted ones); a deletion starts afresh.
    """
    stack: list[str] = []
    for action, version in events:
        if action == "promote" and version is not None:
            stack.append(version)
        elif action == "rollback" and version is not None:
            if stack:
                stack.pop()
            while stack and stack[-1] != version:
                stack.pop()
            if not stack:
                stack.append(version)
        else:
            stack.clear()
    return stack


async def _model_row(connection: AsyncConnection, model: str, *, lock: bool = False) -> Row[Any]:
    """The model's row (locked for this transaction when ``lock``); raises VersionNotFound."""
    if not is_name(model):
        raise _no_model(model)
    query = select(registered_models).where(registered_models.c.model == model)
    if lock:
        query = query.with_for_update()
    row = (await connection.execute(query)).one_or_none()
    if row is None:
        raise _no_model(model)
    return row


def _no_model(model: str) -> VersionNotFound:
    return VersionNotFound(f"no model {model!r} in the registry")


async def _has_version(connection: AsyncConnection, model: str, version: str) -> bool:
    if not is_version_number(version):
        return False
    query = select(model_versions.c.version).where(
        model_versions.c.model == model, model_versions.c.version == version
    )
    return (await connection.execute(query)).first() is not None


async def _version_of(connection: AsyncConnection, model: str, version: str) -> ModelVersion:
    """One version; raises VersionNotFound naming the model's latest version."""
    await _model_row(connection, model)
    row = None
    if is_version_number(version):
        query = select(model_versions).where(
            model_versions.c.model == model, model_versions.c.version == version
        )
        row = (await connection.execute(query)).one_or_none()
    if row is None:
        latest = (
            await connection.execute(
                select(func.max(sql_cast(model_versions.c.version, Integer))).where(
                    model_versions.c.model == model
                )
            )
        ).scalar_one()
        known = f"the latest is {latest}" if latest is not None else "it has no versions"
        raise VersionNotFound(f"model {model!r} has no version {version!r} ({known})")
    return _version_from(row)


async def _resolve(connection: AsyncConnection, model: str, ref: str) -> ModelVersion:
    if is_version_number(ref):
        return await _version_of(connection, model, ref)
    await _model_row(connection, model)
    version = await _alias_version(connection, model, ref)
    if version is None:
        raise await _alias_not_found(connection, model, ref)
    return await _version_of(connection, model, version)


async def _aliases_of(connection: AsyncConnection, model: str) -> dict[str, str]:
    rows = await connection.execute(
        select(model_aliases.c.alias, model_aliases.c.version)
        .where(model_aliases.c.model == model)
        .order_by(model_aliases.c.alias)
    )
    return {row.alias: row.version for row in rows}


async def _alias_version(connection: AsyncConnection, model: str, alias: str) -> str | None:
    if not is_name(alias):
        return None
    query = select(model_aliases.c.version).where(
        model_aliases.c.model == model, model_aliases.c.alias == alias
    )
    return cast(str | None, (await connection.execute(query)).scalar_one_or_none())


async def _alias_not_found(connection: AsyncConnection, model: str, alias: str) -> AliasNotFound:
    known = ", ".join(await _aliases_of(connection, model)) or "none"
    return AliasNotFound(f"model {model!r} has no alias {alias!r} (aliases: {known})")


async def _last_event(connection: AsyncConnection, model: str, alias: str) -> AliasEvent | None:
    query = (
        select(alias_events)
        .where(alias_events.c.model == model, alias_events.c.alias == alias)
        .order_by(alias_events.c.id.desc())
        .limit(1)
    )
    row = (await connection.execute(query)).one_or_none()
    return _event_from(row) if row is not None else None


async def _record(
    connection: AsyncConnection,
    model: str,
    alias: str,
    action: AliasAction,
    version: str | None,
    previous: str | None,
    at: datetime,
) -> AliasEvent:
    values = {
        "model": model,
        "alias": alias,
        "action": action,
        "version": version,
        "previous_version": previous,
        "at": at,
    }
    result = await connection.execute(alias_events.insert().values(**values))
    key = result.inserted_primary_key
    assert key is not None
    return AliasEvent(int(key[0]), model, alias, action, version, previous, at)


async def _bump(connection: AsyncConnection, model: str) -> None:
    await connection.execute(
        update(registered_models)
        .where(registered_models.c.model == model)
        .values(generation=registered_models.c.generation + 1)
    )


async def _rollout_of(connection: AsyncConnection, model: str) -> Rollout | None:
    row = (await connection.execute(select(rollouts).where(rollouts.c.model == model))).one_or_none()
    return _rollout_from(row) if row is not None else None


async def _training_job_row(connection: AsyncConnection, job_id: str, *, lock: bool = False) -> Row[Any]:
    row = None
    # PostgreSQL text cannot hold NUL, so no stored id contains one: such an id is simply unknown.
    if isinstance(job_id, str) and "\x00" not in job_id:
        query = select(training_jobs).where(training_jobs.c.id == job_id)
        if lock:
            query = query.with_for_update()
        row = (await connection.execute(query)).one_or_none()
    if row is None:
        raise TrainingJobNotFound(f"no training job with id {job_id!r}")
    return row


def _version_row(version: ModelVersion) -> dict[str, Any]:
    return {
        "model": version.model,
        "version": version.version,
        "artifact_uri": version.artifact_uri,
        "trainer": version.trainer,
        "params": version.params,
        "metrics": version.metrics,
        "dataset": version.dataset,
        "status": version.status,
        "created_at": version.created_at,
    }


def _version_from(row: Row[Any]) -> ModelVersion:
    return ModelVersion(
        model=row.model,
        version=row.version,
        artifact_uri=row.artifact_uri,
        trainer=row.trainer,
        params=row.params,
        metrics=row.metrics,
        dataset=row.dataset,
        status=cast(VersionStatus, row.status),
        created_at=row.created_at,
    )


def _event_from(row: Row[Any]) -> AliasEvent:
    return AliasEvent(
        id=row.id,
        model=row.model,
        alias=row.alias,
        action=cast(AliasAction, row.action),
        version=row.version,
        previous_version=row.previous_version,
        at=row.at,
    )


def _rollout_from(row: Row[Any]) -> Rollout:
    return Rollout(model=row.model, spec=RolloutSpec.from_dict(row.spec), updated_at=row.updated_at)


def _job_row(job: TrainingJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "model": job.model,
        "dataset": job.dataset,
        "trainer": job.trainer,
        "params": job.params,
        "promote_alias": job.promote_alias,
        "promote_metric": job.promote_metric,
        "status": job.status,
        "progress": job.progress,
        "message": job.message,
        "version": job.version,
        "metrics": job.metrics,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
    }


def _job_from(row: Row[Any], **changes: Any) -> TrainingJob:
    values = {**row._asdict(), **changes}
    return TrainingJob(
        id=values["id"],
        model=values["model"],
        dataset=values["dataset"],
        trainer=values["trainer"],
        params=values["params"],
        promote_alias=values["promote_alias"],
        promote_metric=values["promote_metric"],
        status=cast(TrainingStatus, values["status"]),
        progress=values["progress"],
        message=values["message"],
        version=values["version"],
        metrics=values["metrics"],
        error=values["error"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        finished_at=values["finished_at"],
    )
