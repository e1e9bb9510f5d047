"""`modelfleet train`, `modelfleet trainer` and `modelfleet bootstrap`: training from the command line.

    modelfleet train MODEL --dataset NAME[@VERSION] [--trainer tfidf-logreg] [--param C=10]
                     [--test-dataset NAME[@VERSION] | --test-fraction 0.2]
                     [--promote ALIAS [--promote-if METRIC]] [--local] [--no-wait]

Without ``--local`` the job goes to the running fleet's trainer service through the gateway and the
command follows its progress; with ``--local`` it trains in this process (never in a serving worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from modelfleet.errors import ConfigError, ModelfleetError
from modelfleet.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, env=os.environ)


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: use KEY=VALUE, e.g. --param C=10")
        params[key] = yaml.safe_load(raw)
    return params


def _request(args: argparse.Namespace) -> dict[str, Any]:
    params = _params(args.param)
    if args.test_dataset:
        params["test_dataset"] = args.test_dataset
    if args.test_fraction is not None:
        params["test_fraction"] = args.test_fraction
    body: dict[str, Any] = {
        "model": args.model,
        "dataset": args.dataset,
        "trainer": args.trainer,
        "params": params,
    }
    if args.promote:
        body["promote"] = {"alias": args.promote, **({"metric": args.promote_if} if args.promote_if else {})}
    elif args.promote_if:
        raise ConfigError("--promote-if needs --promote ALIAS")
    return body


def _show(job: dict[str, Any]) -> str:
    lines = [
        f"training job {job['id']}: {job['status']} ({job['progress'] * 100:.0f}%) {job.get('message') or ''}"
    ]
    if job.get("version"):
        lines.append(f"  version {job['version']} of {job['model']}")
    for key, value in (job.get("metrics") or {}).items():
        lines.append(f"  {key}: {value}")
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    return "\n".join(lines)


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read())
        except ValueError:
            return err.code, {"error": str(err)}


def cmd_train(args: argparse.Namespace, gateway_url: Callable[[argparse.Namespace], str]) -> int:
    """Train a model version from a lake dataset, evaluate it, register it, and optionally promote it."""
    body = _request(args)
    if args.local:
        return _train_locally(args, body)
    base = gateway_url(args)
    status, answer = _http("POST", f"{base}/v1/training/jobs", body)
    if status != 202:
        print(f"training job refused ({status}): {answer.get('error', answer)}", file=sys.stderr)
        return 2 if 400 <= status < 500 else 1
    print(f"training job {answer['id']} queued", flush=True)
    if args.no_wait:
        return 0
    last = ""
    while True:
        time.sleep(1.0)
        status, job = _http("GET", f"{base}/v1/training/jobs/{answer['id']}")
        if status != 200:
            print(f"cannot read the job ({status}): {job}", file=sys.stderr)
            return 1
        line = f"{job['progress'] * 100:5.1f}% {job.get('message') or ''}"
        if line != last:
            print(line, flush=True)
            last = line
        if job["status"] in ("succeeded", "failed"):
            print(_show(job))
            return 0 if job["status"] == "succeeded" else 1


def _train_locally(args: argparse.Namespace, body: dict[str, Any]) -> int:
    from modelfleet.lake import Lake
    from modelfleet.registry import make_registry
    from modelfleet.training.api import check_datasets, check_trainer
    from modelfleet.training.service import execute_job

    settings = _settings(args)
    lake = Lake.from_settings(settings)
    check_trainer(body["trainer"])
    body["dataset"], test_dataset = check_datasets(lake, body["dataset"], body["params"].get("test_dataset"))
    if test_dataset is not None:
        body["params"]["test_dataset"] = test_dataset
    promote = body.get("promote") or {}

    async def run() -> dict[str, Any]:
        registry = make_registry(settings.store_url)
        await registry.open()
        try:
            job = await registry.create_training_job(
                body["model"], body["dataset"], body["trainer"], body["params"],
                promote_alias=promote.get("alias"), promote_metric=promote.get("metric"),
            )  # fmt: skip
            job = await registry.update_training_job(job.id, status="running", message="training locally")
            print(f"training job {job.id}: training {body['model']} locally", flush=True)
            finished = await execute_job(
                job, registry, lake, seed=settings.training.seed, data_dir=settings.data_dir
            )
            return finished.to_dict()
        finally:
            await registry.close()

    job = asyncio.run(run())
    print(_show(job))
    return 0 if job["status"] == "succeeded" else 1


def cmd_trainer(args: argparse.Namespace) -> int:
    """Run one trainer replica (the supervisor starts these for services of kind trainer)."""
    from modelfleet.training.main import serve_trainer

    settings = _settings(args)
    serve_trainer(settings, args.service, args.port)
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Train the registry-backed models that have no version yet (modelfleet up runs this first)."""
    from modelfleet.training.bootstrap import bootstrap_models

    settings = _settings(args)
    try:
        base_dir = Path(args.config).resolve().parent
        asyncio.run(bootstrap_models(settings, say=lambda line: print(line, flush=True), base_dir=base_dir))
    except ModelfleetError as err:
        print(f"modelfleet bootstrap: {err}", file=sys.stderr)
        return 2
    return 0


def add_train_commands(
    sub: Any, config_parent: argparse.ArgumentParser, gateway_url: Callable[[argparse.Namespace], str]
) -> None:
    train = sub.add_parser(
        "train", parents=[config_parent], help="train a model version from a lake dataset",
        description=cmd_train.__doc__,
    )  # fmt: skip
    train.add_argument("model", help="the registry name of the model, e.g. intent")
    train.add_argument("--dataset", required=True, help="lake dataset NAME[@VERSION] to train on")
    train.add_argument("--trainer", default="tfidf-logreg", help="tfidf-logreg (default) or minilm-logreg")
    train.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="trainer parameter")
    held_out = train.add_mutually_exclusive_group()
    held_out.add_argument("--test-dataset", help="held-out dataset NAME[@VERSION] to evaluate on")
    held_out.add_argument("--test-fraction", type=float, help="share of each class held out (default 0.2)")
    train.add_argument("--promote", metavar="ALIAS", help="move ALIAS (e.g. production) to the new version")
    train.add_argument("--promote-if", metavar="METRIC", help="only if METRIC beats the alias's version")
    train.add_argument("--local", action="store_true", help="train in this process, not on the fleet")
    train.add_argument("--no-wait", action="store_true", help="queue the job and return")
    train.add_argument("--url", help="gateway URL (default: the running fleet's)")
    train.set_defaults(func=lambda args: cmd_train(args, gateway_url))
    trainer = sub.add_parser("trainer", parents=[config_parent], help=cmd_trainer.__doc__)
    trainer.add_argument("--service", required=True)
    trainer.add_argument("--port", type=int, required=True)
    trainer.set_defaults(func=cmd_trainer)
    bootstrap = sub.add_parser("bootstrap", parents=[config_parent], help=cmd_bootstrap.__doc__)
    bootstrap.set_defaults(func=cmd_bootstrap)
