"""The model registry: versions of trained models, the aliases that name them, rollouts, training jobs.

A *version* is one trained artifact of a model, numbered "1", "2", ... per model in the order
registered; numbers are never reused, even after a version is deleted, so a number seen in a
pipeline run's record always means the same artifact. An *alias* ("production", "canary", any
name) points at one version and moves when a version is promoted; every move is an
:class:`AliasEvent`, and rollback walks those events back. A *rollout* splits a model's traffic
between refs (versions or aliases) by weight, optionally mirroring it to a shadow. Serving
processes poll :meth:`Registry.state_token`, which changes whenever an alias or a rollout does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, get_args

from modelfleet.errors import InvalidInput

VersionStatus = Literal["ready"]
AliasAction = Literal["promote", "rollback", "delete"]
TrainingStatus = Literal["pending", "running", "succeeded", "failed"]

DEFAULT_ALIAS = "production"
"""The alias a ref of None resolves to: what serves a model when nothing else is said."""

TRAINING_TERMINAL: frozenset[str] = frozenset({"succeeded", "failed"})
"""The statuses a training job never leaves."""

TRAINING_STATUSES: frozenset[str] = frozenset(get_args(TrainingStatus))

MAX_LIST_LIMIT = 1000
"""The most history events or training jobs one call returns."""

MAX_ROUTES = 16
"""The most routes a rollout may split traffic between."""

# Model names as fleet.yaml accepts them, so a registered model can be a served one; aliases alike,
# and since they start with a letter, no alias can be mistaken for a version number.
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_DATASET = re.compile(r"[^@\s\x00]{1,200}@[^@\s\x00]{1,200}")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_TEXT_LIMIT = 2048


def check_model_name(model: object) -> str:
    """``model`` when it is a valid model name; raises InvalidInput saying what a name may be."""
    if not isinstance(model, str) or not _NAME.fullmatch(model):
        raise InvalidInput(
            f"model name {model!r} must be 1-63 lower-case letters, digits, '-' or '_', "
            "starting with a letter"
        )
    return model


def check_alias(alias: object) -> str:
    """``alias`` when it is a valid alias name; raises InvalidInput saying what an alias may be."""
    if not isinstance(alias, str) or not _NAME.fullmatch(alias):
        raise InvalidInput(
            f"alias {alias!r} must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter"
        )
    return alias


def is_name(text: str) -> bool:
    """Whether ``text`` could name a model or an alias (a lookup of anything else finds nothing)."""
    return _NAME.fullmatch(text) is not None


def is_version_number(text: str) -> bool:
    """Whether ``text`` is a version number ("1", "2", ...) rather than an alias."""
    return _VERSION.fullmatch(text) is not None


def check_text(label: str, value: object, *, required: bool = True) -> str | None:
    """A short printable string (no NUL, at most 2048 characters); None allowed unless ``required``."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{label} must be a non-empty string, not {value!r}")
    if "\x00" in value or len(value) > _TEXT_LIMIT:
        raise InvalidInput(f"{label} must be at most {_TEXT_LIMIT} characters without NUL")
    return value


def check_dataset(dataset: object, *, required: bool = False) -> str | None:
    """A dataset lineage reference ``name@version``; None allowed unless ``required``."""
    if dataset is None and not required:
        return None
    if not isinstance(dataset, str) or not _DATASET.fullmatch(dataset):
        raise InvalidInput(f"dataset {dataset!r} must be 'name@version' (the lake's dataset and its version)")
    return dataset


def check_json_object(label: str, value: object) -> dict[str, Any]:
    """A JSON object (string keys; finite numbers only); raises InvalidInput naming ``label`` and the spot.

    Only what JSON itself holds is taken, so what is stored reads back equal: a date or a tuple
    would come back as a string or a list.
    """
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{label} must be a JSON object with string keys, not {type(value).__name__}")
    stack: list[tuple[str, object]] = [(label, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, Mapping):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"{where} has a key that is not a string: {key!r}")
                stack.append((f"{where}.{key}", inner))
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", inner) for index, inner in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(f"{where} is not storable as JSON: {item!r} is not a finite number")
        elif item is not None and not isinstance(item, str | int):
            raise InvalidInput(
                f"{where} is not storable as JSON: a {type(item).__name__} is not a JSON value"
            )
    return dict(value)


