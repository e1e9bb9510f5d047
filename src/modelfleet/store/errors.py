"""Errors of the results store, in the one modelfleet error tree.

``RunNotFound`` lives in :mod:`modelfleet.errors` (the gateway maps it to a status) and is
re-exported here, so that there is one class whichever module it is imported from.
"""

from __future__ import annotations

from modelfleet.errors import ModelfleetError, RunNotFound

__all__ = ["JobNotFound", "JobRejected", "RunNotFound", "RunRejected", "StoreError"]


class StoreError(ModelfleetError):
    """Raised when the results store could not do what was asked (database unreachable, closed, failing).

    The database's own error is chained as ``__cause__``.
    """


class RunRejected(StoreError):
    """Raised when the database refuses a run's content, so saving that same run again cannot succeed.

    Examples: a value that is not JSON (an object, NaN), an identifier containing a NUL character.
    """


class JobNotFound(ModelfleetError):
    """Raised when a stored asynchronous job with the given id does not exist."""


class JobRejected(StoreError):
    """Raised when the database refuses a job's or a result's content, so trying again cannot succeed.

    Examples: a result output that is not JSON (an object, NaN), an identifier containing a NUL character.
    """
