"""Foundation benchmark: what modelfleet's worker and gateway cost on top of the models they serve.

In one run, one variant after another (never overlapping), it measures:

- raw: each model class called directly in this process (W1 echo and W2 VADER: ``predict([one])`` in
  a tight loop; W3 embedder: ``predict`` on batches of 32, in inputs/s, and on single inputs);
- reference: a bare Starlette + uvicorn VADER service behind a bare Starlette + aiohttp proxy
  (bench/reference_service.py, bench/reference_proxy.py), as W2 through the proxy and direct;
- modelfleet: a fleet started with the Supervisor (service ``light``: echo and sentiment;
  service ``embed``: the embedder), each workload direct to its worker and through the gateway.

Load comes from bench/loadgen.py in its own process, at concurrency 1, 16 and 64. The table goes to
stdout and the results, as JSON, to bench/results/foundation-<timestamp>.json.

    .venv/bin/python bench/bench_foundation.py [--duration S] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import http.client
import importlib.metadata
import inspect
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from fleetkit import BENCH_DIR, DATA_DIR, RESULTS_DIR, ROOT, fleet, log

LOADGEN = BENCH_DIR / "loadgen.py"

CONCURRENCIES: tuple[int, ...] = (1, 16, 64)
TEXT = "The new release is fast and reliable, and the team was a pleasure to work with, though the docs lag."
BATCH = 32
MAX_RAW_CALLS = 20_000_000
TARGET_RATIO = 0.8
TARGET_C = 16
NOISE_CORES = 0.25

END = " (end)"  # suffix of the raw baselines measured again once every server has stopped
VARIANT_ORDER = {
    f"raw batch-{BATCH}": 0,
    f"raw batch-{BATCH}{END}": 1,
    "raw": 2,
    "raw single": 2,
    f"raw{END}": 3,
    f"raw single{END}": 3,
    "worker direct": 4,
    "gateway→worker": 5,
    "bare service direct": 6,
    "bare proxy→service": 7,
}

WORKLOADS: dict[str, dict[str, str]] = {
    "W1": {"name": "echo", "model": "echo", "class": "echo", "service": "light", "key": "text"},
    "W2": {
        "name": "sentiment",
        "model": "sentiment",
        "class": "vader-sentiment",
        "service": "light",
        "key": "compound",
    },
    "W3": {
        "name": "embedder",
        "model": "embedder",
        "class": "minilm-embedder",
        "service": "embed",
        "key": "embedding",
    },
}

FLEET_HEAD = """\
# Written by bench/bench_foundation.py for one benchmark run.
data_dir: {data_dir}
store_url: sqlite:///{tmp}/modelfleet.db
log_level: warning

gateway:
  host: 127.0.0.1
  port: 0

supervisor:
  run_dir: {tmp}/run
  ready_timeout_s: 600

models:
"""
FLEET_MODELS = {
    "echo": "  echo:\n    class: echo\n",
    "sentiment": "  sentiment:\n    class: vader-sentiment\n",
    "embedder": (
        "  embedder:\n    class: minilm-embedder\n    params:\n      runtime: onnx-int8\n      threads: 2\n"
        "    batching:\n      max_batch_size: 32\n      max_wait_ms: 0\n"
    ),
}
FLEET_SERVICES = {
    "light": "  light:\n    models: [echo, sentiment]\n    replicas: 1\n",
    "embed": "  embed:\n    models: [embedder]\n    replicas: 1\n",
}


def fleet_yaml(tmp: Path, workloads: Sequence[str]) -> str:
    """The bench's fleet: service light (echo, sentiment) and service embed (embedder), as far as needed."""
    services = [s for s in FLEET_SERVICES if any(WORKLOADS[w]["service"] == s for w in workloads)]
    models = [m for s in services for m in (["echo", "sentiment"] if s == "light" else ["embedder"])]
    text = FLEET_HEAD.format(data_dir=DATA_DIR, tmp=tmp)
    text += "".join(FLEET_MODELS[m] for m in models)
    text += "\nservices:\n" + "".join(FLEET_SERVICES[s] for s in services)
    return text


