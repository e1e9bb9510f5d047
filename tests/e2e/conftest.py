"""The shipped fleet.yaml, started once for every end-to-end module, as a newcomer starts it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, ReadinessWatch, RunningFleet, free_port, start_fleet, write_config

DEFAULT_MODELS = ("sentiment", "language", "spam", "embedder", "intent")


@pytest.fixture(scope="package")
def default_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningFleet, ReadinessWatch]]:
    directory = tmp_path_factory.mktemp("default")
    config = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    # Same fleet, but on a free port and a private run folder; the artifact cache is the project's.
    port = free_port()
    config["gateway"]["port"] = port
    config["data_dir"] = str(ROOT / ".modelfleet")
    # The registry (in the store) and the lake start empty, so intent and spam are trained on start.
    config["lake"] = {"root": str(directory / "lake")}
    for model in config["models"].values():
        bootstrap = (model.get("registry") or {}).get("bootstrap") or {}
        for field in ("dataset", "test_dataset"):
            if field in bootstrap:
                bootstrap[field] = str((ROOT / bootstrap[field]).resolve())
    path: Path = write_config(directory, config)
    # A client that polls readiness from the first moment of `up`, and once it is 200 predicts on
    # every model, as a load balancer or a Kubernetes probe would send traffic.
    watch = ReadinessWatch(
        f"http://127.0.0.1:{port}", {m: {"text": "How do I reset my PIN?"} for m in DEFAULT_MODELS}, 0.1
    ).start()
    try:
        running = start_fleet(directory, path, timeout_s=600)
        time.sleep(3)
    finally:
        watch.stop()
    yield running, watch
    running.stop()


@pytest.fixture(scope="package")
def default_fleet(default_start: tuple[RunningFleet, ReadinessWatch]) -> RunningFleet:
    return default_start[0]
