"""Jobs benchmark: how many jobs a second go through POST /v1/jobs, the broker and the job workers.

For each broker (the embedded SQLite broker, Redis, NATS JetStream, RabbitMQ) and each number of
job-worker replicas (1, then 2) a fleet is started (one fleet at a time): service ``light`` hosts
``noop`` (the built-in echo model, inline) and ``sentiment`` (VADER), service ``jobs`` is the
job-worker. Against each fleet, for each model:

- single: N jobs of one input each are submitted through ``POST /v1/jobs`` by a load-generator
  process (this script with ``submit``, built on bench/loadgen.py's connections) at concurrency 32;
- batch-64: M jobs of 64 inputs each, the same way.

Two rates per row: *submitted* jobs/s (first request sent to last 202 received) and *completed*
jobs/s (first request sent until the store shows all N jobs finished: the end-to-end rate, which
is the one the target is about). The store is the fleet's SQLite file, read by this process every
10 ms. The baseline, in this process with no server running, at the start and again at the end:
the model's ``predict`` on one input (calls/s) and on 64 inputs (inputs/s); ``x raw`` is completed
jobs/s (inputs/s for batch-64) over it. Every row is measured ``--repeat`` times and the best
completion rate is kept (the machine is shared: other work only ever slows a run down); all
attempts are in the JSON. The table goes to stdout, the results to bench/results/jobs-<stamp>.json.

    .venv/bin/python bench/bench_jobs.py [--quick] [--brokers sqlite,redis] [--replicas 1,2]
    .venv/bin/python bench/bench_jobs.py --profile [--broker sqlite] [--model noop]   # py-spy, no table

Target: the embedded broker completes >= 1,000 single-input noop jobs/s end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from bench_foundation import (
    NOISE_CORES,
    QuietBudget,
    _caller,
    _f,
    git_commit,
    http_call,
    load_model,
    package_versions,
    time_calls_quietly,
    wait_quiet,
)
from fleetkit import DATA_DIR, RESULTS_DIR, ROOT, RunningFleet, fleet, log

BROKERS: dict[str, str | None] = {
    "sqlite": None,  # the embedded broker, a file in the fleet's folder
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}
MODELS: dict[str, dict[str, Any]] = {
    "noop": {"class": "echo"},
    "sentiment": {"class": "vader-sentiment"},
}
RAW_WORKLOAD = {"noop": "W1", "sentiment": "W2"}  # bench_foundation's names for the same classes
TEXT = "The new release is fast and reliable, and the team was a pleasure to work with, though the docs lag."
BATCH = 64
CONCURRENCY = 32
TARGET_JOBS_PER_S = 1000.0
POLL_S = 0.01
SIZES = ("single", f"batch-{BATCH}")


@dataclass
class Row:
    """One measurement: a broker, a number of job-worker replicas, a model and a job size."""

    broker: str
    replicas: int | None
    model: str
    size: str
    jobs: int = 0
    inputs_per_job: int = 1
    submit_jobs_per_s: float | None = None
    complete_jobs_per_s: float | None = None
    inputs_per_s: float | None = None
    submit_p50_ms: float | None = None
    submit_p99_ms: float | None = None
    server_cpu_ms_per_job: float | None = None
    cpu_split: dict[str, float] = field(default_factory=dict)
    other_cores: float | None = None
    ratio_to_raw: float | None = None
    failed_jobs: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    failure: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- submit


def submit_main(argv: Sequence[str]) -> int:
    """The load-generator process: ``count`` POSTs over ``concurrency`` keep-alive connections, then exit.

    Prints one JSON object: wall-clock times of the first send and the last answer, the 202s, the
    errors (with samples), submit latencies and its own CPU seconds.
    """
    import uvloop

    import loadgen

    parser = argparse.ArgumentParser(prog="bench_jobs.py submit")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    if not (1 <= args.count <= 1_000_000 and 1 <= args.concurrency <= 1024):
        parser.error("count must be 1..1000000 and concurrency 1..1024")

    class Submissions(loadgen.Generator):
        """Counts 202 as success, and stops sending once ``count`` requests went out."""

        def completed(self, status: int, latency: float, body: bytes) -> None:
            if status == 202:
                self.ok += 1
                self.latencies.append(latency)
            else:
                self.errors += 1
                if len(self.error_samples) < loadgen.MAX_ERROR_SAMPLES:
                    self.error_samples.append(f"{status}: {body[:300]!r}")
            if self.ok + self.errors + self.in_flight >= args.count:
                self.phase = 2

    async def run() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        request = loadgen.encode_request("127.0.0.1", args.port, "/v1/jobs", args.body.encode())
        gen = Submissions(request)
        gen.phase = 1
        conns = []
        for _ in range(min(args.concurrency, args.count)):
            _, conn = await loop.create_connection(lambda: loadgen.Connection(gen), "127.0.0.1", args.port)
            conns.append(conn)
        gen.drained = loop.create_future()
        cpu0 = time.process_time()
        first = time.time()
        if len(conns) >= args.count:
            gen.phase = 2
        for conn in conns:
            conn.send()
        try:
            async with asyncio.timeout(600):
                await gen.drained
        except TimeoutError:
            gen.fail(f"{gen.in_flight} submissions unanswered after 600 s")
        last = time.time()
        for conn in conns:
            conn.close()
        lat = sorted(gen.latencies)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0 if lat else None

        return {
            "fatal": gen.fatal,
            "first_send": first,
            "last_answer": last,
            "accepted": gen.ok,
            "errors": gen.errors,
            "error_samples": gen.error_samples,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "cpu_s": time.process_time() - cpu0,
        }

    result = uvloop.run(run())
    print(json.dumps(result), flush=True)
    return 2 if result["fatal"] else 0


# ---------------------------------------------------------------------------------------------- fleet


def fleet_config(folder: Path, broker_url: str | None, replicas: int, queue: str, concurrency: int) -> str:
    config: dict[str, Any] = {
        "data_dir": str(DATA_DIR),
        "store_url": f"sqlite:///{folder}/modelfleet.db",
        "log_level": "warning",
        "gateway": {"host": "127.0.0.1", "port": 0},
        "supervisor": {"run_dir": f"{folder}/run", "ready_timeout_s": 600},
        "broker": {"url": broker_url or f"sqlite:///{folder}/broker.db", "queue": queue},
        "models": MODELS,
        "services": {
            "light": {"models": list(MODELS), "replicas": 1},
            "jobs": {"kind": "job-worker", "replicas": replicas, "concurrency": concurrency},
        },
    }
    head = f"# Written by bench/bench_jobs.py for one benchmark run ({replicas} job-worker replicas).\n"
    return head + yaml.safe_dump(config, sort_keys=False)


def forget_queue(url: str | None, queue: str) -> None:
    """Remove the run's queue from a shared broker server (the embedded one goes with the folder)."""
    if url is None:
        return
    sys.path.insert(0, str(ROOT))
    from tests.conftest import forget_broker_queue

    asyncio.run(forget_broker_queue(url, queue))