@dataclass
class Row:
    """One line of the table: a raw baseline or one (variant, concurrency) measurement."""

    workload: str
    variant: str
    concurrency: int | None
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_ms_per_req: float | None = None
    cpu_split: dict[str, float] = field(default_factory=dict)
    loadgen_cpu_ms_per_req: float | None = None
    machine_busy_pct: float | None = None
    other_cores: float | None = None
    ratio_to_raw: float | None = None
    requests: int = 0
    errors: int = 0
    error_statuses: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    failure: str | None = None
    unit: str = "req/s"
    detail: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, timeout_s: float = 30.0
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError):
            if http_call(port, "GET", path, timeout_s=1.0)[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args!r} not ready after {timeout_s:.0f}s")


def preflight(port: int, path: str, body: bytes, key: str, envelope: bool) -> int:
    """One request before the load: it must answer 200 with the expected field. Returns the body size."""
    status, answer = http_call(port, "POST", path, body)
    if status != 200:
        raise RuntimeError(f"preflight POST {path} on port {port} answered {status}: {answer[:300]!r}")
    data = orjson.loads(answer)
    fields = data.get("output", {}) if envelope else data
    if key not in fields:
        raise RuntimeError(f"preflight POST {path} on port {port}: no {key!r} in {answer[:300]!r}")
    return len(answer)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def package_versions() -> dict[str, str]:
    names = ["modelfleet", "uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "orjson", "pydantic"]
    names += ["vaderSentiment", "onnxruntime", "tokenizers", "psutil"]
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class QuietBudget:
    """Seconds this run may still spend waiting for other work on the machine to finish."""

    left_s = 300.0
    waited_s = 0.0


def busy_cores(interval_s: float = 0.5) -> float:
    before = psutil.cpu_times()
    time.sleep(interval_s)
    after = psutil.cpu_times()
    busy = (sum(after) - after.idle - after.iowait) - (sum(before) - before.idle - before.iowait)
    return float(busy) / interval_s


def wait_quiet(label: str, max_wait_s: float = 30.0) -> None:
    """Before a measurement: wait (bounded) while other processes keep the machine busy."""
    started = time.monotonic()
    deadline = started + min(max_wait_s, QuietBudget.left_s)
    busy = busy_cores()
    if busy <= NOISE_CORES:
        return
    log(f"{label}: {busy:.2f} cores busy before measuring; waiting up to {deadline - started:.0f}s for quiet")
    while busy > NOISE_CORES and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = busy_cores()
    waited = time.monotonic() - started
    QuietBudget.left_s = max(0.0, QuietBudget.left_s - waited)
    QuietBudget.waited_s += waited
    log(f"{label}: {'quiet' if busy <= NOISE_CORES else 'still busy'} ({busy:.2f} cores) after {waited:.0f}s")


# ---------------------------------------------------------------------------------------------- raw


def _caller(model: Any) -> Callable[[list[Any]], list[Any]]:
    """A plain function calling ``model.predict``, whether that is sync or async."""
    if not inspect.iscoroutinefunction(model.predict):
        return model.predict  # type: ignore[no-any-return,unused-ignore]
    import asyncio

    loop = asyncio.new_event_loop()

    def call(inputs: list[Any]) -> list[Any]:
        return loop.run_until_complete(model.predict(inputs))

    return call


def time_calls(call: Callable[[], object], warmup_s: float, duration_s: float) -> dict[str, float]:
    """Call ``call`` in a tight loop for ``duration_s`` after ``warmup_s``; per-call latencies and CPU."""
    end = time.perf_counter() + warmup_s
    for _ in range(MAX_RAW_CALLS):
        call()
        if time.perf_counter() >= end:
            break
    latencies: list[float] = []
    perf = time.perf_counter
    sys0 = psutil.cpu_times()
    cpu0 = time.process_time()
    start = perf()
    end = start + duration_s
    now = start
    for _ in range(MAX_RAW_CALLS):
        call()
        later = perf()
        latencies.append(later - now)
        now = later
        if now >= end:
            break
    window = now - start
    cpu = time.process_time() - cpu0
    sys1 = psutil.cpu_times()
    busy = (sum(sys1) - sys1.idle - sys1.iowait) - (sum(sys0) - sys0.idle - sys0.iowait)
    latencies.sort()
    n = len(latencies)
    return {
        "calls": n,
        "window_s": window,
        "calls_per_s": n / window,
        "p50_ms": latencies[n // 2] * 1000.0,
        "p99_ms": latencies[min(n - 1, int(0.99 * n))] * 1000.0,
        "cpu_ms_per_call": cpu * 1000.0 / n,
        "machine_busy_pct": 100.0 * busy / max(1e-9, sum(sys1) - sum(sys0)),
        "other_cores": (busy - cpu) / window,
    }


def time_calls_quietly(
    call: Callable[[], object], warmup_s: float, duration_s: float, retries: int, label: str
) -> dict[str, Any]:
    """``time_calls``, again (at most ``retries`` times) while something else kept the machine busy."""
    best: dict[str, Any] | None = None
    attempts = []
    for attempt in range(1 + retries):
        wait_quiet(label)
        stats: dict[str, Any] = dict(time_calls(call, warmup_s, duration_s))
        attempts.append({"calls_per_s": stats["calls_per_s"], "other_cores": stats["other_cores"]})
        if best is None or best["other_cores"] > stats["other_cores"]:
            best = stats
        if stats["other_cores"] <= NOISE_CORES:
            break
        log(
            f"{label}: {stats['other_cores']:.2f} cores busy elsewhere"
            + ("; measuring again" if attempt < retries else "")
        )
    assert best is not None
    best["attempts"] = attempts
    return best


def load_model(workload: str) -> Any:
    from modelfleet.models.catalog import import_model_class

    cls = import_model_class(WORKLOADS[workload]["class"], f"bench.{workload}")
    kwargs: dict[str, Any] = (
        {"runtime": "onnx-int8", "threads": 2, "data_dir": str(DATA_DIR)} if workload == "W3" else {}
    )
    model: Any = cls(**kwargs)
    started = time.perf_counter()
    model.load()
    log(f"{workload}: loaded {cls.__name__} in {time.perf_counter() - started:.2f}s")
    return model


def measure_raw(
    workload: str, warmup_s: float, duration_s: float, retries: int, suffix: str = ""
) -> list[Row]:
    model = load_model(workload)
    predict = _caller(model)
    one = [type(model).input_type(text=TEXT)]
    rows = []
    if workload == "W3":
        batch = [type(model).input_type(text=TEXT) for _ in range(BATCH)]
        out = predict(batch)
        if len(out) != BATCH or not getattr(out[0], "embedding", None):
            raise RuntimeError(f"W3 raw: unexpected output {out[:1]!r}")
        stats = time_calls_quietly(
            lambda: predict(batch), warmup_s, duration_s, retries, f"{workload} raw batch"
        )
        rows.append(
            Row(
                workload,
                f"raw batch-{BATCH}{suffix}",
                None,
                rps=stats["calls_per_s"] * BATCH,
                p50_ms=stats["p50_ms"],
                p99_ms=stats["p99_ms"],
                server_cpu_ms_per_req=stats["cpu_ms_per_call"] / BATCH,
                requests=int(stats["calls"]) * BATCH,
                machine_busy_pct=stats["machine_busy_pct"],
                other_cores=stats["other_cores"],
                unit="inputs/s",
                detail=stats,
            )
        )
    stats = time_calls_quietly(lambda: predict(one), warmup_s, duration_s, retries, f"{workload} raw")
    rows.append(
        Row(
            workload,
            ("raw single" if workload == "W3" else "raw") + suffix,
            None,
            rps=stats["calls_per_s"],
            p50_ms=stats["p50_ms"],
            p99_ms=stats["p99_ms"],
            server_cpu_ms_per_req=stats["cpu_ms_per_call"],
            requests=int(stats["calls"]),
            machine_busy_pct=stats["machine_busy_pct"],
            other_cores=stats["other_cores"],
            unit="calls/s",
            detail=stats,
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------- load


def run_load(
    workload: str,
    variant: str,
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    pids: dict[str, int],
    warmup_s: float,
    duration_s: float,
) -> Row:
    """One closed-loop measurement by loadgen.py in its own process; server CPU from ``pids``."""
    argv = [sys.executable, str(LOADGEN), "--port", str(port), "--path", path, "--body", body.decode()]
    argv += ["--concurrency", str(concurrency), "--warmup", str(warmup_s), "--duration", str(duration_s)]
    for pid in pids.values():
        argv += ["--pid", str(pid)]
    row = Row(workload, variant, concurrency)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=warmup_s + duration_s + 120)
    except subprocess.TimeoutExpired:
        row.failure = "load generator timed out"
        return row
    lines = proc.stdout.strip().splitlines()
    result: dict[str, Any] = {}
    with contextlib.suppress(ValueError, IndexError):
        result = json.loads(lines[-1])
    if proc.returncode != 0 or "fatal" in result or not result:
        row.failure = result.get("fatal") or f"loadgen exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
        return row
    total = result["ok"] + result["errors"]
    per_pid = result["server_cpu_s"]
    split = {name: per_pid[str(pid)] * 1000.0 / total for name, pid in pids.items()} if total else {}
    row.rps = result["rps"]
    row.p50_ms = result["p50_ms"]
    row.p99_ms = result["p99_ms"]
    row.server_cpu_ms_per_req = sum(split.values()) if total else None
    row.cpu_split = split
    row.loadgen_cpu_ms_per_req = result["loadgen_cpu_ms_per_req"]
    row.machine_busy_pct = result["machine_busy_pct"]
    row.other_cores = result["other_cores"]
    row.requests = total
    row.errors = result["errors"]
    row.error_statuses = result["error_statuses"]
    row.error_samples = result["error_samples"]
    row.detail = result
    return row


def measure(*args: Any, retries: int) -> Row:
    """``run_load`` again (at most ``retries`` times) while something else kept the machine busy."""
    attempts = []
    best: Row | None = None
    for attempt in range(1 + retries):
        wait_quiet(f"{args[0]} {args[1]} c={args[5]}")
        row = run_load(*args)
        attempts.append({"rps": row.rps, "other_cores": row.other_cores, "failure": row.failure})
        if row.failure or row.other_cores is None:
            return row
        if best is None or (best.other_cores or 0.0) > row.other_cores:
            best = row
        if row.other_cores <= NOISE_CORES:
            break
        noisy = "; ".join(row.detail.get("top_other_commands", [])) or "?"
        where = f"{row.workload} {row.variant} c={row.concurrency}"
        log(f"{where}: {row.other_cores:.2f} cores busy elsewhere ({noisy})")
        if attempt < retries:
            log("  measuring again")
    assert best is not None
    best.detail["attempts"] = attempts
    return best


def announce(row: Row) -> None:
    if row.failure:
        log(f"{row.workload} {row.variant} c={row.concurrency}: FAILED: {row.failure}")
        return
    log(
        f"{row.workload} {row.variant} c={row.concurrency}: {row.rps:.0f} req/s, p50 {row.p50_ms:.2f} ms, "
        f"p99 {row.p99_ms:.2f} ms, errors {row.errors}"
    )
    for sample in row.error_samples:
        log(f"    error: {sample}")


# ---------------------------------------------------------------------------------------------- reference


@contextlib.contextmanager
def reference_servers() -> Iterator[tuple[int, int, dict[str, int]]]:
    """Start the bare service and the bare proxy in front of it; yields (service port, proxy port, pids)."""
    service_port, proxy_port = free_port(), free_port()
    while proxy_port == service_port:
        proxy_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        service = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "reference_service.py"), "--port", str(service_port)],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        procs.append(service)
        wait_ready(service_port, "/ready", service)
        proxy = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "reference_proxy.py"),
                "--port",
                str(proxy_port),
                "--upstream",
                f"http://127.0.0.1:{service_port}",
            ],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        procs.append(proxy)
        wait_ready(proxy_port, "/ready", proxy)
        yield service_port, proxy_port, {"proxy": proxy.pid, "service": service.pid}
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def measure_reference(
    warmup_s: float, duration_s: float, rows: list[Row], meta: dict[str, Any], retries: int
) -> None:
    body = orjson.dumps({"text": TEXT})
    with reference_servers() as (service_port, proxy_port, pids):
        meta["reference_response_bytes"] = preflight(proxy_port, "/predict", body, "compound", envelope=False)
        for variant, port, use in (
            ("bare proxy→service", proxy_port, pids),
            ("bare service direct", service_port, {"service": pids["service"]}),
        ):
            for c in CONCURRENCIES:
                row = measure(
                    "W2", variant, port, "/predict", body, c, use, warmup_s, duration_s, retries=retries
                )
                announce(row)
                rows.append(row)


