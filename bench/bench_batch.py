"""Batch benchmark: `modelfleet batch run` over the SMS spam texts against the raw model in this process.

The SMS Spam Collection's 5,574 texts (../shared/data) are repeated to ``--rows`` rows of JSONL.
The baseline is the sentiment model (VADER) called in this process on the same texts in lists of
``--chunk-size``: ``predict`` on ready-made typed inputs, nothing else. The fleet row sends the same
file through a fleet serving ``sentiment`` (``--replicas`` replicas) with the batch client of the
CLI, running in this process: reading, HTTP, the gateway, the worker, part files and the final
output file all count. The raw baseline is measured before and after the fleet rows; the better
of the two is the ratio's denominator.

    .venv/bin/python bench/bench_batch.py [--rows 100000] [--chunk-size 1000] [--concurrency 4]
    .venv/bin/python bench/bench_batch.py --interrupt     # also: SIGINT a CLI batch mid-way, then resume

Results go to stdout and, as JSON, to bench/results/batch-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
SMS = ROOT.parent / "shared" / "data" / "sms-spam-collection" / "SMSSpamCollection.tsv"
RESULTS_DIR = ROOT / "bench" / "results"
TARGET_RATIO = 0.7


def log(message: str) -> None:
    print(f"[bench_batch] {message}", file=sys.stderr, flush=True)


def sms_texts() -> list[str]:
    with SMS.open(encoding="utf-8", newline="") as stream:
        return [row[1] for row in csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) == 2]


def write_input(path: Path, texts: list[str], rows: int) -> None:
    with path.open("wb") as stream:
        for index in range(rows):
            stream.write(orjson.dumps({"text": texts[index % len(texts)]}) + b"\n")


def raw_rows_per_s(texts: list[str], rows: int, chunk_size: int) -> float:
    """The sentiment model's own predict, in this process, over ``rows`` texts in lists of ``chunk_size``."""
    from modelfleet.models.builtin.sentiment import VaderSentiment

    model = VaderSentiment()
    model.load()
    typed = [model.input_type(text=texts[i % len(texts)]) for i in range(rows)]
    model.predict(typed[:chunk_size])  # warm
    started = time.perf_counter()
    for offset in range(0, rows, chunk_size):
        model.predict(typed[offset : offset + chunk_size])  # type: ignore[arg-type]
    return rows / (time.perf_counter() - started)


@contextlib.contextmanager
def running_fleet(tmp: Path, replicas: int) -> Iterator[str]:
    """A fleet serving only ``sentiment``; yields the gateway URL."""
    from modelfleet.settings import load_settings
    from modelfleet.supervisor.supervisor import Supervisor

    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "fleet.yaml"
    data_dir = tmp / "data"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data_dir),
                "store_url": f"sqlite:///{data_dir}/modelfleet.db",
                "gateway": {"port": 0},
                "supervisor": {"run_dir": str(data_dir / "run")},
                "models": {"sentiment": {"class": "vader-sentiment"}},
                "services": {"light": {"models": ["sentiment"], "replicas": replicas}},
            }
        ),
        encoding="utf-8",
    )
    supervisor = Supervisor(load_settings(config), config)
    plan = supervisor.start()
    try:
        yield plan.gateway.url
    finally:
        supervisor.stop()


def fleet_rows_per_s(
    gateway: str, source: Path, out: Path, chunk_size: int, concurrency: int
) -> dict[str, Any]:
    from modelfleet.batch import run_batch

    summary = run_batch(
        "model:sentiment",
        source,
        out,
        gateway,
        chunk_size=chunk_size,
        concurrency=concurrency,
        progress=False,
    )
    if summary.failed or summary.rows == 0:
        raise RuntimeError(f"the batch failed: {summary.render()}")
    out.unlink()
    return {
        "rows": summary.rows,
        "elapsed_s": summary.elapsed_s,
        "rows_per_s": summary.rows / summary.elapsed_s,
    }


