from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from modelfleet.lake.content import content_hash, normalise


def digest(table: Any) -> str:
    return content_hash(normalise(table))


ROWS = {
    "text": ["a", None, "", "long " * 50],
    "label": [1, 2, None, 4],
    "score": [0.5, float("nan"), None, -0.0],
    "flag": [True, False, None, True],
    "at": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC), None, dt.datetime(2026, 1, 2, tzinfo=dt.UTC), None],
    "tags": [["x"], [], None, ["y", "z"]],
    "meta": [{"k": 1}, None, {"k": 2}, {"k": 3}],
    "price": [Decimal("1.10"), None, Decimal("2.00"), Decimal("0.01")],
    "blank": [None, None, None, None],
}


def test_chunking_slicing_and_column_order_do_not_change_the_hash() -> None:
    whole = pa.table(ROWS)
    chunked = pa.concat_tables([whole.slice(0, 1), whole.slice(1, 2), whole.slice(3)])
    shuffled = whole.select(list(reversed(whole.column_names)))
    # A slice that starts mid-buffer: offsets and validity bits begin at an offset.
    padded = pa.table({k: [v[0], *v] for k, v in ROWS.items()}).slice(1)

    assert chunked.column(0).num_chunks == 3
    assert digest(whole) == digest(chunked) == digest(shuffled) == digest(padded)


def test_every_kind_of_difference_changes_the_hash() -> None:
    base = digest(pa.table(ROWS))
    variants = [
        {**ROWS, "text": ["a", "", "", "long " * 50]},  # null is not the empty string
        {**ROWS, "text": ["a", None, "", "long " * 49 + "lon"]},
        {**ROWS, "label": [1, 2, 0, 4]},  # null is not zero
        {**ROWS, "score": [0.5, float("nan"), None, 0.0]},
        {**ROWS, "flag": [True, False, False, True]},
        {**ROWS, "tags": [["x"], None, None, ["y", "z"]]},
        {**ROWS, "price": [Decimal("1.11"), None, Decimal("2.00"), Decimal("0.01")]},
        {k: [v[1], v[0], *v[2:]] for k, v in ROWS.items()},  # row order counts
        {**{k: v for k, v in ROWS.items() if k != "blank"}, "empty": ROWS["blank"]},  # names count
    ]
    hashes = [digest(pa.table(v)) for v in variants]

    assert base not in hashes
    assert len(set(hashes)) == len(hashes)


def test_type_widening_is_part_of_normalising_but_kind_changes_are_not() -> None:
    as_int32 = pa.table({"x": pa.array([1, 2], pa.int32())})
    as_int64 = pa.table({"x": pa.array([1, 2], pa.int64())})
    as_text = pa.table({"x": ["1", "2"]})
    as_float = pa.table({"x": [1.0, 2.0]})

    assert digest(as_int32) == digest(as_int64)
    assert len({digest(as_int64), digest(as_text), digest(as_float)}) == 3
    assert normalise(as_int32).schema == pa.schema([("x", pa.int64())])


def test_text_split_differently_across_rows_hashes_differently() -> None:
    assert digest(pa.table({"t": ["ab", "c"]})) != digest(pa.table({"t": ["a", "bc"]}))


def test_every_kind_of_column_survives_the_lake_and_hashes_back(tmp_path: Path) -> None:
    from modelfleet.lake import Lake

    source = tmp_path / "kinds.parquet"
    pq.write_table(pa.table(ROWS), source)
    lake = Lake(str(tmp_path / "lake"))

    found = lake.ingest(source, "kinds")
    stored = lake.read_table("kinds")

    assert stored.num_rows == 4
    assert content_hash(stored) == found.sha256
    assert stored.column("meta").to_pylist() == ROWS["meta"]
    assert stored.column("price").to_pylist() == ROWS["price"]
