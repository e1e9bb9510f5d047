"""Entry point of the `modelfleet` command. Parsing and printing only; the work lives in the rooms."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from modelfleet.cli.lake import add_lake_commands
from modelfleet.cli.registry import add_registry_commands
from modelfleet.cli.rollout import add_rollout_commands
from modelfleet.cli.train import add_train_commands
from modelfleet.errors import ConfigError
from modelfleet.plan import FleetPlan
from modelfleet.settings import Settings, load_settings

DEFAULT_CONFIG = "fleet.yaml"


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, env=os.environ)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def cmd_up(args: argparse.Namespace) -> int:
    """Start the gateway and every worker replica, wait until ready, and supervise until Ctrl-C."""
    from modelfleet.supervisor.supervisor import Supervisor

    settings = _settings(args)
    _setup_logging(settings.log_level)
    supervisor = Supervisor(settings, Path(args.config))

    def ready(plan: FleetPlan) -> None:
        print(f"modelfleet is up: gateway {plan.gateway.url}", flush=True)
        for service, endpoints in plan.services.items():
            models = ", ".join(m for m, s in plan.models.items() if s == service)
            print(f"  service {service}: {len(endpoints)} replica(s) [{models}]", flush=True)
        for service, endpoints in plan.streams.items():
            print(f"  stream {service}: {len(endpoints)} replica(s)", flush=True)
        print(f"logs in {supervisor.log_dir}; stop with Ctrl-C or 'modelfleet down'", flush=True)

    supervisor.run(on_ready=ready)
    print("modelfleet stopped", flush=True)
    return 0


def _state(args: argparse.Namespace) -> tuple[Settings, Any]:
    from modelfleet.supervisor.state import FleetState

    settings = _settings(args)
    return settings, FleetState.read(Path(settings.supervisor.run_dir).resolve())


def cmd_down(args: argparse.Namespace) -> int:
    """Ask a running fleet's supervisor to drain and stop, and wait until it has."""
    from modelfleet.supervisor.state import pid_alive

    _, state = _state(args)
    if state is None or not pid_alive(state.supervisor_pid):
        print("no fleet is running", file=sys.stderr)
        return 1
    os.kill(state.supervisor_pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while pid_alive(state.supervisor_pid):
        if time.monotonic() > deadline:
            print(
                f"supervisor {state.supervisor_pid} still running after {args.timeout:.0f}s", file=sys.stderr
            )
            return 1
        time.sleep(0.1)
    print("modelfleet stopped")
    return 0


def _get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read())
        except ValueError:
            return err.code, None
    except (OSError, ValueError):
        return 0, None


def cmd_status(args: argparse.Namespace) -> int:
    """Show services, replicas, pids, readiness and models of the running fleet."""
    from modelfleet.supervisor.state import pid_alive

    _, state = _state(args)
    if state is None or not pid_alive(state.supervisor_pid):
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("no fleet is running")
        return 1
    rows = []
    for proc in state.processes:
        alive = pid_alive(proc.pid)
        status, _ = _get_json(f"{proc.url}/v2/health/ready", timeout_s=1.0) if alive else (0, None)
        models: list[str] = []
        if proc.role == "worker" and status == 200:
            _, listing = _get_json(f"{proc.url}/v1/models", timeout_s=1.0)
            models = [m["name"] for m in (listing or {}).get("models", [])]
        rows.append(
            {
                "name": proc.name,
                "role": proc.role,
                "service": proc.service,
                "url": proc.url,
                "pid": proc.pid if alive else None,
                "ready": status == 200,
                "restarts": proc.restarts,
                "status": proc.status,
                "models": models,
            }
        )
    if args.json:
        print(
            json.dumps(
                {
                    "running": True,
                    "supervisor_pid": state.supervisor_pid,
                    "gateway": state.gateway_url,
                    "processes": rows,
                },
                indent=2,
            )
        )
        return 0
    print(f"fleet running: supervisor pid {state.supervisor_pid}, gateway {state.gateway_url}")
    header = f"{'NAME':<16} {'SERVICE':<12} {'PID':>7} {'READY':<6} {'RESTARTS':>8}  {'URL':<24} MODELS"
    print(header)
    for row in rows:
        print(
            f"{row['name']:<16} {row['service'] or '-':<12} {row['pid'] or '-':>7} "
            f"{'yes' if row['ready'] else 'no':<6} {row['restarts']:>8}  {row['url']:<24} "
            f"{', '.join(row['models'])}"
        )
    return 0