def interrupt_and_resume(gateway: str, source: Path, out: Path, chunk_size: int) -> dict[str, Any]:
    """The CLI in a subprocess: SIGINT after a second, then the same command again; returns what happened."""
    command = [
        sys.executable, "-m", "modelfleet", "batch", "run", "model:sentiment",
        "--input", str(source), "--output", str(out), "--url", gateway,
        "--chunk-size", str(chunk_size), "--concurrency", "2", "--no-progress",
    ]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    first.send_signal(signal.SIGINT)
    first_output, _ = first.communicate(timeout=120)
    parts = sorted((out.parent / f"{out.name}.parts").glob("[0-9]*.jsonl"))
    started = time.perf_counter()
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    result = {
        "first_exit": first.returncode,
        "parts_after_interrupt": len(parts),
        "first_output_tail": first_output.strip().splitlines()[-3:],
        "second_exit": second.returncode,
        "second_s": time.perf_counter() - started,
        "second_output": second.stdout.strip().splitlines(),
    }
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    result["output_rows"] = len(rows)
    result["in_order"] = all(row["row"] == index for index, row in enumerate(rows))
    result["errors"] = sum(1 for row in rows if row.get("error"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--replicas", default="1,2", help="fleet rows to measure, by replicas of sentiment")
    parser.add_argument("--repeat", type=int, default=2, help="runs per fleet row; the best counts")
    parser.add_argument("--interrupt", action="store_true", help="also SIGINT a CLI batch, then resume it")
    args = parser.parse_args()

    texts = sms_texts()
    tmp = Path(tempfile.mkdtemp(prefix="modelfleet-bench-batch-"))
    results: dict[str, Any] = {
        "rows": args.rows,
        "chunk_size": args.chunk_size,
        "concurrency": args.concurrency,
    }
    try:
        source = tmp / "sms.jsonl"
        write_input(source, texts, args.rows)
        raw_before = raw_rows_per_s(texts, args.rows, args.chunk_size)
        log(f"raw in-process: {raw_before:,.0f} rows/s")
        fleet_rows: dict[str, Any] = {}
        for replicas in [int(r) for r in args.replicas.split(",") if r]:
            with running_fleet(tmp / f"fleet-{replicas}", replicas) as gateway:
                runs = [
                    fleet_rows_per_s(gateway, source, tmp / "out.jsonl", args.chunk_size, args.concurrency)
                    for _ in range(args.repeat)
                ]
                best = max(runs, key=lambda r: r["rows_per_s"])
                fleet_rows[str(replicas)] = {"runs": runs, "best_rows_per_s": best["rows_per_s"]}
                log(f"fleet, {replicas} replica(s): " + ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs))
                if args.interrupt and replicas == 1:
                    results["interrupt"] = interrupt_and_resume(gateway, source, tmp / "resumed.jsonl", 1000)
                    log(f"interrupt and resume: {results['interrupt']}")
        raw_after = raw_rows_per_s(texts, args.rows, args.chunk_size)
        raw = max(raw_before, raw_after)
        results.update(raw_rows_per_s={"before": raw_before, "after": raw_after}, fleet=fleet_rows)
        print(f"\nbatch of {args.rows:,} SMS texts through model:sentiment "
              f"(chunk {args.chunk_size}, {args.concurrency} in flight), {os.cpu_count()} cores")  # fmt: skip
        spread = f"(before {raw_before:,.0f}, after {raw_after:,.0f})"
        print(f"  raw in-process predict      {raw:>10,.0f} rows/s   {spread}")
        for replicas, row in fleet_rows.items():
            ratio = row["best_rows_per_s"] / raw
            row["ratio"] = ratio
            rate = row["best_rows_per_s"]
            print(f"  fleet, {replicas} replica(s)         {rate:>10,.0f} rows/s   ratio {ratio:.2f}")
        best_ratio = max(row["ratio"] for row in fleet_rows.values())
        results["best_ratio"] = best_ratio
        print(f"Target: batch >= {TARGET_RATIO:.0%} of raw in-process: best ratio {best_ratio:.2f} "
              f"({'met' if best_ratio >= TARGET_RATIO else 'NOT met'})")  # fmt: skip
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        (RESULTS_DIR / f"batch-{stamp}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