def broker_reachable(url: str | None) -> str | None:
    """None when the broker answers, else why not."""
    if url is None:
        return None
    from modelfleet.broker import make_broker

    async def check() -> None:
        broker = make_broker(url)
        await broker.open()
        await broker.close()

    try:
        asyncio.run(check())
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


class JobCounter:
    """Counts the finished jobs created since a moment, reading the fleet's SQLite store."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)

    def finished(self, since: str) -> tuple[int, int]:
        """(completed, failed) among the jobs created at or after ``since``."""
        counts = dict.fromkeys(("completed", "failed"), 0)
        for status in counts:
            row = self.conn.execute(
                "SELECT count(*) FROM jobs WHERE status = ? AND created_at >= ?", (status, since)
            ).fetchone()
            counts[status] = int(row[0])
        return counts["completed"], counts["failed"]

    def close(self) -> None:
        self.conn.close()


def _store_time(moment: datetime) -> str:
    # How SQLAlchemy writes a UTC timestamp into SQLite, so text comparison orders by time.
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def job_body(model: str, inputs: int) -> bytes:
    if inputs == 1:
        return orjson.dumps({"model": model, "input": {"text": TEXT}})
    return orjson.dumps({"model": model, "inputs": [{"text": TEXT} for _ in range(inputs)]})


def run_jobs(
    running: RunningFleet, model: str, inputs: int, count: int, timeout_s: float = 600.0
) -> dict[str, Any]:
    """Submit ``count`` jobs and wait until the store shows them all finished; times and CPU."""
    counter = JobCounter(running.folder / "modelfleet.db")
    procs = {name: psutil.Process(pid) for name, pid in running.pids.items()}
    since = _store_time(datetime.now(UTC))
    cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
    sys0 = psutil.cpu_times()
    self0 = time.process_time()
    argv = [sys.executable, __file__, "submit", "--port", str(running.plan.gateway.port)]
    argv += ["--body", job_body(model, inputs).decode(), "--count", str(count)]
    argv += ["--concurrency", str(CONCURRENCY)]
    submitter = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    done_at: float | None = None
    completed = failed = 0
    try:
        while time.monotonic() < deadline:
            completed, failed = counter.finished(since)
            if completed + failed >= count:
                done_at = time.time()
                break
            if submitter.poll() not in (None, 0):
                break
            time.sleep(POLL_S)
        cpu1 = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
        sys1 = psutil.cpu_times()
        self1 = time.process_time()
        out, err = submitter.communicate(timeout=60)
    finally:
        if submitter.poll() is None:
            submitter.kill()
        counter.close()
    lines = out.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if not result or result.get("fatal") or submitter.returncode != 0:
        reason = result.get("fatal") or f"submitter exit {submitter.returncode}: {err.strip()[-500:]}"
        return {"failure": reason}
    if done_at is None:
        return {
            "failure": f"only {completed + failed} of {count} jobs finished within {timeout_s:.0f}s",
            **result,
        }
    elapsed = done_at - result["first_send"]
    busy = (sum(sys1) - sys1.idle - sys1.iowait) - (sum(sys0) - sys0.idle - sys0.iowait)
    fleet_cpu = {name: cpu1[name] - cpu0[name] for name in procs}
    mine = self1 - self0
    return {
        **result,
        "completed": completed,
        "failed": failed,
        "elapsed_s": elapsed,
        "submit_s": result["last_answer"] - result["first_send"],
        "fleet_cpu_s": fleet_cpu,
        "other_cores": (busy - sum(fleet_cpu.values()) - result["cpu_s"] - mine) / max(elapsed, 1e-9),
    }


def measure_jobs(
    running: RunningFleet, broker: str, replicas: int, model: str, size: str, count: int, repeat: int
) -> Row:
    inputs = BATCH if size != "single" else 1
    row = Row(broker, replicas, model, size, jobs=count, inputs_per_job=inputs)
    best: dict[str, Any] | None = None
    for attempt in range(repeat):
        wait_quiet(f"{broker} r={replicas} {model} {size} #{attempt + 1}")
        result = run_jobs(running, model, inputs, count)
        row.attempts.append(
            {
                k: result.get(k)
                for k in ("failure", "elapsed_s", "submit_s", "accepted", "errors", "failed", "other_cores")
            }
        )
        if result.get("failure"):
            row.failure = result["failure"]
            row.error_samples = result.get("error_samples", [])
            return row
        log(
            f"{broker} r={replicas} {model} {size} #{attempt + 1}: "
            f"{count / result['elapsed_s']:.0f} jobs/s completed, "
            f"{count / result['submit_s']:.0f} submitted, "
            f"other {result['other_cores']:.2f} cores"
        )
        if best is None or result["elapsed_s"] < best["elapsed_s"]:
            best = result
    assert best is not None
    row.failure = None
    row.complete_jobs_per_s = count / best["elapsed_s"]
    row.submit_jobs_per_s = count / best["submit_s"]
    row.inputs_per_s = row.complete_jobs_per_s * inputs
    row.submit_p50_ms = best["p50_ms"]
    row.submit_p99_ms = best["p99_ms"]
    row.cpu_split = {name: cpu * 1000.0 / count for name, cpu in best["fleet_cpu_s"].items()}
    row.server_cpu_ms_per_job = sum(row.cpu_split.values())
    row.other_cores = best["other_cores"]
    row.failed_jobs = best["failed"]
    row.errors = best["errors"]
    row.error_samples = best["error_samples"]
    return row


def warm_up(running: RunningFleet) -> None:
    """A few jobs of every kind first, so connections, caches and the store's pages are warm."""
    for model in MODELS:
        for inputs, count in ((1, 200), (BATCH, 10)):
            result = run_jobs(running, model, inputs, count, timeout_s=120)
            if result.get("failure"):
                raise RuntimeError(f"warm-up {model} x{inputs}: {result['failure']}")
    status, answer = http_call(running.plan.gateway.port, "GET", "/v1/fleet")
    if status != 200:
        raise RuntimeError(f"GET /v1/fleet answered {status}: {answer[:200]!r}")


