"""Pipeline benchmark: what running the triage pipeline through the gateway costs over its bare models.

The ``triage`` pipeline of the default fleet.yaml (language -> for English text, spam -> for
messages that are not spam, intent and sentiment in parallel) is copied as is, with its models as
fleet.yaml declares them, into a generated fleet config and run under two placements, one fleet
after the other (never overlapping). The trained models (spam, intent) come from a registry kept in
.modelfleet/bench (trained on the first run, like a first `make up`):

- packed: one service hosting language, sentiment and embedder, so the gateway sends the whole
  pipeline to one worker in one hop;
- split: service light (language, sentiment) and service embed (embedder), like the default fleet,
  so the gateway runs the light unit, then the embedding step, as separate hops.

Each is loaded with ``POST /v1/pipelines/triage`` (runs stored in SQLite, the default) at
concurrency 1 and 16 by bench/loadgen.py in its own process, plus one row at c=1 with ``?store=false``
to show the cost of the store. The baseline, measured in this process at the start and again at the
end of the run: the three models' ``predict`` on one input each, called one after another (``raw
sum``). The table goes to stdout, the results as JSON to bench/results/pipeline-<timestamp>.json.

    .venv/bin/python bench/bench_pipeline.py [--duration S] [--quick] [--placements packed,split]
    .venv/bin/python bench/bench_pipeline.py --profile packed [--concurrency 1]   # py-spy, no table
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

import fleetkit
from bench_foundation import (
    DATA_DIR,
    RESULTS_DIR,
    ROOT,
    QuietBudget,
    Row,
    _caller,
    _f,
    announce,
    git_commit,
    http_call,
    log,
    measure,
    package_versions,
    run_load,
    time_calls,
    time_calls_quietly,
    wait_quiet,
)

PIPELINE = "triage"
SOURCE_FLEET = ROOT / "fleet.yaml"
CONCURRENCIES: tuple[int, ...] = (1, 16)
NO_STORE_C = 1
TEXT = "My card payment was declined again and nobody at the branch could tell me why, this is terrible."
TARGET_LATENCY_RATIO = 1.3
TARGET_PLACEMENT = "packed"

BENCH_STORE = DATA_DIR / "bench" / "registry.db"  # the trained models' registry, kept between runs
BENCH_LAKE = DATA_DIR / "bench" / "lake"  # their datasets and artifacts


def _shipped() -> dict[str, Any]:
    return dict(yaml.safe_load(SOURCE_FLEET.read_text(encoding="utf-8")))


def _used_models() -> list[str]:
    steps = _shipped()["pipelines"][PIPELINE]["steps"].values()
    return list(dict.fromkeys(str(step["model"]).partition("@")[0] for step in steps))


def _bench_models() -> dict[str, dict[str, Any]]:
    """The pipeline's models exactly as fleet.yaml declares them, bootstrap files made absolute."""
    models = {}
    for name in _used_models():
        spec = json.loads(json.dumps(_shipped()["models"][name]))
        bootstrap = (spec.get("registry") or {}).get("bootstrap") or {}
        for key in ("dataset", "test_dataset"):
            if key in bootstrap:
                bootstrap[key] = str((ROOT / bootstrap[key]).resolve())
        models[name] = spec
    return models


# The models the bench serves: those the shipped triage pipeline uses, as fleet.yaml declares them.
MODELS: dict[str, dict[str, Any]] = _bench_models()
RAW_ORDER = tuple(MODELS)  # the order the pipeline calls them in (independent steps one after another)
_SHIPPED_SERVICES = {
    name: [m for m in service.get("models", []) if m in MODELS]
    for name, service in _shipped()["services"].items()
}

# placement -> (services, pipeline placement setting)
PLACEMENTS: dict[str, tuple[dict[str, list[str]], str]] = {
    "packed": ({"nlp": list(MODELS)}, "packed"),
    "split": ({name: models for name, models in _SHIPPED_SERVICES.items() if models}, "packed"),
    # Not measured by default: the packed fleet with `placement: per-step` (one hop a step).
    "per-step": ({"nlp": list(MODELS)}, "per-step"),
}
DEFAULT_PLACEMENTS = ("packed", "split")

