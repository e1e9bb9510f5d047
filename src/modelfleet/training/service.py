"""Training jobs end to end: dataset from the lake, fit, held-out evaluation, artifact, registry version.

One function, :func:`run_training`, does the whole job; the trainer service (training/main.py),
``modelfleet train --local`` and the first-start bootstrap of built-in models all call it, so a
version means the same thing however it was made. It never runs in a serving worker.

A job's ``params`` hold the trainer's hyperparameters plus these keys of our own:

- ``test_dataset``: ``name[@version]`` of a held-out split in the lake (e.g. Banking77's test set);
- ``test_fraction`` (default 0.2) and ``seed``: without a test dataset, that share of every class is
  held out by a seeded stratified split;
- ``text_column`` / ``label_column``: override the columns the dataset was ingested with.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.errors import DatasetRejected, InvalidInput
from modelfleet.registry import ModelVersion, Registry, TrainingJob, VersionNotFound
from modelfleet.registry.errors import AliasNotFound

log = logging.getLogger("modelfleet.training")

SERVICE_KEYS = frozenset({"test_dataset", "test_fraction", "seed", "text_column", "label_column"})
"""Keys of a job's params that the training service reads; every other key goes to the trainer."""

ProgressSink = Callable[[float, str], None]


@dataclass(frozen=True)
class TrainingOutcome:
    """What a finished training job made: the registered version, its metrics, and whether it was promoted."""

    version: ModelVersion
    metrics: dict[str, float]
    promoted: bool
    reason: str


@dataclass(frozen=True)
class PreparedData:
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    dataset_ref: str
    test_ref: str | None


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the service's own options, the trainer's hyperparameters)."""
    own = {k: v for k, v in params.items() if k in SERVICE_KEYS}
    return own, {k: v for k, v in params.items() if k not in SERVICE_KEYS}


def _column(table: Any, name: str, role: str, ref: str) -> list[str]:
    if name not in table.column_names:
        raise DatasetRejected(
            f"dataset {ref}: {role} column {name!r} not found (columns: {', '.join(table.column_names)})"
        )
    values = table.column(name).to_pylist()
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if empty:
        rows = ", ".join(str(i + 1) for i in empty[:5])
        raise DatasetRejected(
            f"dataset {ref}: {role} column {name!r} has {len(empty)} empty value(s) (rows {rows})"
        )
    return [str(v) for v in values]


def prepare_data(lake: Any, dataset: str, options: Mapping[str, Any], default_seed: int) -> PreparedData:
    """Read the job's dataset (and test dataset) from the lake into texts and labels, split if needed.

    Raises DatasetNotFound, DatasetRejected (a column missing or empty), InvalidInput (bad options).
    """
    from modelfleet.lake import parse_ref
    from modelfleet.training.evaluation import stratified_split

    def read(ref: str) -> tuple[list[str], list[str], str]:
        name, version = parse_ref(ref)
        found = lake.get(name, version)
        table = lake.read_table(name, found.version)
        text_column = options.get("text_column") or found.text_column or "text"
        label_column = options.get("label_column") or found.label_column or "label"
        texts = _column(table, str(text_column), "text", found.ref)
        labels = _column(table, str(label_column), "label", found.ref)
        return texts, labels, found.ref

    texts, labels, dataset_ref = read(dataset)
    test_dataset = options.get("test_dataset")
    if test_dataset:
        test_texts, test_labels, test_ref = read(str(test_dataset))
        return PreparedData(texts, labels, test_texts, test_labels, dataset_ref, test_ref)
    fraction = options.get("test_fraction", 0.2)
    seed = options.get("seed", default_seed)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise InvalidInput(f"params.test_fraction must be a number between 0 and 1, not {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"params.seed must be a whole number, not {seed!r}")
    split = stratified_split(texts, labels, float(fraction), seed)
    if not split.test_texts:
        raise DatasetRejected(f"dataset {dataset_ref}: too small to hold out a test split")
    return PreparedData(
        split.train_texts, split.train_labels, split.test_texts, split.test_labels, dataset_ref, None
    )


def fit_and_save(
    trainer_name: str,
    trainer_params: Mapping[str, Any],
    data: PreparedData,
    artifact_dir: Path,
    progress: ProgressSink,
    data_dir: str = ".modelfleet",
) -> dict[str, float]:
    """Fit, evaluate on the held-out part, and write the artifact folder; returns the metrics.

    Blocking and CPU-heavy: call it on a thread (or in a process of its own).
    """
    from modelfleet.training import evaluate, get_trainer, save_classifier

    trainer = get_trainer(trainer_name, data_dir=data_dir)
    started = time.perf_counter()
    classifier = trainer.fit(
        data.train_texts,
        data.train_labels,
        trainer_params,
        lambda fraction, message: progress(0.05 + 0.8 * fraction, message),
    )
    fit_s = time.perf_counter() - started
    progress(0.86, f"evaluating on {len(data.test_texts)} held-out examples")
    evaluation = evaluate(classifier, data.test_texts, data.test_labels)
    metrics = {
        "accuracy": float(evaluation.accuracy),
        "macro_f1": float(evaluation.macro_f1),
        "test_examples": float(len(data.test_texts)),
        "train_examples": float(len(data.train_texts)),
        "fit_seconds": round(fit_s, 3),
    }
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    progress(0.92, f"accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f}; saving")
    save_classifier(classifier, artifact_dir, metrics={**metrics, "evaluation": evaluation.as_dict()})
    return metrics


async def decide_promotion(
    registry: Registry, model: str, alias: str | None, metric: str | None, metrics: Mapping[str, float]
) -> tuple[bool, str]:
    """Whether the new version should take ``alias``: always without a metric, else only when it beats
    the alias's current version on ``metric`` (or the alias points nowhere yet)."""
    if alias is None:
        return False, "no promotion asked for"
    if metric is None:
        return True, f"promoted to {alias}"
    if metric not in metrics:
        known = ", ".join(sorted(metrics))
        return False, f"not promoted: the evaluation has no metric {metric!r} (has: {known})"
    try:
        current = await registry.resolve(model, alias)
    except (AliasNotFound, VersionNotFound):
        return True, f"promoted to {alias}: it had no version yet"
    theirs = current.metrics.get(metric)
    ours = metrics[metric]
    if theirs is None:
        return True, f"promoted to {alias}: version {current.version} has no {metric}"
    if ours > theirs:
        return (
            True,
            f"promoted to {alias}: {metric} {ours:.4f} beats version {current.version}'s {theirs:.4f}",
        )
    return False, f"not promoted: {metric} {ours:.4f} does not beat version {current.version}'s {theirs:.4f}"


