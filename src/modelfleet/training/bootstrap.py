"""First start of a fleet: train the registry-backed models that have no version at their alias yet.

A model in fleet.yaml with ``registry: {alias: production, bootstrap: {...}}`` is served from the
registry. When the alias points nowhere (a new machine), its bootstrap dataset files are ingested
into the lake and a training job is run here and promoted, so the fleet's workers find a version
when they start. The supervisor runs this in a process of its own (``modelfleet bootstrap``),
never in a serving worker. Later starts find the version and do nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from modelfleet.errors import ConfigError
from modelfleet.registry import AliasNotFound, Registry, VersionNotFound, make_registry
from modelfleet.settings import BootstrapSettings, Settings
from modelfleet.training.service import execute_job

log = logging.getLogger("modelfleet.training")


def registry_name(settings: Settings, model: str) -> str:
    """The name a fleet model has in the registry (its own name unless ``registry.name`` says otherwise)."""
    source = settings.models[model].registry
    return (source.name if source is not None and source.name else None) or model


def _ingest(lake: object, path: str, dataset: str, spec: BootstrapSettings) -> str:
    from modelfleet.lake import Lake

    assert isinstance(lake, Lake)
    found = lake.ingest(
        Path(path),
        dataset,
        text_column=spec.text_column,
        label_column=spec.label_column,
        header=spec.columns is None,
        column_names=spec.columns,
    )
    return found.ref


def _resolve(model: str, field: str, path: str, base_dir: Path | None) -> str:
    resolved = Path(path) if Path(path).is_absolute() or base_dir is None else base_dir / path
    if not resolved.is_file():
        raise ConfigError(f"models.{model}.registry.bootstrap.{field}: no such file: {resolved}")
    return str(resolved)


async def _missing(registry: Registry, name: str, alias: str) -> bool:
    try:
        await registry.resolve(name, alias)
    except (AliasNotFound, VersionNotFound):
        return True
    return False


async def bootstrap_models(
    settings: Settings, say: Callable[[str], None] = print, base_dir: Path | None = None
) -> list[str]:
    """Train and promote every registry-backed model whose alias is empty; returns the models trained.

    Relative dataset paths are read from ``base_dir`` (the folder of fleet.yaml). Raises
    ConfigError naming the model when a dataset is missing or its training fails.
    """
    import asyncio

    from modelfleet.lake import Lake

    wanted = [
        (model, spec.registry)
        for model, spec in settings.models.items()
        if spec.registry is not None and spec.registry.bootstrap is not None
    ]
    if not wanted:
        return []
    registry = make_registry(settings.store_url)
    await registry.open()
    trained: list[str] = []
    try:
        lake = Lake.from_settings(settings)
        for model, source in wanted:
            name = registry_name(settings, model)
            if not await _missing(registry, name, source.alias):
                continue
            spec = source.bootstrap
            assert spec is not None
            spec = spec.model_copy(
                update={
                    "dataset": _resolve(model, "dataset", spec.dataset, base_dir),
                    "test_dataset": spec.test_dataset
                    and _resolve(model, "test_dataset", spec.test_dataset, base_dir),
                }
            )
            say(f"bootstrap: {name} has no {source.alias} version; training {spec.trainer} on {spec.dataset}")
            dataset = await asyncio.to_thread(_ingest, lake, spec.dataset, f"{name}-train", spec)
            params = dict(spec.params)
            if spec.test_dataset:
                params["test_dataset"] = await asyncio.to_thread(
                    _ingest, lake, spec.test_dataset, f"{name}-test", spec
                )
            else:
                params["test_fraction"] = spec.test_fraction
            job = await registry.create_training_job(
                name, dataset, spec.trainer, params, promote_alias=source.alias
            )
            job = await registry.update_training_job(job.id, status="running", message="bootstrap")
            finished = await execute_job(
                job, registry, lake, seed=settings.training.seed, data_dir=settings.data_dir
            )
            if finished.status != "succeeded":
                raise ConfigError(f"models.{model}: bootstrap training failed: {finished.error}")
            metrics = ", ".join(
                f"{k} {v:.4f}" for k, v in (finished.metrics or {}).items() if k in ("accuracy", "macro_f1")
            )
            say(f"bootstrap: {name} version {finished.version} is {source.alias} ({metrics})")
            trained.append(name)
    finally:
        await registry.close()
    return trained