RAW = "raw"
RAW_SUM = "raw sum"
END = " (end)"
STORED = "gateway"
NOT_STORED = "gateway store=false"


@dataclass
class PlacementInfo:
    """What the gateway said about one placement, and the answer to the check request."""

    units: list[dict[str, Any]] = field(default_factory=list)
    output: Any = None
    steps: dict[str, Any] = field(default_factory=dict)
    response_bytes: int = 0
    failure: str | None = None


# ---------------------------------------------------------------------------------------------- config


def source_pipeline() -> dict[str, Any]:
    """The triage pipeline exactly as fleet.yaml defines it; refuses one that needs other models."""
    data = yaml.safe_load(SOURCE_FLEET.read_text(encoding="utf-8"))
    spec = (data.get("pipelines") or {}).get(PIPELINE)
    if not isinstance(spec, dict):
        raise SystemExit(f"{SOURCE_FLEET}: no pipeline {PIPELINE!r} to benchmark")
    return dict(spec)


def _settings_of(config: dict[str, Any]) -> Any:
    from modelfleet.settings import settings_from_dict

    return settings_from_dict(config, source="bench")


def prepare_registry() -> dict[str, Path]:
    """Train the registry-backed models once (kept in .modelfleet/bench); answers their artifact folders."""
    import asyncio

    from modelfleet.lake import Lake
    from modelfleet.registry import make_registry
    from modelfleet.training.bootstrap import bootstrap_models

    followed = {name: spec for name, spec in MODELS.items() if spec.get("registry")}
    if not followed:
        return {}
    BENCH_STORE.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings_of(
        {
            "data_dir": str(DATA_DIR),
            "store_url": f"sqlite:///{BENCH_STORE}",
            "lake": {"root": str(BENCH_LAKE)},
            "models": followed,
            "services": {"trained": {"models": list(followed)}},
        }
    )

    async def prepare() -> dict[str, Path]:
        await bootstrap_models(settings, say=log)
        registry = make_registry(settings.store_url)
        await registry.open()
        try:
            lake = Lake(str(BENCH_LAKE))
            folders = {}
            for name, spec in followed.items():
                version = await registry.resolve(name, spec["registry"].get("alias", "production"))
                folders[name] = lake.get_artifact(version.artifact_uri, DATA_DIR / "artifact-cache")
                log(f"raw: {name} is registry version {version.version} ({version.metrics})")
            return folders
        finally:
            await registry.close()

    return asyncio.run(prepare())


def copy_registry(target: Path) -> None:
    """A fleet's own store, starting as a copy of the bench registry (SQLite's online backup)."""
    if not BENCH_STORE.exists():
        return
    with (
        contextlib.closing(sqlite3.connect(BENCH_STORE)) as source,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)


def fleet_config(tmp: Path, placement: str, pipeline: dict[str, Any]) -> str:
    services, setting = PLACEMENTS[placement]
    copy_registry(tmp / "modelfleet.db")
    config: dict[str, Any] = {
        "data_dir": str(DATA_DIR),
        "store_url": f"sqlite:///{tmp}/modelfleet.db",
        "lake": {"root": str(BENCH_LAKE)},
        "log_level": "warning",
        "gateway": {"host": "127.0.0.1", "port": 0},
        "supervisor": {"run_dir": f"{tmp}/run", "ready_timeout_s": 600},
        "models": MODELS,
        "services": {name: {"models": models, "replicas": 1} for name, models in services.items()},
        "pipelines": {PIPELINE: {**pipeline, "placement": setting}},
    }
    head = f"# Written by bench/bench_pipeline.py for one benchmark run ({placement}).\n"
    return head + yaml.safe_dump(config, sort_keys=False)


# ---------------------------------------------------------------------------------------------- raw


