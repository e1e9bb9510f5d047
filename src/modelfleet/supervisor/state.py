"""The running fleet as the supervisor records it, so `status` and `down` can find it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "state.json"
PLAN_FILE = "plan.json"


@dataclass
class ProcessState:
    """One supervised process: the gateway or a worker replica."""

    name: str
    role: str
    service: str | None
    url: str
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    status: str = "starting"


@dataclass
class FleetState:
    supervisor_pid: int
    config: str
    gateway_url: str
    processes: list[ProcessState] = field(default_factory=list)

    def write(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        os.replace(tmp, run_dir / STATE_FILE)

    @classmethod
    def read(cls, run_dir: Path) -> FleetState | None:
        """The recorded state, or None when no fleet was started from this run folder."""
        try:
            data = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return cls(
            supervisor_pid=data["supervisor_pid"],
            config=data["config"],
            gateway_url=data["gateway_url"],
            processes=[ProcessState(**p) for p in data["processes"]],
        )


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