# ---------------------------------------------------------------------------------------------- modelfleet


def measure_modelfleet(
    workloads: Sequence[str],
    warmup_s: float,
    duration_s: float,
    rows: list[Row],
    meta: dict[str, Any],
    keep: bool,
    retries: int,
) -> None:
    with fleet("foundation", lambda folder: fleet_yaml(folder, workloads), keep) as running:
        plan, pid_of = running.plan, running.pids
        meta["fleet"] = {"plan": json.loads(plan.to_json()), "pids": pid_of}
        for workload in workloads:
            spec = WORKLOADS[workload]
            service = spec["service"]
            worker_port = plan.services[service][0].port
            worker_pid = pid_of[f"{service}-0"]
            path = f"/v1/models/{spec['model']}/predict"
            body = orjson.dumps({"text": TEXT})
            for variant, port, pids in (
                ("worker direct", worker_port, {"worker": worker_pid}),
                ("gateway→worker", plan.gateway.port, {"gateway": pid_of["gateway"], "worker": worker_pid}),
            ):
                size = preflight(port, path, body, spec["key"], envelope=True)
                meta.setdefault("response_bytes", {})[workload] = size
                for c in CONCURRENCIES:
                    row = measure(
                        workload, variant, port, path, body, c, pids, warmup_s, duration_s, retries=retries
                    )
                    announce(row)
                    rows.append(row)
                    # Keep the fleet's logs when a measurement failed or saw errors.
                    running.keep = running.keep or bool(row.failure or row.errors)