def measure_broker(
    broker: str, replicas: int, counts: dict[str, int], models: Sequence[str], args: argparse.Namespace
) -> list[Row]:
    url = BROKERS[broker]
    queue = f"bench-jobs-{uuid.uuid4().hex[:8]}"
    rows: list[Row] = []
    config: Callable[[Path], str] = lambda folder: fleet_config(  # noqa: E731
        folder, url, replicas, queue, args.worker_concurrency
    )
    try:
        with fleet(f"jobs-{broker}-r{replicas}", config, args.keep) as running:
            warm_up(running)
            for model in models:
                for size in SIZES:
                    row = measure_jobs(running, broker, replicas, model, size, counts[size], args.repeat)
                    rows.append(row)
                    running.keep = running.keep or bool(row.failure)
    finally:
        forget_queue(url, queue)
    return rows


# ---------------------------------------------------------------------------------------------- raw


def measure_raw(
    models: Sequence[str], warmup_s: float, duration_s: float, retries: int, suffix: str
) -> list[Row]:
    """Each model's predict in this process: one input per call (calls/s), and 64 per call (inputs/s)."""
    rows = []
    for model in models:
        instance = load_model(RAW_WORKLOAD[model])
        predict = _caller(instance)
        one = [type(instance).input_type(text=TEXT)]
        many = one * BATCH
        if len(predict(many)) != BATCH:
            raise RuntimeError(f"raw {model}: predict gave the wrong number of outputs")
        for size, inputs in (("single", one), (SIZES[1], many)):
            per_call = len(inputs)
            call = functools.partial(predict, inputs)
            stats = time_calls_quietly(call, warmup_s, duration_s, retries, f"raw {model} {size}{suffix}")
            row = Row("raw" + suffix, None, model, size, inputs_per_job=per_call)
            row.complete_jobs_per_s = stats["calls_per_s"]
            row.inputs_per_s = stats["calls_per_s"] * per_call
            row.server_cpu_ms_per_job = stats["cpu_ms_per_call"]
            row.other_cores = stats["other_cores"]
            rows.append(row)
            rate = stats["calls_per_s"]
            log(f"raw {model} {size}{suffix}: {rate:.0f} calls/s ({row.inputs_per_s:.0f} inputs/s)")
        del instance
        gc.collect()
    return rows