def load_raw_models() -> dict[str, Any]:
    from modelfleet.models.catalog import build_runner
    from modelfleet.settings import ModelSettings

    folders = prepare_registry()
    models = {}
    for name in RAW_ORDER:
        spec = dict(MODELS[name])
        spec.pop("registry", None)
        if name in folders:
            spec["params"] = {**spec.get("params", {}), "artifact_dir": str(folders[name])}
        runner = build_runner(name, ModelSettings.model_validate(spec), str(DATA_DIR))
        started = time.perf_counter()
        runner.model.load()
        log(f"raw: loaded {name} in {time.perf_counter() - started:.2f}s")
        models[name] = runner.model
    return models


def bind(predict: Callable[[list[Any]], list[Any]], inputs: list[Any]) -> Callable[[], object]:
    def call() -> object:
        return predict(inputs)

    return call


def raw_calls() -> dict[str, Callable[[], object]]:
    """One-input predict calls of each model, and RAW_SUM: all of them one after another."""
    models = load_raw_models()
    calls: dict[str, Callable[[], object]] = {}
    for name in RAW_ORDER:
        predict = _caller(models[name])
        one = [type(models[name]).input_type(text=TEXT)]
        out = predict(one)
        if len(out) != 1:
            raise RuntimeError(f"raw {name}: {len(out)} outputs for one input")
        calls[name] = bind(predict, one)
    language = _caller(models["language"])([type(models["language"]).input_type(text=TEXT)])[0]
    if language.language != "en":
        raise RuntimeError(
            f"the bench text is not detected as English ({language!r}); the pipeline would skip"
        )
    if "spam" in models:
        verdict = _caller(models["spam"])([type(models["spam"]).input_type(text=TEXT)])[0]
        if verdict.label != "ham":
            raise RuntimeError(f"the bench text is taken for spam ({verdict!r}); the pipeline would skip")
    chain = [calls[name] for name in RAW_ORDER]

    def raw_sum() -> None:
        for call in chain:
            call()

    return {RAW_SUM: raw_sum, **{f"{RAW} {n}": calls[n] for n in RAW_ORDER}}


