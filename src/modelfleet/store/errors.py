"""Errors of the results store, in the one modelfleet error tree."""

from __future__ import annotations

from modelfleet.errors import ModelfleetError


class RunNotFound(ModelfleetError):
    """Raised when a pipeline run id is not in the results store."""


class StoreError(ModelfleetError):
    """Raised when the results store could not do what was asked (database unreachable, closed, failing).

    The database's own error is chained as ``__cause__``.
    """


class RunRejected(StoreError):
    """Raised when the database refuses a run's content, so saving that same run again cannot succeed.

    Examples: a value that is not JSON (an object, NaN), an identifier containing a NUL character.
    """