# ---------------------------------------------------------------------------------------------- report


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'load':<4} {'variant':<20} {'c':>3} {'throughput':>10} {'unit':<8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU ms/req':>14}  {'CPU split ms/req':<24} {'lg CPU':>7} {'busy%':>6} "
        f"{'other':>6} {'x raw':>6} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    last = None
    for row in rows:
        if last is not None and row.workload != last:
            lines.append("")
        last = row.workload
        c = "-" if row.concurrency is None else str(row.concurrency)
        if row.failure:
            lines.append(f"{row.workload:<4} {row.variant:<20} {c:>3} FAILED: {row.failure}")
            continue
        split = " ".join(f"{k} {v:.3f}" for k, v in row.cpu_split.items())
        lines.append(
            f"{row.workload:<4} {row.variant:<20} {c:>3} {_f(row.rps, '.0f'):>10} {row.unit:<8} "
            f"{_f(row.p50_ms, '.3f'):>8} {_f(row.p99_ms, '.3f'):>8} "
            f"{_f(row.server_cpu_ms_per_req, '.3f'):>14}  "
            f"{split:<24} {_f(row.loadgen_cpu_ms_per_req, '.3f'):>7} {_f(row.machine_busy_pct, '.0f'):>6} "
            f"{_f(row.other_cores, '.2f'):>6} "
            f"{_f(row.ratio_to_raw, '.3f'):>6} {row.errors if row.concurrency else '':>6}"
        )
    return "\n".join(lines)


def find(rows: list[Row], workload: str, variant: str, c: int | None) -> Row | None:
    for row in rows:
        if row.workload == workload and row.variant == variant and row.concurrency == c and not row.failure:
            return row
    return None


def compute_targets(rows: list[Row]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    per_c = {}
    for c in CONCURRENCIES:
        ours = find(rows, "W2", "gateway→worker", c)
        bare = find(rows, "W2", "bare proxy→service", c)
        if ours and bare and ours.rps and bare.rps:
            per_c[str(c)] = {
                "modelfleet_rps": ours.rps,
                "reference_rps": bare.rps,
                "ratio": ours.rps / bare.rps,
            }
    if per_c:
        at = per_c.get(str(TARGET_C))
        targets["w2_gateway_vs_reference"] = {
            "per_concurrency": per_c,
            "target": f"c={TARGET_C} ratio >= {TARGET_RATIO}",
            "met": None if at is None else at["ratio"] >= TARGET_RATIO,
        }
    ours = find(rows, "W3", "gateway→worker", 64)
    raws = [find(rows, "W3", f"raw batch-{BATCH}{suffix}", None) for suffix in ("", END)]
    raw_rps = max((r.rps or 0.0 for r in raws if r is not None), default=0.0)
    if ours and ours.rps and raw_rps:
        ratio = ours.rps / raw_rps
        targets["w3_gateway_c64_vs_raw_batch"] = {
            "gateway_rps": ours.rps,
            "raw_batch_inputs_per_s": raw_rps,
            "raw_batch_inputs_per_s_start_end": [r.rps if r else None for r in raws],
            "ratio": ratio,
            "target": f">= {TARGET_RATIO}",
            "met": ratio >= TARGET_RATIO,
        }
    return targets


def format_targets(targets: dict[str, Any]) -> str:
    lines = ["Targets"]
    w2 = targets.get("w2_gateway_vs_reference")
    if w2 is None:
        lines.append("  W2 modelfleet gateway→worker / bare reference: not measured")
    else:
        for c, item in w2["per_concurrency"].items():
            flag = ""
            if int(c) == TARGET_C:
                flag = f"   target >= {TARGET_RATIO}: {'MET' if item['ratio'] >= TARGET_RATIO else 'NOT MET'}"
            lines.append(
                f"  W2 c={c:>2}: modelfleet gateway→worker {item['modelfleet_rps']:.0f} req/s"
                " / bare reference "
                f"{item['reference_rps']:.0f} req/s = {item['ratio']:.3f}{flag}"
            )
    w3 = targets.get("w3_gateway_c64_vs_raw_batch")
    if w3 is None:
        lines.append("  W3 gateway c=64 / raw batch-32: not measured")
    else:
        start, end = (f"{v:.0f}" if v else "-" for v in w3["raw_batch_inputs_per_s_start_end"])
        lines.append(
            f"  W3 c=64: gateway {w3['gateway_rps']:.0f} req/s / raw in-process batch-{BATCH} "
            f"{w3['raw_batch_inputs_per_s']:.0f} inputs/s = {w3['ratio']:.3f}   target >= {TARGET_RATIO}: "
            f"{'MET' if w3['met'] else 'NOT MET'}\n"
            f"           (raw batch-{BATCH}: {start} inputs/s at the start of the run, {end} at the end; "
            "the ratio uses the higher)"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=None, help="measured window per run, s (default 5)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="unmeasured warm-up per run, s (default 1)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short windows (1.5 s, 0.5 s warm-up) for a smoke run"
    )
    parser.add_argument("--workloads", default="W1,W2,W3", help="comma-separated subset of W1,W2,W3")
    parser.add_argument("--no-reference", action="store_true", help="skip the bare reference")
    parser.add_argument(
        "--noise-retries",
        type=int,
        default=2,
        help=f"measure again, at most this many times, when over {NOISE_CORES} cores were busy elsewhere",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=300.0,
        help="total seconds to wait, before measurements, for other load on the machine to go (default 300)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary fleet folder and its logs")
    args = parser.parse_args(argv)
    duration_s = args.duration if args.duration is not None else (1.5 if args.quick else 5.0)
    warmup_s = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    if not (0 < duration_s <= 120 and 0 <= warmup_s <= 30):
        parser.error("--duration must be in (0, 120] and --warmup in [0, 30]")
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads: {', '.join(unknown)}")
    workloads = [w for w in WORKLOADS if w in workloads]
    QuietBudget.left_s = max(0.0, min(args.quiet_budget, 3600.0))

    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "started": started.isoformat(),
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "concurrencies": list(CONCURRENCIES),
        "text": TEXT,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "noise_retries": args.noise_retries,
    }
    rows: list[Row] = []
    raw_rps: dict[str, float] = {}
    problems: list[str] = []

    def raw_pass(candidates: Sequence[str], suffix: str) -> None:
        for workload in candidates:
            try:
                raw_rows = measure_raw(workload, warmup_s, duration_s, args.noise_retries, suffix)
                gc.collect()  # drop the model (and its threads) before anything else runs
            except Exception as err:
                message = f"{workload} raw{suffix}: {type(err).__name__}: {err}"
                problems.append(message)
                log(message)
                rows.append(Row(workload, "raw" + suffix, None, failure=message))
                continue
            for row in raw_rows:
                log(f"{workload} {row.variant}: {row.rps:.0f} {row.unit}, p50 {row.p50_ms:.3f} ms")
            rows.extend(raw_rows)
            # Ratios are taken to the better of the two passes, so drift never flatters modelfleet.
            raw_rps[workload] = max(raw_rps.get(workload, 0.0), raw_rows[0].rps or 0.0)

    # 1. raw in-process baselines, with no server running
    raw_pass(workloads, "")

    # 2. the bare reference (W2 only), alone on the machine
    if "W2" in workloads and not args.no_reference:
        try:
            measure_reference(warmup_s, duration_s, rows, meta, args.noise_retries)
        except Exception as err:
            message = f"reference: {type(err).__name__}: {err}"
            problems.append(message)
            log(message)

    # 3. modelfleet, alone on the machine; a model that could not even load in-process is left out
    served = [w for w in workloads if w in raw_rps]
    try:
        if served:
            measure_modelfleet(served, warmup_s, duration_s, rows, meta, args.keep, args.noise_retries)
    except Exception as err:
        message = f"modelfleet: {type(err).__name__}: {err}"
        problems.append(message)
        log(message)

    # 4. the raw baselines again, with every server stopped, to show drift over the run
    raw_pass([w for w in workloads if w in raw_rps], END)

    for row in rows:
        if row.concurrency is not None and row.rps and raw_rps.get(row.workload):
            row.ratio_to_raw = row.rps / raw_rps[row.workload]
        if row.failure and row.failure not in problems:
            problems.append(f"{row.workload} {row.variant} c={row.concurrency}: {row.failure}")
        if row.errors:
            problems.append(
                f"{row.workload} {row.variant} c={row.concurrency}: {row.errors} non-200 responses"
            )
    meta["waited_for_quiet_s"] = QuietBudget.waited_s
    rows.sort(key=lambda r: (r.workload, VARIANT_ORDER.get(r.variant, 9), r.concurrency or 0))
    targets = compute_targets(rows)

    print()
    print(
        f"modelfleet foundation benchmark, {started:%Y-%m-%d %H:%M:%S} UTC; {meta['cpu_count']} CPUs; "
        f"{warmup_s:g} s warm-up + {duration_s:g} s window per run; closed loop, c keep-alive connections"
    )
    print(
        "srv CPU = CPU of the measured server processes in the window / requests; lg CPU = load generator's; "
        "busy% = whole machine;\nother = cores busy with anything else (noise); "
        "x raw = throughput / raw in-process (W3: raw batch-32 inputs/s), the better of run start and end;\n"
        "raw rows: srv CPU = CPU of the bench process per call (batch-32: per input)"
    )
    print()
    print(format_table(rows))
    print()
    print(format_targets(targets))
    if problems:
        print()
        print("PROBLEMS")
        for problem in problems:
            print(f"  {problem}")
        for row in rows:
            for sample in row.error_samples:
                print(f"  {row.workload} {row.variant} c={row.concurrency}: {sample}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"foundation-{started:%Y%m%dT%H%M%SZ}.json"
    report = {"meta": meta, "rows": [asdict(r) for r in rows], "targets": targets, "problems": problems}
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print()
    print(f"results: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
