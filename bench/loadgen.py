"""Closed-loop HTTP/1.1 load generator, run as its own process by bench_foundation.py.

``concurrency`` keep-alive connections each send one pre-encoded POST, wait for the whole response,
and send the next at once. Nothing is counted during the warm-up; then, for a fixed window, every
completed response is counted and its latency kept. The CPU time of this process and of the server
processes named by ``--pid`` is sampled at the window's edges. The result is one JSON object on stdout.

It is built to be cheap per request: asyncio Protocols on uvloop, no coroutine per request, and a
response parser that knows only what our own servers send (status line, headers, Content-Length
body). Anything else (chunked bodies, a closed connection, bytes nobody asked for) ends the run with
exit code 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import psutil
import uvloop

perf_counter = time.perf_counter

MAX_ERROR_SAMPLES = 5
DRAIN_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


class ProtocolFailure(Exception):
    """The server answered something this client does not expect from our own servers."""


class Generator:
    """Shared state of one run: phase, counters, latencies, and the first fatal failure."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.phase = 0  # 0 warm-up, 1 measuring, 2 draining
        self.ok = 0
        self.errors = 0
        self.error_statuses: dict[int, int] = {}
        self.error_samples: list[str] = []
        self.latencies: list[float] = []
        self.in_flight = 0
        self.fatal: str | None = None
        self.drained: asyncio.Future[None] | None = None

    def fail(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
        self._maybe_drained(force=True)

    def _maybe_drained(self, force: bool = False) -> None:
        drained = self.drained
        if (
            drained is not None
            and not drained.done()
            and (force or (self.phase == 2 and self.in_flight == 0))
        ):
            drained.set_result(None)

    def completed(self, status: int, latency: float, body: bytes) -> None:
        if self.phase == 1:
            if status == 200:
                self.ok += 1
                self.latencies.append(latency)
            else:
                self.errors += 1
                self.error_statuses[status] = self.error_statuses.get(status, 0) + 1
                if len(self.error_samples) < MAX_ERROR_SAMPLES:
                    self.error_samples.append(f"{status}: {body[:300]!r}")
        elif status != 200 and len(self.error_samples) < MAX_ERROR_SAMPLES:
            # Errors outside the window are not counted but must still be visible.
            self.error_samples.append(f"(outside window) {status}: {body[:300]!r}")


class Connection(asyncio.Protocol):
    """One keep-alive connection sending the same request over and over."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = -1  # total bytes of the current response, once its head is parsed
        self.status = 0
        self.body_start = 0
        self.sent_at = 0.0
        self.busy = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.busy = True
        self.gen.in_flight += 1
        self.sent_at = perf_counter()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        try:
            self._on_data(data)
        except ProtocolFailure as err:
            self.gen.fail(str(err))
            self.close()

    def _on_data(self, data: bytes) -> None:
        if not self.busy:
            raise ProtocolFailure(
                f"received {len(data)} bytes while no request was outstanding: {data[:200]!r}"
            )
        buf = self.buf + data if self.buf else data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ProtocolFailure("response head larger than 64 KiB")
                self.buf = buf
                return
            head = buf[:end].lower()
            if not head.startswith(b"http/1.1 "):
                raise ProtocolFailure(f"not an HTTP/1.1 status line: {buf[:80]!r}")
            self.status = int(head[9:12])
            pos = head.find(b"\r\ncontent-length:")
            if pos < 0:
                raise ProtocolFailure(f"response without Content-Length: {buf[: end + 4]!r}")
            stop = head.find(b"\r\n", pos + 2)
            length = int(head[pos + 17 : stop if stop >= 0 else len(head)])
            if b"\r\ntransfer-encoding:" in head:
                raise ProtocolFailure(f"response with Transfer-Encoding: {buf[: end + 4]!r}")
            if b"\r\nconnection: close" in head:
                raise ProtocolFailure(f"server asked to close the connection: {buf[: end + 4]!r}")
            self.body_start = end + 4
            self.need = end + 4 + length
        if len(buf) < self.need:
            self.buf = buf
            return
        if len(buf) > self.need:
            raise ProtocolFailure(f"{len(buf) - self.need} unexpected bytes after the response body")
        latency = perf_counter() - self.sent_at
        self.buf = b""
        self.need = -1
        self.busy = False
        gen = self.gen
        gen.in_flight -= 1
        gen.completed(self.status, latency, buf[self.body_start :] if self.status != 200 else b"")
        if gen.phase < 2 and gen.fatal is None:
            self.send()
        else:
            gen._maybe_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.busy = False
            self.gen.in_flight -= 1
        if not self.closing:
            self.gen.fail(f"server closed a connection unexpectedly ({exc or 'EOF'})")

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def encode_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def all_processes_cpu() -> dict[int, tuple[str, float]]:
    """Name and CPU seconds so far of every process on the machine, by pid."""
    out = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            out[proc.pid] = (proc.info["name"] or "?", times.user + times.system)
    return out


def describe(name: str) -> str:
    """``name[pid]`` with the process's command line, when it still runs."""
    pid = int(name.rsplit("[", 1)[1].rstrip("]"))
    try:
        return f"{name}: {' '.join(psutil.Process(pid).cmdline())[:160]}"
    except psutil.Error:
        return f"{name}: (gone)"


def cpu_seconds(procs: list[psutil.Process]) -> list[float]:
    out = []
    for proc in procs:
        times = proc.cpu_times()
        out.append(times.user + times.system)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = args.body.encode()
    gen = Generator(encode_request(args.host, args.port, args.path, body))
    procs = [psutil.Process(pid) for pid in args.pid]
    conns: list[Connection] = []
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        for _ in range(args.concurrency):
            _, conn = await loop.create_connection(lambda: Connection(gen), args.host, args.port)
            conns.append(conn)

    marks: dict[str, Any] = {}

    def start_window() -> None:
        gen.phase = 1
        marks["t0"] = perf_counter()
        marks["self0"] = time.process_time()
        marks["srv0"] = cpu_seconds(procs)
        marks["sys0"] = psutil.cpu_times()
        marks["all0"] = all_processes_cpu()

    def end_window() -> None:
        gen.phase = 2
        marks["t1"] = perf_counter()
        marks["self1"] = time.process_time()
        marks["srv1"] = cpu_seconds(procs)
        marks["sys1"] = psutil.cpu_times()
        marks["all1"] = all_processes_cpu()
        gen._maybe_drained()

    gen.drained = loop.create_future()
    now = loop.time()
    loop.call_at(now + args.warmup, start_window)
    loop.call_at(now + args.warmup + args.duration, end_window)
    for conn in conns:
        conn.send()
    try:
        async with asyncio.timeout(args.warmup + args.duration + DRAIN_TIMEOUT_S):
            await gen.drained
    except TimeoutError:
        gen.fail(f"{gen.in_flight} requests still unanswered {DRAIN_TIMEOUT_S:.0f}s after the window closed")
    for conn in conns:
        conn.close()
    if gen.fatal is not None:
        return {"fatal": gen.fatal}
    window = marks["t1"] - marks["t0"]
    total = gen.ok + gen.errors
    lat = sorted(gen.latencies)

    def pct(q: float) -> float | None:
        if not lat:
            return None
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0

    sys0, sys1 = marks["sys0"], marks["sys1"]
    busy = (sum(sys1) - sys1.idle - sys1.iowait) - (sum(sys0) - sys0.idle - sys0.iowait)
    all_time = sum(sys1) - sum(sys0)
    own = {os.getpid(), *args.pid}
    before = marks["all0"]
    others = sorted(
        (
            (cpu - before[pid][1] if pid in before else cpu, f"{name}[{pid}]")
            for pid, (name, cpu) in marks["all1"].items()
            if pid not in own
        ),
        reverse=True,
    )
    self_cpu = marks["self1"] - marks["self0"]
    server_cpu = [b - a for a, b in zip(marks["srv0"], marks["srv1"], strict=True)]
    # What the machine was busy with besides the measured servers and this process, in cores.
    other_cores = busy - sum(server_cpu) - self_cpu
    return {
        "concurrency": args.concurrency,
        "window_s": window,
        "ok": gen.ok,
        "errors": gen.errors,
        "error_statuses": {str(k): v for k, v in gen.error_statuses.items()},
        "error_samples": gen.error_samples,
        "rps": gen.ok / window,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] * 1000.0 if lat else None,
        "mean_ms": sum(lat) / len(lat) * 1000.0 if lat else None,
        "loadgen_cpu_s": self_cpu,
        "loadgen_cpu_ms_per_req": self_cpu * 1000.0 / total if total else None,
        "server_cpu_s": {str(pid): cpu for pid, cpu in zip(args.pid, server_cpu, strict=True)},
        "machine_busy_pct": 100.0 * busy / all_time if all_time > 0 else None,
        "other_cores": other_cores / window,
        "top_other_processes_cpu_s": [(name, round(cpu, 3)) for cpu, name in others[:5] if cpu > 0],
        "top_other_commands": [describe(name) for cpu, name in others[:3] if cpu > 0.1 * window],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", required=True, help="JSON body sent with every request")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--pid", type=int, action="append", default=[], help="server process to sample CPU of"
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("only loopback targets are allowed")
    if not (1 <= args.concurrency <= 1024 and 0 <= args.warmup <= 60 and 0 < args.duration <= 600):
        parser.error("concurrency must be 1..1024, warmup 0..60 s, duration 0..600 s")
    result = uvloop.run(run(args))
    print(json.dumps(result), flush=True)
    if "fatal" in result:
        print(f"loadgen: {result['fatal']}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