def measure_raw(warmup_s: float, duration_s: float, retries: int, suffix: str) -> list[Row]:
    """Each model's predict on one input, then all of them one after another (the baseline)."""
    rows = []
    for variant, call in raw_calls().items():
        stats = time_calls_quietly(call, warmup_s, duration_s, retries, f"{variant}{suffix}")
        rows.append(
            Row(
                RAW,
                variant + suffix,
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
        log(f"{variant}{suffix}: {stats['calls_per_s']:.0f} calls/s, p50 {stats['p50_ms']:.3f} ms")
    return rows


# ---------------------------------------------------------------------------------------------- fleet


def stored_runs(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


def check_placement(port: int, body: bytes) -> PlacementInfo:
    """The gateway's units for the pipeline, and one run that must succeed with every step ok."""
    info = PlacementInfo()
    status, answer = http_call(port, "GET", f"/v1/pipelines/{PIPELINE}")
    if status != 200:
        raise RuntimeError(f"GET /v1/pipelines/{PIPELINE} answered {status}: {answer[:300]!r}")
    info.units = list(orjson.loads(answer)["units"])
    status, answer = http_call(port, "POST", f"/v1/pipelines/{PIPELINE}", body)
    if status != 200:
        raise RuntimeError(f"POST /v1/pipelines/{PIPELINE} answered {status}: {answer[:500]!r}")
    data = orjson.loads(answer)
    bad = {name: s for name, s in data["steps"].items() if s["status"] != "ok"}
    if data["status"] != "succeeded" or bad or not data.get("stored"):
        raise RuntimeError(
            f"check run: status {data['status']!r}, stored {data.get('stored')!r}, steps not ok: "
            f"{ {n: (s['status'], s['reason']) for n, s in bad.items()} }, error {data.get('error')!r}"
        )
    info.output = data["output"]
    info.steps = {
        n: {k: s[k] for k in ("status", "duration_ms", "version")} for n, s in data["steps"].items()
    }
    info.response_bytes = len(answer)
    return info


@contextlib.contextmanager
def fleet(placement: str, pipeline: dict[str, Any], keep: bool) -> Iterator[tuple[Any, dict[str, int], Path]]:
    """Start the placement's fleet; yields (plan, pids by process name, the SQLite file)."""
    with fleetkit.fleet(placement, lambda folder: fleet_config(folder, placement, pipeline), keep) as running:
        yield running.plan, running.pids, running.folder / "modelfleet.db"


def paired_rounds(
    port: int, pids: dict[str, int], body: bytes, rounds: int, window_s: float
) -> dict[str, Any]:
    """Raw sum in this process, then the fleet at c=1 (stored), one after the other, ``rounds`` times.

    Both halves of a round see the machine in the same state, so slow drifts of the VM's speed
    (seen: the same build measured 5.4 and 5.8 ms p50 in runs ten minutes apart) cancel out of
    each round's ratio. The fleet is up but idle while the raw half runs.
    """
    raw_sum = raw_calls()[RAW_SUM]
    done: list[dict[str, Any]] = []
    for index in range(1, rounds + 1):
        wait_quiet(f"paired round {index}")
        raw = time_calls(raw_sum, 0.5, window_s)
        path = f"/v1/pipelines/{PIPELINE}"
        row = run_load(TARGET_PLACEMENT, "paired", port, path, body, 1, pids, 0.5, window_s)
        if row.failure or not row.p50_ms or row.errors:
            return {"rounds": done, "failure": row.failure or f"{row.errors} non-200 responses"}
        done.append(
            {
                "raw_p50_ms": raw["p50_ms"],
                "fleet_p50_ms": row.p50_ms,
                "ratio": row.p50_ms / raw["p50_ms"],
                "raw_other_cores": raw["other_cores"],
                "fleet_other_cores": row.other_cores,
            }
        )
        log(
            f"paired round {index}: raw sum p50 {raw['p50_ms']:.3f} ms, {TARGET_PLACEMENT} c=1 p50 "
            f"{row.p50_ms:.3f} ms, ratio {row.p50_ms / raw['p50_ms']:.3f}"
        )
    ratios = [r["ratio"] for r in done]
    return {
        "rounds": done,
        "window_s": window_s,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "min_ratio": min(ratios, default=None),
        "max_ratio": max(ratios, default=None),
    }


def measure_placement(
    placement: str,
    pipeline: dict[str, Any],
    warmup_s: float,
    duration_s: float,
    retries: int,
    keep: bool,
    rows: list[Row],
    meta: dict[str, Any],
    paired: tuple[int, float] = (0, 0.0),
) -> PlacementInfo:
    body = orjson.dumps({"text": TEXT})
    path = f"/v1/pipelines/{PIPELINE}"
    plan_of: list[tuple[str, int]] = [(STORED, c) for c in CONCURRENCIES]
    plan_of.insert(1, (NOT_STORED, NO_STORE_C))  # right after the stored c=1, before c=16 grows the db
    with fleet(placement, pipeline, keep) as (plan, pids, db):
        meta.setdefault("fleets", {})[placement] = {"plan": json.loads(plan.to_json()), "pids": pids}
        info = check_placement(plan.gateway.port, body)
        log(f"{placement}: {len(info.units)} hop(s): {info.units}")
        # Every process of the fleet: the gateway first, then the workers.
        use = {"gateway": pids["gateway"], **{k: v for k, v in sorted(pids.items()) if k != "gateway"}}
        for variant, c in plan_of:
            target = path if variant == STORED else f"{path}?store=false"
            before = stored_runs(db)
            row = measure(
                placement,
                variant,
                plan.gateway.port,
                target,
                body,
                c,
                use,
                warmup_s,
                duration_s,
                retries=retries,
            )
            row.detail["hops"] = len(info.units)
            if not row.failure:
                added = stored_runs(db) - before
                # Counts every attempt's warm-up and window, so at least every answer of the kept window.
                row.detail["runs_stored_during_measurement"] = added
                if variant == STORED and added < row.requests:
                    row.failure = f"only {added} runs stored for {row.requests} answered in the window"
                if variant == NOT_STORED and added:
                    row.failure = f"{added} runs stored although the requests said store=false"
            announce(row)
            rows.append(row)
        rounds, window_s = paired
        if placement == TARGET_PLACEMENT and rounds:
            meta["paired"] = paired_rounds(plan.gateway.port, use, body, rounds, window_s)
    return info


# ---------------------------------------------------------------------------------------------- report


def best_raw(rows: list[Row], variant: str) -> tuple[float | None, float | None]:
    """(highest calls/s, lowest p50 ms) over the start and end passes: never flatters the pipeline."""
    found = [r for r in rows if r.workload == RAW and r.variant in (variant, variant + END) and not r.failure]
    rps = max((r.rps for r in found if r.rps), default=None)
    p50 = min((r.p50_ms for r in found if r.p50_ms), default=None)
    return rps, p50


def add_ratios(rows: list[Row]) -> tuple[float | None, float | None]:
    raw_rps, raw_p50 = best_raw(rows, RAW_SUM)
    for row in rows:
        if row.workload == RAW or row.failure:
            continue
        if raw_rps and row.rps:
            row.ratio_to_raw = row.rps / raw_rps
        if raw_p50 and row.p50_ms and row.concurrency == 1:
            row.detail["latency_ratio"] = row.p50_ms / raw_p50
    return raw_rps, raw_p50


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'placement':<9} {'variant':<20} {'c':>3} {'hops':>4} {'throughput':>10} {'unit':<8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'srv CPU ms/req':>14}  {'CPU split ms/req':<36} {'lg CPU':>7} "
        f"{'busy%':>6} {'other':>6} {'p50/raw':>7} {'x raw':>6} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    last = None
    for row in rows:
        if last is not None and row.workload != last:
            lines.append("")
        last = row.workload
        c = "-" if row.concurrency is None else str(row.concurrency)
        hops = str(row.detail.get("hops", "-"))
        if row.failure:
            lines.append(f"{row.workload:<9} {row.variant:<20} {c:>3} {hops:>4} FAILED: {row.failure}")
            continue
        split = " ".join(f"{k} {v:.3f}" for k, v in row.cpu_split.items())
        lines.append(
            f"{row.workload:<9} {row.variant:<20} {c:>3} {hops:>4} {_f(row.rps, '.0f'):>10} {row.unit:<8} "
            f"{_f(row.p50_ms, '.3f'):>8} {_f(row.p99_ms, '.3f'):>8} "
            f"{_f(row.server_cpu_ms_per_req, '.3f'):>14}  "
            f"{split:<36} {_f(row.loadgen_cpu_ms_per_req, '.3f'):>7} {_f(row.machine_busy_pct, '.0f'):>6} "
            f"{_f(row.other_cores, '.2f'):>6} {_f(row.detail.get('latency_ratio'), '.2f'):>7} "
            f"{_f(row.ratio_to_raw, '.3f'):>6} {row.errors if row.concurrency else '':>6}"
        )
    return "\n".join(lines)


def compute_targets(
    rows: list[Row], raw_rps: float | None, raw_p50: float | None, paired: dict[str, Any] | None
) -> dict[str, Any]:
    targets: dict[str, Any] = {"raw_sum_calls_per_s": raw_rps, "raw_sum_p50_ms": raw_p50, "placements": {}}
    for row in rows:
        if row.workload == RAW or row.failure:
            continue
        entry = targets["placements"].setdefault(row.workload, {})
        entry[f"{row.variant} c={row.concurrency}"] = {
            "rps": row.rps,
            "p50_ms": row.p50_ms,
            "latency_ratio": row.detail.get("latency_ratio"),
            "throughput_ratio": row.ratio_to_raw,
        }
    at = next(
        (
            r
            for r in rows
            if r.workload == TARGET_PLACEMENT and r.variant == STORED and r.concurrency == 1 and not r.failure
        ),
        None,
    )
    ratio = None if at is None else at.detail.get("latency_ratio")
    targets["latency_c1"] = {
        "placement": TARGET_PLACEMENT,
        "ratio": ratio,
        "target": f"<= {TARGET_LATENCY_RATIO}",
        "met": None if ratio is None else ratio <= TARGET_LATENCY_RATIO,
    }
    median = (paired or {}).get("median_ratio")
    targets["latency_c1_paired"] = {
        "placement": TARGET_PLACEMENT,
        "ratio": median,
        "rounds": len((paired or {}).get("rounds", [])),
        "min": (paired or {}).get("min_ratio"),
        "max": (paired or {}).get("max_ratio"),
        "failure": (paired or {}).get("failure"),
        "target": f"<= {TARGET_LATENCY_RATIO}",
        "met": None if median is None else median <= TARGET_LATENCY_RATIO,
    }
    return targets


def format_targets(targets: dict[str, Any], infos: dict[str, PlacementInfo]) -> str:
    lines = ["Hops (GET /v1/pipelines/triage -> units)"]
    for placement, info in infos.items():
        units = ", ".join(f"{u['service']}: {'+'.join(u['steps'])}" for u in info.units)
        lines.append(f"  {placement:<9} {len(info.units)} hop(s)   {units or info.failure or '-'}")
    lines.append("")
    lines.append(
        "Ratios (stored runs unless marked; raw sum = " + " + ".join(RAW_ORDER) + " predict, one input)"
    )
    raw_rps, raw_p50 = targets["raw_sum_calls_per_s"], targets["raw_sum_p50_ms"]
    lines.append(
        f"  raw sum: p50 {_f(raw_p50, '.3f')} ms, {_f(raw_rps, '.0f')} calls/s (better of start and end)"
    )
    for placement, entries in targets["placements"].items():
        for label, item in entries.items():
            latency = item["latency_ratio"]
            lat = "" if latency is None else f"latency p50/raw {latency:.2f}   "
            lines.append(
                f"  {placement:<9} {label:<26} {lat:<26}throughput req/s / raw calls/s "
                f"{_f(item['throughput_ratio'], '.3f')}"
            )

    def verdict(met: bool | None) -> str:
        return "not measured" if met is None else ("MET" if met else "NOT MET")

    t = targets["latency_c1"]
    lines.append("")
    lines.append(
        f"Target: {t['placement']} c=1 p50 / raw-sum p50 = {_f(t['ratio'], '.2f')} "
        f"(the row above against the better raw pass)   target {t['target']}: {verdict(t['met'])}"
    )
    pt = targets["latency_c1_paired"]
    spread = f"range {_f(pt['min'], '.2f')}-{_f(pt['max'], '.2f')}" if pt["rounds"] else pt["failure"] or "-"
    lines.append(
        f"        paired: median of {pt['rounds']} rounds (raw sum, then the fleet, in turn) = "
        f"{_f(pt['ratio'], '.2f')} ({spread})   target {pt['target']}: {verdict(pt['met'])}"
    )
    return "\n".join(lines)


def outputs_match(infos: dict[str, PlacementInfo]) -> list[str]:
    """Problems when the placements' check runs did not give the same output."""
    done = {p: i for p, i in infos.items() if i.failure is None}
    if len(done) < 2:
        return []
    first, *others = done
    problems = []
    for other in others:
        a, b = done[first].output, done[other].output
        if a == b:
            continue
        if not (isinstance(a, dict) and isinstance(b, dict)):
            problems.append(f"OUTPUT MISMATCH {first} vs {other}: {str(a)[:200]} != {str(b)[:200]}")
            continue
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        detail = []
        for key in keys:
            x, y = a.get(key), b.get(key)
            if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
                diff = max((abs(float(p) - float(q)) for p, q in zip(x, y, strict=True)), default=0.0)
                detail.append(f"{key}: max |diff| {diff:.3g}")
            else:
                detail.append(f"{key}: {str(x)[:80]} != {str(y)[:80]}")
        problems.append(f"OUTPUT MISMATCH {first} vs {other}: {'; '.join(detail)}")
    return problems


# ---------------------------------------------------------------------------------------------- profile


def profile(placement: str, concurrency: int, duration_s: float, rate: int) -> int:
    """Load one placement at ``concurrency`` and sample the gateway and each worker with py-spy."""
    from profile_foundation import py_spy, summarize

    spy = py_spy()
    body = orjson.dumps({"text": TEXT})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    warmup = 2.0
    with fleet(placement, source_pipeline(), keep=False) as (plan, pids, _):
        check_placement(plan.gateway.port, body)
        outputs = {
            n: RESULTS_DIR / f"profile-{stamp}-pipeline-{placement}-c{concurrency}-{n}.txt" for n in pids
        }
        spies: list[subprocess.Popen[bytes]] = []

        def start_spies() -> None:
            for name, pid in pids.items():
                argv = [spy, "record", "--pid", str(pid), "--duration", str(math.ceil(duration_s))]
                argv += [
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(outputs[name]),
                ]
                spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        timer = threading.Timer(warmup, start_spies)
        timer.start()
        log(f"profiling {placement} c={concurrency}: {pids}")
        row = run_load(
            placement,
            "profile",
            plan.gateway.port,
            f"/v1/pipelines/{PIPELINE}",
            body,
            concurrency,
            pids,
            warmup,
            duration_s + 1.0,
        )
        timer.join()
        for proc in spies:
            try:
                _, err = proc.communicate(timeout=duration_s + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                log(f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    print(
        f"\n{placement} c={concurrency}: {row.rps or 0:.0f} req/s, p50 {_f(row.p50_ms, '.3f')} ms "
        "(py-spy attached), "
        "server CPU ms/req " + ", ".join(f"{k} {v:.3f}" for k, v in row.cpu_split.items())
    )
    for name, out in outputs.items():
        print(f"\n== {name} (pid {pids[name]}): {out}")
        print(summarize(out, 25) if out.exists() else "  (no profile written)")
    return 0


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
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
    parser.add_argument(
        "--placements",
        default=",".join(DEFAULT_PLACEMENTS),
        help=f"comma-separated subset of {','.join(PLACEMENTS)} (default: {','.join(DEFAULT_PLACEMENTS)})",
    )
    parser.add_argument(
        "--noise-retries", type=int, default=2, help="measure again when the machine was busy"
    )
    parser.add_argument("--quiet-budget", type=float, default=300.0, help="total seconds to wait for quiet")
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=None,
        help=f"rounds of raw sum then {TARGET_PLACEMENT} c=1, in turn, after its rows (default 5; --quick 2)",
    )
    parser.add_argument(
        "--paired-window", type=float, default=None, help="seconds per half round (default 3; --quick 1)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary fleet folders and their logs")
    parser.add_argument(
        "--profile", choices=sorted(PLACEMENTS), help="only profile this placement with py-spy"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="with --profile: the load's concurrency")
    parser.add_argument("--rate", type=int, default=250, help="with --profile: py-spy samples per second")
    args = parser.parse_args(argv)
    duration_s = args.duration if args.duration is not None else (1.5 if args.quick else 5.0)
    warmup_s = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    if not (0 < duration_s <= 120 and 0 <= warmup_s <= 30):
        parser.error("--duration must be in (0, 120] and --warmup in [0, 30]")
    if args.paired_rounds is None:
        args.paired_rounds = 2 if args.quick else 5
    if args.paired_window is None:
        args.paired_window = 1.0 if args.quick else 3.0
    if not (0 <= args.paired_rounds <= 50 and 0 < args.paired_window <= 60):
        parser.error("--paired-rounds must be in [0, 50] and --paired-window in (0, 60]")
    if args.profile:
        if not 1 <= args.concurrency <= 1024:
            parser.error("--concurrency must be in 1..1024")
        return profile(args.profile, args.concurrency, duration_s, args.rate)
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    unknown = [p for p in placements if p not in PLACEMENTS]
    if unknown or not placements:
        parser.error(f"unknown placements: {', '.join(unknown) or '(none)'}")
    QuietBudget.left_s = max(0.0, min(args.quiet_budget, 3600.0))
    pipeline = source_pipeline()

    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "started": started.isoformat(),
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "concurrencies": list(CONCURRENCIES),
        "no_store_concurrency": NO_STORE_C,
        "text": TEXT,
        "pipeline": pipeline,
        "models": MODELS,
        "placements": {p: {"services": PLACEMENTS[p][0], "setting": PLACEMENTS[p][1]} for p in placements},
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "noise_retries": args.noise_retries,
    }
    rows: list[Row] = []
    problems: list[str] = []
    infos: dict[str, PlacementInfo] = {}

    def raw_pass(suffix: str) -> None:
        try:
            rows.extend(measure_raw(warmup_s, duration_s, args.noise_retries, suffix))
            gc.collect()  # drop the models (and onnxruntime's threads) before anything else runs
        except Exception as err:
            message = f"raw{suffix}: {type(err).__name__}: {err}"
            problems.append(message)
            log(message)
            rows.append(Row(RAW, RAW_SUM + suffix, None, failure=message))

    # 1. the raw baseline, no server running; 2. each placement's fleet alone; 3. the raw baseline again
    raw_pass("")
    for placement in placements:
        try:
            infos[placement] = measure_placement(
                placement,
                pipeline,
                warmup_s,
                duration_s,
                args.noise_retries,
                args.keep,
                rows,
                meta,
                (args.paired_rounds, args.paired_window),
            )
        except Exception as err:
            message = f"{placement}: {type(err).__name__}: {err}"
            problems.append(message)
            log(message)
            infos[placement] = PlacementInfo(failure=message)
    raw_pass(END)

    problems += outputs_match(infos)
    for row in rows:
        where = f"{row.workload} {row.variant} c={row.concurrency}"
        if row.failure and not any(row.failure in p for p in problems):
            problems.append(f"{where}: {row.failure}")
        if row.errors:
            problems.append(f"{where}: {row.errors} non-200 responses")
    raw_rps, raw_p50 = add_ratios(rows)
    targets = compute_targets(rows, raw_rps, raw_p50, meta.get("paired"))
    if (meta.get("paired") or {}).get("failure"):
        problems.append(f"paired rounds: {meta['paired']['failure']}")
    meta["waited_for_quiet_s"] = QuietBudget.waited_s

    print()
    print(
        f"modelfleet pipeline benchmark ({PIPELINE}), {started:%Y-%m-%d %H:%M:%S} UTC; "
        f"{meta['cpu_count']} CPUs; "
        f"{warmup_s:g} s warm-up + {duration_s:g} s window per run; closed loop, c keep-alive connections"
    )
    print(f"text: {TEXT!r} (English: every step runs)")
    print(
        "srv CPU = CPU of the gateway + every worker in the window / requests; lg CPU = load generator's; "
        "busy% = whole machine;\nother = cores busy with anything else (noise); p50/raw = p50 / raw-sum p50 "
        "(c=1 only); x raw = req/s / raw-sum calls/s;\nraw rows: in this process, one input per call, "
        "srv CPU = CPU of this process per call; raw sum = " + " + ".join(RAW_ORDER) + " one after another"
    )
    print()
    print(format_table(rows))
    print()
    print(format_targets(targets, infos))
    if problems:
        print()
        print("PROBLEMS")
        for problem in problems:
            print(f"  {problem}")
        for row in rows:
            for sample in row.error_samples:
                print(f"  {row.workload} {row.variant} c={row.concurrency}: {sample}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"pipeline-{started:%Y%m%dT%H%M%SZ}.json"
    report = {
        "meta": meta,
        "rows": [asdict(r) for r in rows],
        "placements": {p: asdict(i) for p, i in infos.items()},
        "targets": targets,
        "problems": problems,
    }
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print()
    print(f"results: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
