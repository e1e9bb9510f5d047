"""Serving captures a sample of live predictions into the lake, for labelling and retraining."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from modelfleet.lake import Lake
from modelfleet.lake.capture import read_captures
from tests.conftest import call, start_fleet


def test_captured_predictions_land_in_the_lake_as_partitioned_parquet(tmp_path: Path) -> None:
    lake_root = tmp_path / "lake"
    config: dict[str, Any] = {
        "lake": {"root": str(lake_root)},
        "models": {
            "sentiment": {"class": "vader-sentiment", "capture": {"rate": 1.0, "flush_s": 0.2}},
            "echo": {"class": "echo"},
        },
        "services": {"light": {"models": ["sentiment", "echo"]}},
    }
    fleet = start_fleet(tmp_path / "fleet", config)
    try:
        texts = [f"message number {i} is wonderful" for i in range(12)]
        for text in texts[:4]:
            assert call(f"{fleet.gateway}/v1/models/sentiment/predict", "POST", {"text": text}).status == 200
        batch = call(f"{fleet.gateway}/v1/models/sentiment/predict", "POST", [{"text": t} for t in texts[4:]])
        assert batch.status == 200
        assert call(f"{fleet.gateway}/v1/models/echo/predict", "POST", {"text": "not captured"}).status == 200
        deadline = time.monotonic() + 20
        table = None
        while time.monotonic() < deadline:
            table = read_captures(Lake(str(lake_root)), "sentiment")
            if table is not None and table.num_rows >= len(texts):
                break
            time.sleep(0.2)
        assert table is not None
        assert table.num_rows == len(texts)
        rows = table.to_pylist()
        assert sorted(json.loads(r["input"])["text"] for r in rows) == sorted(texts)
        assert {json.loads(r["output"])["label"] for r in rows} == {"positive"}
        assert {r["model"] for r in rows} == {"sentiment"}
        assert all(r["date"] and r["hour"] for r in rows)
        listed = fleet.cli("lake", "captures", "sentiment", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["rows"] == len(texts)
        assert not (lake_root / "captures" / "echo").exists()
    finally:
        fleet.stop()
