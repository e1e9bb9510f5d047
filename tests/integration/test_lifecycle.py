"""Stopping a fleet: drain in-flight work, stop every process, leave nothing behind."""

from __future__ import annotations

import threading
import time
from typing import Any

from modelfleet.supervisor.state import pid_alive
from tests.conftest import Reply, call

CONFIG: dict[str, Any] = {
    "gateway": {"health_interval_s": 0.2},
    "supervisor": {"drain_timeout_s": 5},
    "models": {"sleepy": {"class": "mf_test_models:Sleepy"}, "echo": {"class": "echo"}},
    "services": {"slow": {"models": ["sleepy"], "replicas": 1}, "fast": {"models": ["echo"], "replicas": 1}},
}


def test_down_drains_in_flight_requests_and_stops_every_process(fleet_factory: Any) -> None:
    fleet = fleet_factory(CONFIG)
    pids = [p["pid"] for p in fleet.status()["processes"]]
    assert len(pids) == 3
    result: list[Reply] = []
    slow = threading.Thread(
        target=lambda: result.append(
            call(f"{fleet.gateway}/v1/models/sleepy/predict", "POST", {"text": "x", "sleep_ms": 1500})
        )
    )
    slow.start()
    time.sleep(0.4)  # the request is now in flight inside the worker
    down = fleet.cli("down")
    slow.join(timeout=30)
    assert down.returncode == 0, down.stderr
    assert result, "the in-flight request got no answer"
    assert result[0].status == 200, result
    assert fleet.process.wait(timeout=30) == 0
    assert not any(pid_alive(pid) for pid in pids)
    assert not (fleet.run_dir / "state.json").exists()
    assert fleet.cli("status").returncode == 1


def test_a_second_fleet_on_the_same_run_dir_is_refused(fleet_factory: Any) -> None:
    fleet = fleet_factory(CONFIG)
    again = fleet.cli("up", timeout_s=60)
    assert again.returncode == 2
    assert "already running" in again.stderr
    assert fleet.status()["running"] is True
