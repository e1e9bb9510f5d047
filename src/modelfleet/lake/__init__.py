"""The data lake: content-addressed dataset versions, captured predictions and model artifacts.

Needs the ``lake`` extra (pyarrow, fsspec); importing this package without it raises ConfigError
with the install hint.
"""

from __future__ import annotations

from modelfleet.lake.capture import CapturePartition, CaptureWriter, capture_partitions, read_captures
from modelfleet.lake.lake import Column, DatasetVersion, Lake, parse_ref
from modelfleet.lake.source import FORMATS, DatasetSource, detect_format

__all__ = [
    "FORMATS",
    "CapturePartition",
    "CaptureWriter",
    "Column",
    "DatasetSource",
    "DatasetVersion",
    "Lake",
    "capture_partitions",
    "detect_format",
    "parse_ref",
    "read_captures",
]
