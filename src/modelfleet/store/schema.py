"""The tables of the SQL stores, as they are after every migration, on one shared MetaData.

Queries use these definitions. The database gets them only through :mod:`modelfleet.store.migrations`,
and a contract test checks that a migrated database matches them.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _refuse_non_finite(value: Any) -> None:
    # orjson writes NaN and infinities as null; PostgreSQL's json refuses them, so refuse them here.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("Out of range float values are not JSON compliant")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            if _finite_numbers(item):
                continue
            stack.extend(item)


def _finite_numbers(items: list[Any] | tuple[Any, ...]) -> bool:
    """True when ``items`` are all numbers and none is NaN or infinite, checked in C (embeddings).

    A NaN or infinity makes the sum NaN or infinite; so can finite values that overflow, and then
    the caller checks item by item. Lists holding anything but numbers are checked item by item.
    """
    try:
        return math.isfinite(sum(items))
    except (TypeError, OverflowError):
        return False


def dumps(value: Any) -> str:
    """Encode a JSON column value; NaN and infinities are refused, as PostgreSQL's json refuses them.

    orjson, because runs carry embeddings: the json module took 0.33 ms for one 384-float vector.
    """
    _refuse_non_finite(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        # Integers past 64 bits, which orjson does not write; the json module does, exactly.
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def loads(text: str) -> Any:
    # The json module, not orjson: orjson reads integers past 64 bits back as floats.
    return json.loads(text)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always reads back timezone-aware.

    SQLite keeps no zone (SQLAlchemy writes a fixed-width text that sorts chronologically), so the
    value is converted to UTC before the zone is dropped. Naive values are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JsonDocument(TypeDecorator[Any]):
    """Any JSON value, read back exactly as written; Python None is SQL NULL.

    PostgreSQL gets ``json``, not ``jsonb``: jsonb reorders keys, turns ``1e16`` into an integer
    and refuses ``\\u0000``, while json keeps the text as sent, like SQLite. SQLite gets TEXT,
    because SQLAlchemy's JSON column there has NUMERIC affinity and SQLite would turn a top-level
    ``1.0`` into ``1`` and ``10**20`` into a float.
    """

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(JSON(none_as_null=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name != "sqlite" or value is None:
            return value
        return dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name != "sqlite" or value is None:
            return value
        return loads(value)


# Byte-order collation on PostgreSQL, as SQLite compares text, so runs with the same created_at
# come in the same order on both, and the keyset comparison on id agrees with ORDER BY.
RunId = String().with_variant(String(collation="C"), "postgresql")

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", RunId, primary_key=True),
    Column("pipeline", String, nullable=False),
    Column("status", String, nullable=False),
    Column("error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("input", JsonDocument),
    Column("output", JsonDocument),
    Column("model_versions", JsonDocument, nullable=False),
    Index(None, "pipeline", "created_at", "id"),
    Index(None, "created_at", "id"),
)

run_steps = Table(
    "run_steps",
    metadata,
    Column("run_id", RunId, primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("model", String, nullable=False),
    Column("version", String),
    Column("status", String, nullable=False),
    Column("output", JsonDocument),
    Column("reason", Text),
    Column("duration_ms", Float, nullable=False),
    ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String, primary_key=True),
    Column("target_kind", String, nullable=False),
    Column("target", String, nullable=False),
    Column("status", String, nullable=False),
    # NULL while a batch job's rows are not counted yet (migration 4).
    Column("total", Integer),
    Column("done", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("callback_url", Text),
    Column("error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    # A batch job's BatchSpec; NULL for a job of inputs (migration 4). Last, where ADD COLUMN puts it.
    Column("batch", JsonDocument),
    # For finding the jobs still pending or in progress, oldest first.
    Index(None, "status", "created_at"),
)

job_results = Table(
    "job_results",
    metadata,
    Column("job_id", String, primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("output", JsonDocument),
    Column("error", Text),
    ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
)

# The model registry (migration 3). A model's row exists from its first registered version on and
# is never deleted: it hands out version numbers, so a deleted version's number is never reused,
# and its generation counts the alias and rollout changes that serving processes poll for.
registered_models = Table(
    "registered_models",
    metadata,
    Column("model", String, primary_key=True),
    Column("last_version", Integer, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("model", String, primary_key=True),
    Column("version", String, primary_key=True),
    Column("artifact_uri", Text, nullable=False),
    Column("trainer", String, nullable=False),
    Column("params", JsonDocument, nullable=False),
    Column("metrics", JsonDocument, nullable=False),
    Column("dataset", String),
    Column("status", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    ForeignKeyConstraint(["model"], ["registered_models.model"]),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("model", String, primary_key=True),
    Column("alias", String, primary_key=True),
    Column("version", String, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # The database, too, refuses to delete a version an alias points at.
    ForeignKeyConstraint(["model", "version"], ["model_versions.model", "model_versions.version"]),
)

alias_events = Table(
    "alias_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String, nullable=False),
    Column("alias", String, nullable=False),
    Column("action", String, nullable=False),
    Column("version", String),
    Column("previous_version", String),
    Column("at", UtcDateTime, nullable=False),
    # Rollback replays one alias's events in order.
    Index(None, "model", "alias", "id"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("model", String, primary_key=True),
    Column("spec", JsonDocument, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    ForeignKeyConstraint(["model"], ["registered_models.model"]),
)

training_jobs = Table(
    "training_jobs",
    metadata,
    Column("id", String, primary_key=True),
    Column("model", String, nullable=False),
    Column("dataset", String, nullable=False),
    Column("trainer", String, nullable=False),
    Column("params", JsonDocument, nullable=False),
    Column("promote_alias", String),
    Column("promote_metric", String),
    Column("status", String, nullable=False),
    Column("progress", Float, nullable=False),
    Column("message", Text),
    Column("version", String),
    Column("metrics", JsonDocument),
    Column("error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    # For the oldest pending job (claiming) and a model's jobs, newest first.
    Index(None, "status", "created_at"),
    Index(None, "model", "created_at"),
)
