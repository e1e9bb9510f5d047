"""Errors of the model registry that are not shared with other rooms.

The ones an HTTP client can meet (VersionNotFound, AliasNotFound, TrainingJobNotFound, Conflict,
InvalidInput) live in :mod:`modelfleet.errors` and are re-exported here, so there is one class
whichever module it is imported from.
"""

from __future__ import annotations

from modelfleet.errors import AliasNotFound, Conflict, InvalidInput, TrainingJobNotFound, VersionNotFound
from modelfleet.store.errors import StoreError

__all__ = [
    "AliasNotFound",
    "Conflict",
    "InvalidInput",
    "RegistryRejected",
    "StoreError",
    "TrainingJobNotFound",
    "VersionNotFound",
]


class RegistryRejected(StoreError):
    """Raised when the database refuses registry content the registry's own checks let through.

    Trying again cannot succeed. The checks refuse what they can foresee (names, JSON that is not
    finite) with InvalidInput first, so this is rare.
    """
