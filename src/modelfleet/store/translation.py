"""Database errors turned into store errors, the same way for every SQL store.

Callers then see StoreError (the database is failing: trying again later may work) or the
store's ``Rejected`` error (the database refused the data: trying again cannot work), with the
driver's error chained, never a SQLAlchemy or driver exception.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from modelfleet.store.errors import StoreError

# SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation) blame the data.
_REJECTING_SQLSTATE_CLASSES = ("22", "23")
_MAX_DETAIL_CHARS = 300


@contextmanager
def translated(action: str, rejected: type[StoreError]) -> Iterator[None]:
    """Turn database and connection errors into StoreError, or ``rejected`` when the data is at fault.

    ``action`` starts the message ("saving 3 run(s) failed: ..."). Store errors raised inside,
    and errors that are not the database's (ValueError from argument checks), pass unchanged.
    """
    try:
        yield
    except StoreError:
        raise
    except (SQLAlchemyError, sqlite3.Error, OSError) as err:
        detail = _detail(err)
        if _blames_data(err):
            raise rejected(f"{action}: the database refused the data: {detail}") from err
        raise StoreError(f"{action} failed: {detail}") from err


def printable(message: str | None) -> str | None:
    """``message`` with NUL characters shown as U+FFFD, which PostgreSQL text can hold.

    For error texts: they come from models and are only read by people, and losing a record for a
    NUL in its error message would be worse than showing U+FFFD in its place.
    """
    return message.replace("\x00", "\ufffd") if message is not None else None


def _blames_data(err: BaseException) -> bool:
    if isinstance(err, IntegrityError | sqlite3.IntegrityError | sqlite3.DataError):
        return True
    if isinstance(err, DBAPIError):
        sqlstate = getattr(err.orig, "sqlstate", None) or ""
        return sqlstate[:2] in _REJECTING_SQLSTATE_CLASSES
    # A StatementError that is not a DBAPIError failed before reaching the database, while
    # binding a parameter: a value the JSON encoder or the driver cannot take.
    return isinstance(err, StatementError)


def _detail(err: BaseException) -> str:
    cause = err.orig if isinstance(err, StatementError) and err.orig is not None else err
    text = (f"{type(cause).__name__}: {cause}".splitlines() or [""])[0]
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"
