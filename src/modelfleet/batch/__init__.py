"""Offline batch scoring: stream a CSV, JSONL or Parquet file through a running fleet, resumably."""

from __future__ import annotations

from modelfleet.batch.files import BatchConfigError, detect_format, read_rows
from modelfleet.batch.run import BatchSummary, run_batch

__all__ = ["BatchConfigError", "BatchSummary", "detect_format", "read_rows", "run_batch"]