def add_ratios(rows: list[Row]) -> dict[tuple[str, str], float]:
    """x raw of every fleet row: its inputs/s over the better raw inputs/s of the same model and size."""
    raw: dict[tuple[str, str], float] = {}
    for row in rows:
        if row.broker.startswith("raw") and row.inputs_per_s:
            key = (row.model, row.size)
            raw[key] = max(raw.get(key, 0.0), row.inputs_per_s)
    for row in rows:
        if not row.broker.startswith("raw") and row.inputs_per_s and raw.get((row.model, row.size)):
            row.ratio_to_raw = row.inputs_per_s / raw[(row.model, row.size)]
    return raw


# ---------------------------------------------------------------------------------------------- report


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'broker':<12} {'r':>2} {'model':<10} {'size':<9} {'jobs':>6} {'submit j/s':>10} {'done j/s':>9} "
        f"{'inputs/s':>9} {'p50 ms':>7} {'srv CPU ms/job':>14}  {'CPU split ms/job':<44} {'other':>6} "
        f"{'x raw':>6} {'failed':>6}"
    )
    lines = [header, "-" * len(header)]
    last = None
    for row in rows:
        if last is not None and (row.broker, row.replicas) != last:
            lines.append("")
        last = (row.broker, row.replicas)
        r = "-" if row.replicas is None else str(row.replicas)
        if row.failure:
            lines.append(f"{row.broker:<12} {r:>2} {row.model:<10} {row.size:<9} FAILED: {row.failure}")
            continue
        split = " ".join(f"{k} {v:.3f}" for k, v in row.cpu_split.items())
        jobs = str(row.jobs) if row.jobs else "-"
        lines.append(
            f"{row.broker:<12} {r:>2} {row.model:<10} {row.size:<9} {jobs:>6} "
            f"{_f(row.submit_jobs_per_s, '.0f'):>10} {_f(row.complete_jobs_per_s, '.0f'):>9} "
            f"{_f(row.inputs_per_s, '.0f'):>9} {_f(row.submit_p50_ms, '.2f'):>7} "
            f"{_f(row.server_cpu_ms_per_job, '.3f'):>14}  {split:<44} {_f(row.other_cores, '.2f'):>6} "
            f"{_f(row.ratio_to_raw, '.3f'):>6} {row.failed_jobs + row.errors if row.jobs else '':>6}"
        )
    return "\n".join(lines)


