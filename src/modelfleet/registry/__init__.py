"""The model registry: model versions, aliases, rollouts and training jobs in the SQL store.

``make_registry(url)`` picks the implementation from the store URL's scheme (SQLite by default,
PostgreSQL by URL) and imports the driver only then.
"""

from __future__ import annotations

from modelfleet.registry.errors import (
    AliasNotFound,
    Conflict,
    RegistryRejected,
    TrainingJobNotFound,
    VersionNotFound,
)
from modelfleet.registry.registry import (
    DEFAULT_ALIAS,
    MAX_LIST_LIMIT,
    TRAINING_TERMINAL,
    AliasAction,
    AliasEvent,
    ModelSummary,
    ModelVersion,
    Registry,
    Rollout,
    RolloutRoute,
    RolloutSpec,
    TrainingJob,
    TrainingStatus,
)

__all__ = [
    "DEFAULT_ALIAS",
    "MAX_LIST_LIMIT",
    "TRAINING_TERMINAL",
    "AliasAction",
    "AliasEvent",
    "AliasNotFound",
    "Conflict",
    "ModelSummary",
    "ModelVersion",
    "Registry",
    "RegistryRejected",
    "Rollout",
    "RolloutRoute",
    "RolloutSpec",
    "TrainingJob",
    "TrainingJobNotFound",
    "TrainingStatus",
    "VersionNotFound",
    "make_registry",
    "open_registry",
]


def make_registry(url: str) -> Registry:
    """A closed registry on the store at ``url`` (``sqlite:///path`` or ``postgresql://...``).

    Call ``open()`` next. It shares the database with the run and job stores. Raises ConfigError
    naming a bad scheme, or saying what to install when the driver is missing.
    """
    # The store's check, so a missing driver is reported the same way for every SQL room.
    from modelfleet.store import _check_driver

    _check_driver(url)
    from modelfleet.registry.sql import SqlRegistry

    return SqlRegistry(url)


async def open_registry(url: str) -> Registry:
    """:func:`make_registry`, opened (connected and migrated); raises ConfigError or StoreError."""
    registry = make_registry(url)
    await registry.open()
    return registry
