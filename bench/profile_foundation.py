"""Where the gateway and the worker spend their CPU under load: py-spy on both while loadgen runs.

Starts the bench fleet (bench_foundation.fleet_yaml), drives one workload through the gateway (or
straight at the worker) with bench/loadgen.py, and meanwhile samples the gateway and the worker with
``py-spy record``. Prints, per process, the functions with the most samples on-CPU, self and
inclusive, and keeps the collapsed stacks (flamegraph input) in bench/results/.

Needs py-spy (``.venv/bin/pip install py-spy``). Sampling costs the measured processes a little, so
use bench_foundation.py for numbers and this only to see where the time goes.

    .venv/bin/python bench/profile_foundation.py [--workload W2] [--concurrency 16] [--duration 10]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench_foundation import RESULTS_DIR, TEXT, WORKLOADS, fleet_yaml, log, preflight, run_load

TOP = 25


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy not found; install it with: .venv/bin/pip install py-spy")
    return found


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def summarize(collapsed: Path, top: int) -> str:
    """Top functions by self and by inclusive samples, and top lines by self samples, from py-spy's
    collapsed ("raw") output."""
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    self_line: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_line[frames[-1]] += count
        self_fn[_function(frames[-1])] += count
        for name in {_function(f) for f in frames}:
            incl_fn[name] += count
    if not total:
        return "  (no samples)"

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}"

    lines = [f"  {total} samples on CPU", "  by function, self:      self%  incl%"]
    lines += [f"    {pct(n)}  {pct(incl_fn[f])}  {f}" for f, n in self_fn.most_common(top)]
    lines.append("  by function, inclusive: self%  incl%")
    lines += [f"    {pct(self_fn[f])}  {pct(n)}  {f}" for f, n in incl_fn.most_common(top)]
    lines.append("  by line, self:          self%")
    lines += [f"    {pct(n)}  {f}" for f, n in self_line.most_common(top // 2)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="W2", choices=sorted(WORKLOADS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="sampled window, s")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--direct", action="store_true", help="load the worker directly instead of the gateway"
    )
    parser.add_argument("--top", type=int, default=TOP)
    args = parser.parse_args(argv)
    if not (0 < args.duration <= 120 and 1 <= args.concurrency <= 1024):
        parser.error("--duration must be in (0, 120] and --concurrency in 1..1024")

    from modelfleet.settings import load_settings
    from modelfleet.supervisor.state import FleetState
    from modelfleet.supervisor.supervisor import Supervisor

    spy = py_spy()
    spec = WORKLOADS[args.workload]
    tmp = Path(tempfile.mkdtemp(prefix="modelfleet-profile-"))
    config = tmp / "fleet.yaml"
    config.write_text(fleet_yaml(tmp, [args.workload]), encoding="utf-8")
    supervisor = Supervisor(load_settings(config), config)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    try:
        plan = supervisor.start()
        state = FleetState.read(supervisor.run_dir)
        assert state is not None
        pids = {p.name: p.pid for p in state.processes if p.pid is not None}
        worker = f"{spec['service']}-0"
        targets = (
            {"worker": pids[worker]} if args.direct else {"gateway": pids["gateway"], "worker": pids[worker]}
        )
        port = plan.services[spec["service"]][0].port if args.direct else plan.gateway.port
        path = f"/v1/models/{spec['model']}/predict"
        body = orjson.dumps({"text": TEXT})
        preflight(port, path, body, spec["key"], envelope=True)
        warmup = 2.0
        outputs = {
            name: RESULTS_DIR / f"profile-{stamp}-{args.workload}-c{args.concurrency}-{name}.txt"
            for name in targets
        }
        spies: list[subprocess.Popen[bytes]] = []

        def start_spies() -> None:
            for name, pid in targets.items():
                spies.append(
                    subprocess.Popen(
                        [
                            *(spy, "record", "--pid", str(pid), "--duration", str(int(args.duration))),
                            *("--rate", str(args.rate), "--format", "raw", "--nonblocking"),
                            *("--output", str(outputs[name])),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )

        timer = threading.Timer(warmup, start_spies)
        timer.start()
        via = "worker" if args.direct else "gateway"
        log(f"loading {args.workload} c={args.concurrency} via {via}; sampling {targets}")
        row = run_load(
            args.workload, "profile", port, path, body, args.concurrency, targets, warmup, args.duration + 1.0
        )
        timer.join()
        for proc in spies:
            try:
                _, err = proc.communicate(timeout=args.duration + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                log(f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    finally:
        supervisor.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\n{args.workload} c={args.concurrency} via {'worker' if args.direct else 'gateway'}: "
        f"{row.rps or 0:.0f} req/s (with py-spy attached), server CPU ms/req "
        + ", ".join(f"{k} {v:.3f}" for k, v in row.cpu_split.items())
    )
    for name, out in outputs.items():
        print(f"\n== {name} (pid {targets[name]}): {out}")
        print(summarize(out, args.top) if out.exists() else "  (no profile written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