def target_of(rows: list[Row]) -> dict[str, Any]:
    found = [
        r for r in rows if r.broker == "sqlite" and r.model == "noop" and r.size == "single" and not r.failure
    ]
    best = max(found, key=lambda r: r.complete_jobs_per_s or 0.0, default=None)
    rate = None if best is None else best.complete_jobs_per_s
    return {
        "what": "embedded broker, noop, single-input jobs, completed jobs/s (best replica count)",
        "jobs_per_s": rate,
        "replicas": None if best is None else best.replicas,
        "target": f">= {TARGET_JOBS_PER_S:.0f}",
        "met": None if rate is None else rate >= TARGET_JOBS_PER_S,
    }


# ---------------------------------------------------------------------------------------------- profile


def profile(args: argparse.Namespace) -> int:
    """Submit jobs to one fleet while py-spy samples the gateway, the job worker(s) and the model worker."""
    from profile_foundation import py_spy, summarize

    spy = py_spy()
    url = BROKERS[args.broker]
    queue = f"bench-jobs-{uuid.uuid4().hex[:8]}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    replicas = int(args.replicas.split(",")[0])
    inputs = BATCH if args.size != "single" else 1
    try:
        with fleet(
            "jobs-profile", lambda f: fleet_config(f, url, replicas, queue, args.worker_concurrency), False
        ) as running:
            warm_up(running)
            outputs = {n: RESULTS_DIR / f"profile-{stamp}-jobs-{args.broker}-{n}.txt" for n in running.pids}
            spies = []
            for name, pid in running.pids.items():
                argv = [spy, "record", "--pid", str(pid), "--duration", str(math.ceil(args.duration))]
                argv += [
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(outputs[name]),
                ]
                if args.gil:
                    argv.append("--gil")
                spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            time.sleep(0.5)
            count = args.jobs or (20_000 if inputs == 1 else 500)
            result = run_jobs(running, args.model, inputs, count)
            for proc in spies:
                try:
                    _, err = proc.communicate(timeout=args.duration + 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _, err = proc.communicate()
                if proc.returncode != 0:
                    log(f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
            if result.get("failure"):
                print(f"FAILED: {result['failure']}")
            else:
                split = ", ".join(f"{k} {v * 1000 / count:.3f}" for k, v in result["fleet_cpu_s"].items())
                rate = count / result["elapsed_s"]
                print(
                    f"\n{args.broker} {args.model} x{inputs}: {rate:.0f} jobs/s completed "
                    f"(py-spy attached), CPU ms/job {split}"
                )
            for name, out in outputs.items():
                print(f"\n== {name} (pid {running.pids[name]}): {out}")
                print(summarize(out, args.top) if out.exists() else "  (no profile written)")
    finally:
        forget_queue(url, queue)
    return 0


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["submit"]:
        return submit_main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated subset of the brokers")
    parser.add_argument("--replicas", default="1,2", help="job-worker replica counts, one fleet each")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of noop,sentiment")
    parser.add_argument("--jobs", type=int, default=None, help="single-input jobs per row (default 5000)")
    parser.add_argument(
        "--batch-jobs", type=int, default=None, help=f"{BATCH}-input jobs per row (default 300)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best is kept (default 3)")
    parser.add_argument(
        "--worker-concurrency", type=int, default=4, help="the job-worker's concurrency setting"
    )
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one run per row, short raw windows")
    parser.add_argument("--quiet-budget", type=float, default=300.0, help="total seconds to wait for quiet")
    parser.add_argument("--keep", action="store_true", help="keep the fleet folders and their logs")
    parser.add_argument("--profile", action="store_true", help="only profile one fleet with py-spy")
    parser.add_argument("--broker", default="sqlite", choices=sorted(BROKERS), help="with --profile")
    parser.add_argument("--model", default="noop", choices=sorted(MODELS), help="with --profile")
    parser.add_argument("--size", default="single", choices=SIZES, help="with --profile")
    parser.add_argument("--duration", type=float, default=15.0, help="with --profile: seconds sampled")
    parser.add_argument("--rate", type=int, default=200, help="with --profile: py-spy samples per second")
    parser.add_argument("--top", type=int, default=25, help="with --profile: functions shown")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="with --profile: only samples holding the GIL (threads waiting on I/O or a lock not counted)",
    )
    args = parser.parse_args(argv)
    if args.profile:
        return profile(args)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    replica_counts = [int(r) for r in args.replicas.split(",") if r.strip()]
    if any(b not in BROKERS for b in brokers) or any(m not in MODELS for m in models) or not replica_counts:
        parser.error("unknown broker or model, or no replica count")
    counts = {
        "single": args.jobs or (1500 if args.quick else 5000),
        SIZES[1]: args.batch_jobs or (60 if args.quick else 300),
    }
    repeat = 1 if args.quick else max(1, args.repeat)
    args.repeat = repeat
    warmup_s, duration_s = (0.3, 1.0) if args.quick else (1.0, 3.0)
    QuietBudget.left_s = max(0.0, min(args.quiet_budget, 3600.0))

    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "started": started.isoformat(),
        "counts": counts,
        "repeat": repeat,
        "concurrency": CONCURRENCY,
        "worker_concurrency": args.worker_concurrency,
        "text": TEXT,
        "models": MODELS,
        "brokers": {b: BROKERS[b] for b in brokers},
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
    }
    rows: list[Row] = []
    problems: list[str] = []

    def raw_pass(suffix: str) -> None:
        try:
            rows.extend(measure_raw(models, warmup_s, duration_s, 2, suffix))
        except Exception as err:
            problems.append(f"raw{suffix}: {type(err).__name__}: {err}")
            log(problems[-1])

    raw_pass("")
    for broker in brokers:
        why = broker_reachable(BROKERS[broker])
        if why is not None:
            problems.append(f"{broker}: not reachable ({why})")
            log(problems[-1])
            continue
        for replicas in replica_counts:
            try:
                rows.extend(measure_broker(broker, replicas, counts, models, args))
            except Exception as err:
                problems.append(f"{broker} r={replicas}: {type(err).__name__}: {err}")
                log(problems[-1])
    raw_pass(" (end)")
    add_ratios(rows)
    target = target_of(rows)
    for row in rows:
        where = f"{row.broker} r={row.replicas} {row.model} {row.size}"
        if row.failure:
            problems.append(f"{where}: {row.failure}")
        if row.errors or row.failed_jobs:
            problems.append(f"{where}: {row.errors} refused submissions, {row.failed_jobs} failed jobs")
    meta["waited_for_quiet_s"] = QuietBudget.waited_s

    print()
    print(
        f"modelfleet jobs benchmark, {started:%Y-%m-%d %H:%M:%S} UTC; {meta['cpu_count']} CPUs; "
        f"{counts['single']} single-input and {counts[SIZES[1]]} {BATCH}-input jobs per row, submitted at "
        f"c={CONCURRENCY}; best of {repeat} run(s) per row"
    )
    print(
        "submit j/s = jobs / (first POST to last 202); "
        "done j/s = jobs / (first POST until the store shows all finished);\n"
        "inputs/s = done j/s x inputs per job; srv CPU = CPU of every fleet process / jobs; "
        f"other = cores busy elsewhere (> {NOISE_CORES} is noise);\n"
        "x raw = inputs/s / raw in-process inputs/s of the same model and call size "
        "(raw rows: calls/s in the done j/s column)"
    )
    print()
    print(format_table(rows))
    print()
    verdict = "not measured" if target["met"] is None else ("MET" if target["met"] else "NOT MET")
    print(
        f"Target: {target['what']}: {_f(target['jobs_per_s'], '.0f')} (replicas {target['replicas']}) "
        f"{target['target']}: {verdict}"
    )
    if problems:
        print("\nPROBLEMS")
        for problem in problems:
            print(f"  {problem}")
        for row in rows:
            for sample in row.error_samples:
                print(f"  {row.broker} r={row.replicas} {row.model} {row.size}: {sample}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"jobs-{started:%Y%m%dT%H%M%SZ}.json"
    report = {"meta": meta, "rows": [asdict(r) for r in rows], "target": target, "problems": problems}
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nresults: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
