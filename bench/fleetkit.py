"""What every benchmark script shares for starting a fleet: a temporary folder, the Supervisor, the pids.

    with fleet("packed", lambda folder: yaml_text) as running:
        running.plan.gateway.port, running.pids["gateway"], running.folder

The config is written into the fleet's own temporary folder (so its store and broker files, logs and
run state stay there), the Supervisor starts every process and waits until each is ready, and on
exit stops them all. The folder is removed unless the block raised or ``keep`` (or
``running.keep``) asks to keep it for its logs.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DATA_DIR = ROOT / ".modelfleet"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class RunningFleet:
    """A started fleet: its plan (addresses), the pid of every process by name, and its folder."""

    label: str
    folder: Path
    plan: Any
    pids: dict[str, int]
    log_dir: Path
    keep: bool = False


@contextlib.contextmanager
def fleet(label: str, config: Callable[[Path], str], keep: bool = False) -> Iterator[RunningFleet]:
    """Start the fleet whose fleet.yaml ``config(folder)`` writes; stop it when the block ends."""
    from modelfleet.settings import load_settings
    from modelfleet.supervisor.state import FleetState
    from modelfleet.supervisor.supervisor import Supervisor

    folder = Path(tempfile.mkdtemp(prefix=f"modelfleet-bench-{label}-"))
    path = folder / "fleet.yaml"
    path.write_text(config(folder), encoding="utf-8")
    supervisor = Supervisor(load_settings(path), path)
    running: RunningFleet | None = None
    failed = False
    try:
        started = time.perf_counter()
        plan = supervisor.start()
        log(f"{label} fleet ready in {time.perf_counter() - started:.1f}s: gateway {plan.gateway.url}")
        state = FleetState.read(supervisor.run_dir)
        if state is None:
            raise RuntimeError("the supervisor wrote no state.json")
        pids: dict[str, int] = {}
        for proc in state.processes:
            if proc.pid is None:
                raise RuntimeError(f"{proc.name} has no pid")
            pids[proc.name] = proc.pid
        running = RunningFleet(label, folder, plan, pids, Path(supervisor.log_dir), keep)
        yield running
    except BaseException:
        failed = True
        raise
    finally:
        supervisor.stop()
        if failed or keep or (running is not None and running.keep):
            log(f"{label} fleet folder kept: {folder} (logs in {supervisor.log_dir})")
        else:
            shutil.rmtree(folder, ignore_errors=True)