def check_metrics(value: object) -> dict[str, float]:
    """Metric names to finite numbers ({"accuracy": 0.93, "f1": 0.91}); raises InvalidInput."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f"metrics must be a JSON object of names to numbers, not {type(value).__name__}")
    metrics: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidInput(f"metric names must be non-empty strings, not {name!r}")
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise InvalidInput(f"metric {name!r} must be a finite number, not {number!r}")
        metrics[name] = number
    return metrics


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered, trained artifact of a model and where it came from.

    ``artifact_uri`` is where the lake keeps the artifact; ``dataset`` is the ``name@version``
    it was trained on (None when it was not trained from the lake); ``metrics`` are the
    trainer's evaluation numbers. ``created_at`` is UTC.
    """

    model: str
    version: str
    artifact_uri: str
    trainer: str
    params: dict[str, Any]
    metrics: dict[str, float]
    dataset: str | None
    status: VersionStatus
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "artifact_uri": self.artifact_uri,
            "trainer": self.trainer,
            "params": self.params,
            "metrics": self.metrics,
            "dataset": self.dataset,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A registered model at a glance: how many versions it has, the newest, and its aliases."""

    model: str
    versions: int
    latest: str | None
    aliases: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "versions": self.versions,
            "latest": self.latest,
            "aliases": self.aliases,
        }


@dataclass(frozen=True, slots=True)
class AliasEvent:
    """One move of an alias: promoted to ``version``, rolled back to it, or deleted (``version`` None).

    ``previous_version`` is where the alias pointed before (None when it is new). ``id`` grows
    with every event of the registry, so it orders events.
    """

    id: int
    model: str
    alias: str
    action: AliasAction
    version: str | None
    previous_version: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "alias": self.alias,
            "action": self.action,
            "version": self.version,
            "previous_version": self.previous_version,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class RolloutRoute:
    """A share of a model's traffic: ``weight`` percent go to ``ref`` (a version number or an alias)."""

    ref: str
    weight: int

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """How a model's traffic is split: routes whose weights sum to 100, and an optional shadow.

    With ``sticky_header`` set, requests carrying the same value of that header go to the same
    route. ``shadow`` is a ref that gets a copy of every request, its answer discarded.
    """

    routes: tuple[RolloutRoute, ...]
    sticky_header: str | None = None
    shadow: str | None = None

    @classmethod
    def from_dict(cls, value: object) -> RolloutSpec:
        """Parse ``{"routes": [{"ref": "production", "weight": 90}, ...], "sticky_header", "shadow"}``.

        Raises InvalidInput naming what is wrong: unknown fields, no routes, a bad ref, a weight
        that is not a whole number 0..100, weights not summing to 100, a ref given twice.
        Whether the refs resolve is checked by the registry, which knows the versions.
        """
        if not isinstance(value, Mapping):
            raise InvalidInput(f"a rollout must be a JSON object with 'routes', not {type(value).__name__}")
        unknown = set(value) - {"routes", "sticky_header", "shadow"}
        if unknown:
            raise InvalidInput(f"rollout: unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        raw_routes = value.get("routes")
        if not isinstance(raw_routes, Sequence) or isinstance(raw_routes, str) or not raw_routes:
            raise InvalidInput('rollout: \'routes\' must be a non-empty array of {"ref", "weight"}')
        if len(raw_routes) > MAX_ROUTES:
            raise InvalidInput(f"rollout: at most {MAX_ROUTES} routes, got {len(raw_routes)}")
        routes: list[RolloutRoute] = []
        for index, raw in enumerate(raw_routes):
            label = f"rollout: routes[{index}]"
            if not isinstance(raw, Mapping) or set(raw) != {"ref", "weight"}:
                raise InvalidInput(f"{label} must be an object with exactly 'ref' and 'weight'")
            weight = raw["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise InvalidInput(f"{label}.weight must be a whole number 0..100, not {weight!r}")
            routes.append(RolloutRoute(_check_ref(f"{label}.ref", raw["ref"]), weight))
        refs = [route.ref for route in routes]
        twice = sorted({ref for ref in refs if refs.count(ref) > 1})
        if twice:
            raise InvalidInput(f"rollout: ref(s) {', '.join(twice)} given in more than one route")
        total = sum(route.weight for route in routes)
        if total != 100:
            raise InvalidInput(f"rollout: route weights must sum to 100, they sum to {total}")
        sticky = value.get("sticky_header")
        if sticky is not None and (not isinstance(sticky, str) or not _HEADER.fullmatch(sticky)):
            raise InvalidInput(f"rollout: sticky_header must be an HTTP header name, not {sticky!r}")
        shadow = value.get("shadow")
        return cls(
            routes=tuple(routes),
            sticky_header=sticky.lower() if sticky is not None else None,
            shadow=_check_ref("rollout: shadow", shadow) if shadow is not None else None,
        )

    def refs(self) -> list[str]:
        """Every ref the rollout names: its routes', then the shadow's."""
        return [route.ref for route in self.routes] + ([self.shadow] if self.shadow is not None else [])

    def to_dict(self) -> dict[str, Any]:
        return {
            "routes": [route.to_dict() for route in self.routes],
            "sticky_header": self.sticky_header,
            "shadow": self.shadow,
        }


def _check_ref(label: str, ref: object) -> str:
    # A version may come as a JSON number (3), which means the same as "3".
    if isinstance(ref, int) and not isinstance(ref, bool):
        ref = str(ref)
    if not isinstance(ref, str) or not (is_version_number(ref) or is_name(ref)):
        raise InvalidInput(f"{label} must be a version number or an alias name, not {ref!r}")
    return ref


@dataclass(frozen=True, slots=True)
class Rollout:
    """A model's current traffic split, as last set."""

    model: str
    spec: RolloutSpec
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, **self.spec.to_dict(), "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True, slots=True)
class TrainingJob:
    """One request to train a model on a dataset, and how far it got.

    ``progress`` is 0.0 to 1.0; ``message`` says what the trainer is doing. On success
    ``version`` is the registered version and ``metrics`` its evaluation; on failure ``error``
    says why. When ``promote_alias`` is set, the training service moves that alias to the new
    version (if ``promote_metric`` is set, only when the metric beats the alias's current version).
    Timestamps are UTC.
    """

    id: str
    model: str
    dataset: str
    trainer: str
    params: dict[str, Any]
    promote_alias: str | None
    promote_metric: str | None
    status: TrainingStatus
    progress: float
    message: str | None
    version: str | None
    metrics: dict[str, float] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "dataset": self.dataset,
            "trainer": self.trainer,
            "params": self.params,
            "promote_alias": self.promote_alias,
            "promote_metric": self.promote_metric,
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
            "version": self.version,
            "metrics": self.metrics,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": _iso(self.finished_at),
        }


class Registry(Protocol):
    """Durable model versions, aliases, rollouts and training jobs, shared by every process.

    Written by the training service, the gateway's registry API and the CLI, possibly at once
    from several processes. Every method but ``open`` raises StoreError when the registry is
    not open or the database fails. A model is known from its first registered version on;
    naming an unknown model raises VersionNotFound. Bad arguments raise InvalidInput, and a
    change the current state forbids raises Conflict.
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date; safe when several processes open at once."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent. Calls after close raise StoreError until ``open`` again."""
        ...

    async def register(
        self,
        model: str,
        artifact_uri: str,
        trainer: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        dataset: str | None = None,
    ) -> ModelVersion:
        """Record a new version of ``model`` (registering the model itself on its first version).

        The version number is the model's next one ("1" for the first), distinct even when
        several processes register at once. ``dataset`` is ``name@version`` or None. Raises
        InvalidInput for a bad name, a non-object ``params``, non-finite metrics.
        """
        ...

    async def models(self) -> list[ModelSummary]:
        """Every model with at least one version, by name."""
        ...

    async def versions(self, model: str) -> list[ModelVersion]:
        """The model's versions, newest first; raises VersionNotFound for an unknown model."""
        ...

    async def get_version(self, model: str, version: str) -> ModelVersion:
        """One version; raises VersionNotFound."""
        ...

    async def resolve(self, model: str, ref: str | None = None) -> ModelVersion:
        """The version ``ref`` means: a version number, an alias, or None for "production".

        Raises VersionNotFound (unknown model or version) or AliasNotFound.
        """
        ...

    async def aliases(self, model: str) -> dict[str, str]:
        """The model's aliases and the versions they point at; raises VersionNotFound."""
        ...

    async def set_alias(self, model: str, alias: str, version: str) -> AliasEvent:
        """Promote: point ``alias`` at ``version``, creating the alias if need be.

        Recorded as a ``promote`` event with the version it pointed at before. Pointing an alias
        at the version it already points at changes nothing and returns the alias's last event.
        Raises InvalidInput for a bad alias name, VersionNotFound.
        """
        ...

    async def rollback(self, model: str, alias: str) -> AliasEvent:
        """Move ``alias`` back to the version it pointed at before its latest promotion.

        Promotions stack up and each rollback takes one off, so rolling back twice goes two
        promotions back; versions deleted since are skipped. Raises AliasNotFound, and Conflict
        when there is no earlier version to go back to.
        """
        ...

    async def delete_alias(self, model: str, alias: str) -> AliasEvent:
        """Remove ``alias`` (a ``delete`` event); its promotion history starts afresh if it is set again.

        Raises AliasNotFound, and Conflict while the model's rollout names the alias.
        """
        ...

    async def history(self, model: str, alias: str | None = None, limit: int = 100) -> list[AliasEvent]:
        """The model's alias events (only ``alias``'s when given), newest first, at most ``limit``.

        Raises VersionNotFound, and InvalidInput when ``limit`` is not 1..MAX_LIST_LIMIT.
        """
        ...

    async def delete_version(self, model: str, version: str) -> ModelVersion:
        """Forget a version and return it, so the caller can delete its artifact from the lake.

        Raises VersionNotFound, and Conflict while an alias points at it or the model's rollout
        names it. Its number is never handed out again.
        """
        ...

    async def set_rollout(self, model: str, spec: RolloutSpec | Mapping[str, Any]) -> Rollout:
        """Set (or replace) the model's traffic split; a mapping is parsed with RolloutSpec.from_dict.

        Raises VersionNotFound for an unknown model, InvalidInput for a bad spec or a ref that
        does not resolve now.
        """
        ...

    async def find_rollout(self, model: str) -> Rollout | None:
        """The model's rollout, or None when it has none (or is unknown)."""
        ...

    async def rollouts(self) -> list[Rollout]:
        """Every model's rollout, by model name."""
        ...

    async def clear_rollout(self, model: str) -> bool:
        """Remove the model's rollout (all traffic goes to "production" again); whether there was one."""
        ...

    async def state_token(self) -> str:
        """An opaque token that changes whenever any alias or rollout changes; one cheap query.

        Serving processes poll it (every second, say) and reread aliases and rollouts only when it
        has changed. Registering a version does not change it.
        """
        ...

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
        """Store a new pending training job with a fresh id; raises InvalidInput for bad fields.

        The model need not be registered yet: its first version comes out of the job.
        """
        ...

    async def get_training_job(self, job_id: str) -> TrainingJob:
        """The training job with this id; raises TrainingJobNotFound."""
        ...

    async def list_training_jobs(
        self, model: str | None = None, status: TrainingStatus | None = None, limit: int = 100
    ) -> list[TrainingJob]:
        """Training jobs, newest first, optionally of one model or in one status.

        Raises InvalidInput for an unknown status or a ``limit`` not 1..MAX_LIST_LIMIT.
        """
        ...

    async def claim_training_job(self) -> TrainingJob | None:
        """Move the oldest pending job to ``running`` and return it; None when none is pending.

        Two callers never claim the same job, in one process or many.
        """
        ...

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
        """Change the given fields of a job that has not finished; returns the job as it is after.

        A job becoming ``succeeded`` gets progress 1.0 and ``finished_at``; ``failed`` gets
        ``finished_at``. ``version`` must be a registered version of the job's model. Raises
        TrainingJobNotFound, InvalidInput (progress outside 0..1, unknown status or version),
        and Conflict for a job that already finished or a running job sent back to pending.
        """
        ...