async def run_training(
    job: TrainingJob,
    registry: Registry,
    lake: Any,
    *,
    seed: int = 42,
    data_dir: str = ".modelfleet",
    progress: Callable[[float, str], Coroutine[Any, Any, None]] | None = None,
    run_blocking: Callable[..., Awaitable[Any]] | None = None,
) -> TrainingOutcome:
    """Train ``job`` from its dataset, register the version with its metrics, promote it if asked and earned.

    ``run_blocking(fn, *args)`` runs CPU-heavy steps (default: a thread). Raises what the steps raise;
    the caller records the error on the job. Production is untouched unless the version is promoted.
    """
    import asyncio

    blocking = run_blocking or asyncio.to_thread
    loop = asyncio.get_running_loop()
    pending: list[Any] = []

    def report(fraction: float, message: str) -> None:
        # Called from the training thread: hand the update to the event loop, never block on it.
        if progress is not None:
            pending.append(asyncio.run_coroutine_threadsafe(progress(min(fraction, 0.99), message), loop))

    options, trainer_params = split_params(job.params)
    report(0.01, f"reading dataset {job.dataset}")
    data = await blocking(prepare_data, lake, job.dataset, options, seed)
    with tempfile.TemporaryDirectory(prefix="modelfleet-train-") as tmp:
        artifact_dir = Path(tmp) / "artifact"
        metrics = await blocking(
            fit_and_save, job.trainer, trainer_params, data, artifact_dir, report, data_dir
        )
        report(0.95, "storing the artifact")
        artifact_key = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        uri = await blocking(lake.put_artifact, job.model, artifact_key, artifact_dir)
    params = {**trainer_params, **{k: v for k, v in options.items() if k != "test_dataset"}}
    if data.test_ref:
        params["test_dataset"] = data.test_ref
    version = await registry.register(job.model, uri, job.trainer, params, metrics, dataset=data.dataset_ref)
    promoted, reason = await decide_promotion(
        registry, job.model, job.promote_alias, job.promote_metric, metrics
    )
    if promoted and job.promote_alias is not None:
        await registry.set_alias(job.model, job.promote_alias, version.version)
    for future in pending:
        future.cancel()
    log.info("trained %s version %s: %s; %s", job.model, version.version, metrics, reason)
    return TrainingOutcome(version, metrics, promoted, reason)


async def execute_job(
    job: TrainingJob, registry: Registry, lake: Any, seed: int = 42, data_dir: str = ".modelfleet"
) -> TrainingJob:
    """Run a claimed job and record how it ended on the job itself (progress, version, metrics or error)."""
    last = [0.0]

    async def progress(fraction: float, message: str) -> None:
        if fraction - last[0] < 0.01 and fraction < 0.99:
            return
        last[0] = fraction
        try:
            await registry.update_training_job(job.id, progress=fraction, message=message)
        except Exception:
            log.debug("progress update for training job %s failed", job.id, exc_info=True)

    try:
        outcome = await run_training(job, registry, lake, seed=seed, data_dir=data_dir, progress=progress)
    except Exception as err:
        error = (
            f"{type(err).__name__}: {err}"
            if not isinstance(err, InvalidInput | DatasetRejected)
            else str(err)
        )
        log.warning("training job %s (%s) failed: %s", job.id, job.model, error)
        return await registry.update_training_job(job.id, status="failed", error=error, message="failed")
    return await registry.update_training_job(
        job.id,
        status="succeeded",
        version=outcome.version.version,
        metrics=outcome.metrics,
        message=f"version {outcome.version.version}: {outcome.reason}",
    )