def _gateway_url(args: argparse.Namespace) -> str:
    """``--url``, else the running fleet's gateway, else the configured gateway address."""
    if args.url is not None:
        return str(args.url)
    settings, state = _state(args)
    if state is not None:
        return str(state.gateway_url)
    return f"http://{settings.gateway.host}:{settings.gateway.port}"


def cmd_predict(args: argparse.Namespace) -> int:
    """Send one input to a model through the gateway and print the answer."""
    url = _gateway_url(args)
    text = args.text
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        payload = stripped.encode()
    else:
        payload = json.dumps({args.field: text}).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{args.model}/predict",
        data=payload,
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            print(json.dumps(json.loads(response.read()), indent=2))
            return 0
    except urllib.error.HTTPError as err:
        body = err.read().decode("utf-8", errors="replace")
        try:
            message = json.loads(body).get("error", body)
        except ValueError:
            message = body
        print(f"error {err.code}: {message}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"cannot reach the gateway at {url}: {err}", file=sys.stderr)
        return 1


def cmd_runs(args: argparse.Namespace) -> int:
    """List stored pipeline runs (newest first), or show one with --id."""
    import asyncio
    from datetime import UTC, datetime

    from modelfleet.store import make_run_store

    settings = _settings(args)
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            print(f"--since {args.since!r} is not an ISO-8601 time", file=sys.stderr)
            return 2
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)

    async def read() -> Any:
        store = make_run_store(settings.store_url)
        await store.open()
        try:
            if args.id:
                return await store.find_run(args.id)
            return await store.list_runs(
                pipeline=args.pipeline, since=since, limit=args.limit, cursor=args.cursor
            )
        finally:
            await store.close()

    result = asyncio.run(read())
    if args.id:
        if result is None:
            print(f"no run with id {args.id!r}", file=sys.stderr)
            return 1
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    if args.json:
        print(
            json.dumps(
                {"runs": [r.to_dict() for r in result.items], "next_cursor": result.next_cursor}, indent=2
            )
        )
        return 0
    print(f"{'RUN ID':<32}  {'PIPELINE':<14} {'STATUS':<9} {'CREATED (UTC)':<26} {'MS':>8}  SKIPPED")
    for run in result.items:
        skipped = ",".join(s.name for s in run.steps if s.status == "skipped")
        created = run.created_at.isoformat(timespec="milliseconds")
        print(
            f"{run.id:<32}  {run.pipeline:<14} {run.status:<9} {created:<26} "
            f"{run.duration_ms:>8.1f}  {skipped}"
        )
    if result.next_cursor:
        print(f"more: --cursor {result.next_cursor}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """Run a CSV, JSONL or Parquet file through a model or pipeline of the running fleet, resumably."""
    from modelfleet.batch import run_batch

    url = _gateway_url(args)
    try:
        summary = run_batch(
            args.target,
            Path(args.input),
            Path(args.output),
            url,
            chunk_size=args.chunk_size,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            input_format=args.format,
            restart=args.restart,
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: finished chunks are kept in {args.output}.parts/; rerun to resume", file=sys.stderr
        )
        return 130
    print(summary.render())
    return summary.exit_code


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker replica (the supervisor starts these; useful alone for debugging)."""
    from modelfleet.worker.main import serve_worker

    settings = _settings(args)
    _setup_logging(settings.log_level)
    serve_worker(settings, args.service, args.port, args.host)
    return 0


def cmd_job_worker(args: argparse.Namespace) -> int:
    """Run one job-worker replica (the supervisor starts these for services of kind job-worker)."""
    from modelfleet.jobs.main import serve_job_worker

    settings = _settings(args)
    _setup_logging(settings.log_level)
    serve_job_worker(settings, FleetPlan.read(Path(args.plan)), args.service, args.port)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Run one stream replica (the supervisor starts these for services of kind stream)."""
    from modelfleet.stream.main import serve_stream

    settings = _settings(args)
    _setup_logging(settings.log_level)
    serve_stream(settings, FleetPlan.read(Path(args.plan)), args.service, args.port, args.replica)
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run the gateway for a fleet plan written by the supervisor."""
    from modelfleet.gateway.main import serve_gateway

    settings = _settings(args)
    _setup_logging(settings.log_level)
    serve_gateway(settings, FleetPlan.read(Path(args.plan)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=(func.__doc__ or "").strip().splitlines()[0], description=func.__doc__)
        p.add_argument(
            "-c", "--config", default=DEFAULT_CONFIG, help="fleet configuration (default: fleet.yaml)"
        )
        p.set_defaults(func=func)
        return p

    command("up", cmd_up)
    down = command("down", cmd_down)
    down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the fleet to stop")
    status = command("status", cmd_status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    predict = command("predict", cmd_predict)
    predict.add_argument("model")
    predict.add_argument("text", help="the text, or a JSON object/array sent as is")
    predict.add_argument("--field", default="text", help="input field the text goes in (default: text)")
    predict.add_argument("--url", help="gateway URL (default: the running fleet's)")
    predict.add_argument("--timeout", type=float, default=30.0)
    runs = command("runs", cmd_runs)
    runs.add_argument("--id", help="show this run in full")
    runs.add_argument("--pipeline", help="only runs of this pipeline")
    runs.add_argument("--since", help="only runs created at or after this ISO-8601 time")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--cursor", help="continue a listing where the last page ended")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    batch = sub.add_parser("batch", help="offline batch scoring of files").add_subparsers(
        dest="batch_command", required=True
    )
    batch_run = batch.add_parser("run", help=(cmd_batch.__doc__ or "").strip(), description=cmd_batch.__doc__)
    batch_run.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help="fleet configuration (default: fleet.yaml)"
    )
    batch_run.set_defaults(func=cmd_batch)
    batch_run.add_argument("target", help="pipeline:NAME or model:NAME")
    batch_run.add_argument("--input", required=True, help="a .csv, .jsonl or .parquet file")
    batch_run.add_argument(
        "--output", required=True, help="where the results go; its suffix picks the format"
    )
    batch_run.add_argument(
        "--format",
        choices=["auto", "csv", "jsonl", "parquet"],
        default="auto",
        help="the input's format (default: from its suffix)",
    )
    batch_run.add_argument("--chunk-size", type=int, default=1000, help="rows per request (default: 1000)")
    batch_run.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: 4)")
    batch_run.add_argument("--url", help="gateway URL (default: the running fleet's)")
    batch_run.add_argument("--restart", action="store_true", help="discard parts left by an earlier batch")
    batch_run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    worker = command("worker", cmd_worker)
    worker.add_argument("--service", required=True)
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--host", default=None)
    job_worker = command("job-worker", cmd_job_worker)
    job_worker.add_argument("--service", required=True)
    job_worker.add_argument("--port", type=int, required=True)
    job_worker.add_argument("--plan", required=True, help="plan.json written by the supervisor")
    stream = command("stream", cmd_stream)
    stream.add_argument("--service", required=True)
    stream.add_argument("--port", type=int, required=True)
    stream.add_argument("--plan", required=True, help="plan.json written by the supervisor")
    stream.add_argument("--replica", type=int, default=0, help="replica number; names its consumer")
    gateway = command("gateway", cmd_gateway)
    gateway.add_argument("--plan", required=True, help="plan.json written by the supervisor")
    config_parent = argparse.ArgumentParser(add_help=False)
    config_parent.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help="fleet configuration (default: fleet.yaml)"
    )
    add_lake_commands(sub, config_parent)
    add_registry_commands(sub, config_parent)
    add_rollout_commands(sub, config_parent)
    add_train_commands(sub, config_parent, _gateway_url)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"modelfleet: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
