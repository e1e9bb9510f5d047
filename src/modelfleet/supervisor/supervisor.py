"""The supervisor: starts the gateway and every worker replica as separate processes, waits until
all are ready, restarts a crashed one with exponential backoff, and on SIGINT/SIGTERM drains the
gateway first, then the workers."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from modelfleet.errors import ConfigError
from modelfleet.plan import Endpoint, FleetPlan
from modelfleet.settings import Settings
from modelfleet.supervisor.state import PLAN_FILE, STATE_FILE, FleetState, ProcessState, pid_alive

log = logging.getLogger("modelfleet.supervisor")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the supervisor is killed -9 its children must not linger holding ports.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def make_plan(settings: Settings) -> FleetPlan:
    """Assign every process its address: configured ports where given, free loopback ports otherwise."""
    gateway_port = settings.gateway.port or free_port(settings.gateway.host)
    services: dict[str, list[Endpoint]] = {}
    job_workers: dict[str, list[Endpoint]] = {}
    streams: dict[str, list[Endpoint]] = {}
    trainers: dict[str, list[Endpoint]] = {}
    # Background services are started like workers but host no models; each kind is its own command.
    background = {"job-worker": job_workers, "stream": streams, "trainer": trainers}
    taken = {gateway_port}
    for name, service in settings.services.items():
        endpoints = []
        for replica in range(service.replicas):
            if service.port is not None:
                port = service.port + replica
            else:
                port = free_port(settings.worker.host)
                while port in taken:
                    port = free_port(settings.worker.host)
            taken.add(port)
            endpoints.append(Endpoint(settings.worker.host, port))
        background.get(service.kind, services)[name] = endpoints
    models = {model: name for name, service in settings.services.items() for model in service.models}
    return FleetPlan(
        Endpoint(settings.gateway.host, gateway_port), services, models, job_workers, streams, trainers
    )


def probe_ready(endpoint: Endpoint, timeout_s: float = 1.0) -> bool:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@dataclass
class _Child:
    state: ProcessState
    endpoint: Endpoint
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    consecutive_crashes: int = 0
    restart_at: float | None = None
    ready: bool = False
    history: list[float] = field(default_factory=list)


class Supervisor:
    """Runs one fleet in the foreground until a signal asks it to stop."""

    def __init__(self, settings: Settings, config_path: Path) -> None:
        self.settings = settings
        self.config_path = config_path.resolve()
        self.run_dir = Path(settings.supervisor.run_dir).resolve()
        self.log_dir = self.run_dir / "logs"
        self._stopping = False
        self._children: list[_Child] = []
        self.plan: FleetPlan | None = None
        self._state: FleetState | None = None
        # Set once this supervisor has claimed the run folder; until then it must not touch its files.
        self._owns_run_dir = False

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "modelfleet", *args, "--config", str(self.config_path)]

    def _prepare(self) -> None:
        existing = FleetState.read(self.run_dir)
        if (
            existing is not None
            and pid_alive(existing.supervisor_pid)
            and existing.supervisor_pid != os.getpid()
        ):
            raise ConfigError(
                f"a fleet is already running from {self.run_dir} (supervisor pid {existing.supervisor_pid}); "
                "stop it with 'modelfleet down' or use another supervisor.run_dir"
            )
        self._owns_run_dir = True
        self.plan = make_plan(self.settings)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        plan_path = self.run_dir / PLAN_FILE
        self.plan.write(plan_path)
        roles = (
            ("worker", self.plan.services),
            ("job-worker", self.plan.job_workers),
            ("stream", self.plan.streams),
            ("trainer", self.plan.trainers),
        )
        for role, group in roles:
            for service, endpoints in group.items():
                for index, endpoint in enumerate(endpoints):
                    self._add_child(role, service, index, endpoint, plan_path)
        gateway = self.plan.gateway
        self._children.append(
            _Child(
                ProcessState("gateway", "gateway", None, gateway.url),
                gateway,
                self._argv("gateway", "--plan", str(plan_path)),
                self.log_dir / "gateway.log",
            )
        )
        self._state = FleetState(
            os.getpid(), str(self.config_path), gateway.url, [c.state for c in self._children]
        )
        self._save()

    def _bootstrap(self) -> None:
        """Train registry-backed models that have no version yet, in a process of its own, first."""
        if not any(m.registry is not None and m.registry.bootstrap for m in self.settings.models.values()):
            return
        log_path = self.log_dir / "bootstrap.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(self._argv("bootstrap"), stdout=subprocess.PIPE, stderr=log_file)
            assert process.stdout is not None
            for line in process.stdout:
                # Progress for whoever started the fleet: first starts train models and take a while.
                print(line.decode("utf-8", errors="replace").rstrip(), flush=True)
                log_file.write(line)
            code = process.wait()
        if code != 0:
            raise ConfigError(f"training the fleet's first model versions failed:\n{_tail(log_path)}")

    def _add_child(self, role: str, service: str, index: int, endpoint: Endpoint, plan_path: Path) -> None:
        name = f"{service}-{index}"
        argv = self._argv(role, "--service", service, "--port", str(endpoint.port))
        if role in ("job-worker", "stream"):
            argv += ["--plan", str(plan_path)]
        if role == "stream":
            # A stable replica number names its consumer, so a restarted replica finds its own messages.
            argv += ["--replica", str(index)]
        state = ProcessState(name, role, service, endpoint.url)
        self._children.append(_Child(state, endpoint, argv, self.log_dir / f"{name}.log"))

    def _save(self) -> None:
        if self._state is not None:
            self._state.write(self.run_dir)

    def _spawn(self, child: _Child) -> None:
        log_file = open(child.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            child.process = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                # Own process group: a terminal's Ctrl-C reaches only the supervisor, which then
                # stops the children in order (gateway first).
                process_group=0,
                env=_child_env(child.state.role),
            )
        finally:
            log_file.close()
        child.state.pid = child.process.pid
        child.state.started_at = time.time()
        child.state.status = "starting"
        child.ready = False
        child.restart_at = None
        self._save()

    def start(self) -> FleetPlan:
        """Start every process and wait until all are ready; raises ConfigError if one cannot start."""
        self._prepare()
        self._bootstrap()
        for child in self._children:
            self._spawn(child)
        deadline = time.monotonic() + self.settings.supervisor.ready_timeout_s
        while not all(c.ready for c in self._children):
            if self._stopping:
                raise ConfigError("stopped while starting")
            for child in self._children:
                if child.ready:
                    continue
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    tail = _tail(child.log_path)
                    self.stop()
                    raise ConfigError(f"{child.state.name} exited with code {code} while starting:\n{tail}")
                if probe_ready(child.endpoint, timeout_s=0.5):
                    child.ready = True
                    child.state.status = "ready"
                    self._save()
            if time.monotonic() > deadline:
                waiting = [c.state.name for c in self._children if not c.ready]
                self.stop()
                raise ConfigError(
                    f"not ready after {self.settings.supervisor.ready_timeout_s:.0f}s: {', '.join(waiting)} "
                    f"(logs in {self.log_dir})"
                )
            time.sleep(0.1)
        assert self.plan is not None
        return self.plan

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self._stopping = True

    def watch(self) -> None:
        """Restart crashed processes until a stop is requested."""
        cfg = self.settings.supervisor
        while not self._stopping:
            now = time.monotonic()
            for child in self._children:
                process = child.process
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        log.warning("restarting %s (restart %d)", child.state.name, child.state.restarts)
                        self._spawn(child)
                    continue
                if process is None:
                    continue
                code = process.poll()
                if code is None:
                    if not child.ready and probe_ready(child.endpoint, timeout_s=0.2):
                        child.ready = True
                        child.state.status = "ready"
                        self._save()
                    continue
                uptime = time.time() - (child.state.started_at or time.time())
                if uptime >= cfg.restart_reset_after_s:
                    child.consecutive_crashes = 0
                backoff = min(
                    cfg.restart_backoff_initial_s * 2**child.consecutive_crashes, cfg.restart_backoff_max_s
                )
                child.consecutive_crashes += 1
                child.state.restarts += 1
                child.state.status = f"crashed (exit {code}); restarting in {backoff:.1f}s"
                child.state.pid = None
                child.ready = False
                child.restart_at = now + backoff
                child.process = None
                log.error("%s exited with code %s; restarting in %.1fs", child.state.name, code, backoff)
                self._save()
            time.sleep(0.1)

    def stop(self) -> None:
        """Drain and stop: the gateway first so no new work reaches workers, then the workers."""
        self._stopping = True
        drain_s = self.settings.supervisor.drain_timeout_s
        gateway = [c for c in self._children if c.state.role == "gateway"]
        workers = [c for c in self._children if c.state.role != "gateway"]
        for group in (gateway, workers):
            for child in group:
                if child.process is not None and child.process.poll() is None:
                    child.state.status = "stopping"
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + drain_s + 2.0
            for child in group:
                if child.process is None:
                    continue
                try:
                    child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("%s did not stop within %.0fs; killing it", child.state.name, drain_s)
                    child.process.kill()
                    child.process.wait()
                child.state.status = "stopped"
        if self._owns_run_dir:
            for name in (STATE_FILE, PLAN_FILE):
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / name).unlink()

    def run(self, on_ready: object = None) -> None:
        """Start, report readiness through ``on_ready(plan)``, watch, and stop on SIGINT/SIGTERM."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            plan = self.start()
            if callable(on_ready):
                on_ready(plan)
            self.watch()
        finally:
            self.stop()


# Serving processes run numpy/BLAS work one request at a time and size their model runtimes'
# thread pools in fleet.yaml; BLAS and OpenMP pools of their own would spin on the same cores,
# taking CPU from the event loops (one run on a busy machine: spam p50 6.7 -> 4.8 ms, intent
# 12.5 -> 9.9 ms through the gateway). A value set in the environment wins; trainers keep the
# libraries' defaults.
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _child_env(role: str) -> dict[str, str]:
    env = dict(os.environ)
    if role != "trainer":
        for name in _ONE_THREAD:
            env.setdefault(name, "1")
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
