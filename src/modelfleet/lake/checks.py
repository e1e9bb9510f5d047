"""The checks a table must pass to become a dataset version; each failure is one readable reason.

Row numbers in reasons count data rows from 1 (a CSV header line is not a row).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelfleet.lake._deps import pa, pc

ROWS_SHOWN = 5


def check_table(
    table: Any,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    required_columns: Sequence[str] = (),
) -> list[str]:
    """Every reason the (normalised) table cannot be stored with these column roles; empty when it can."""
    names = list(table.column_names)
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        return [f"column names repeat: {', '.join(repeated)}"]
    reasons: list[str] = []
    wanted = [c for c in (text_column, label_column, *required_columns) if c is not None]
    for name in dict.fromkeys(wanted):
        if name not in names:
            reasons.append(f"column {name!r} not found (columns: {', '.join(names)})")
    if text_column is not None and text_column in names:
        reasons.extend(_check_text(text_column, table.column(text_column)))
    if label_column is not None and label_column in names:
        reasons.extend(_check_label(label_column, table.column(label_column)))
    return reasons


def _check_text(name: str, column: Any) -> list[str]:
    dtype = column.type
    if not pa.types.is_null(dtype) and not pa.types.is_string(dtype):
        return [f"text column {name!r} must hold strings, not {kind_of(dtype)}"]
    return _empty_values("text", name, column)


def _check_label(name: str, column: Any) -> list[str]:
    dtype = column.type
    if not (pa.types.is_null(dtype) or pa.types.is_string(dtype) or pa.types.is_integer(dtype)):
        return [f"label column {name!r} must hold strings or integers, not {kind_of(dtype)}"]
    return _empty_values("label", name, column)


def _empty_values(role: str, name: str, column: Any) -> list[str]:
    """A null, or a string of nothing but whitespace, is an empty value."""
    if pa.types.is_null(column.type):
        empty = np.ones(len(column), dtype=bool)
    else:
        missing = pc.is_null(column)
        if pa.types.is_string(column.type):
            blank = pc.equal(pc.utf8_trim_whitespace(column), "")
            missing = pc.or_(missing, pc.fill_null(blank, False))
        empty = missing.to_numpy(zero_copy_only=False).astype(bool)
    rows = np.flatnonzero(empty)
    if len(rows) == 0:
        return []
    plural = "s" if len(rows) != 1 else ""
    return [f"{role} column {name!r} has {len(rows)} empty value{plural} ({rows_text(rows)})"]


def rows_text(rows: Any) -> str:
    """``rows 3, 17, …``: the first few 1-based row numbers of 0-based positions."""
    shown = ", ".join(str(int(r) + 1) for r in rows[:ROWS_SHOWN])
    more = ", …" if len(rows) > ROWS_SHOWN else ""
    return f"row{'s' if len(rows) != 1 else ''} {shown}{more}"


def kind_of(dtype: Any) -> str:
    """A type as a person would name it: float, integer, string, bool, ..."""
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "float"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_temporal(dtype):
        return f"time ({dtype})"
    if pa.types.is_null(dtype):
        return "nothing (every value is empty)"
    return str(dtype)
