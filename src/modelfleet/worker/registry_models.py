"""Registry-backed models in a worker: serve the version an alias points at, and follow it when it moves.

A model configured with ``registry:`` is built from the artifact of the version its alias names
(plus every version its rollout sends traffic or shadow copies to, so the gateway can route to
them). The follower polls the registry's state token; when an alias or rollout changes it loads
the newly wanted versions beside the serving ones, on a thread, then switches the model's
unversioned route to the alias's version in one assignment, and only then retires versions no
longer wanted, once their in-flight calls have finished. No request sees a half-loaded model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.models.catalog import build_runner
from modelfleet.models.runner import ModelRunner
from modelfleet.registry import AliasNotFound, ModelVersion, Registry, VersionNotFound
from modelfleet.settings import ModelSettings, Settings

log = logging.getLogger("modelfleet.worker")

RETIRE_WAIT_S = 60.0


@dataclass(frozen=True)
class FollowedModel:
    """One registry-backed model of this worker: its fleet name, registry name, alias and settings."""

    name: str
    registry_name: str
    alias: str
    spec: ModelSettings


class RegistryModels:
    """Keeps the registry-backed models of one worker on the versions the registry names."""

    def __init__(
        self,
        settings: Settings,
        models: list[str],
        registry: Registry,
        lake: Any,
        runners: dict[str, ModelRunner],
        versions: dict[str, dict[str, ModelRunner]],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.lake = lake
        self.runners = runners
        self.versions = versions
        self.followed: list[FollowedModel] = []
        for model in models:
            spec = settings.models[model]
            if spec.registry is not None:
                self.followed.append(
                    FollowedModel(model, spec.registry.name or model, spec.registry.alias, spec)
                )
        self.cache_dir = Path(settings.data_dir) / "artifact-cache"
        self.switches = 0
        self._token: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self.followed)

    async def _wanted(self, model: FollowedModel) -> tuple[ModelVersion, dict[str, ModelVersion]]:
        """The alias's version, and every version the model should have loaded (alias and rollout)."""
        try:
            primary = await self.registry.resolve(model.registry_name, model.alias)
        except (AliasNotFound, VersionNotFound):
            raise ConfigError(
                f"models.{model.name}: the registry has no version of {model.registry_name!r} at alias "
                f"{model.alias!r}; train one (modelfleet train {model.registry_name} --dataset ... "
                f"--promote {model.alias}) or give the model a registry.bootstrap section"
            ) from None
        wanted = {primary.version: primary}
        rollout = await self.registry.find_rollout(model.registry_name)
        if rollout is not None:
            for ref in rollout.spec.refs():
                try:
                    found = await self.registry.resolve(model.registry_name, ref)
                except (AliasNotFound, VersionNotFound):
                    log.error("model %s: rollout ref %r names no version; not loaded", model.name, ref)
                    continue
                wanted[found.version] = found
        return primary, wanted

    def _build(self, model: FollowedModel, version: ModelVersion) -> ModelRunner:
        """Fetch the version's artifact and build and load its runner (blocking: runs on a thread)."""
        started = time.perf_counter()
        folder = self.lake.get_artifact(version.artifact_uri, self.cache_dir)
        spec = model.spec.model_copy(update={"params": {**model.spec.params, "artifact_dir": str(folder)}})
        runner = build_runner(model.name, spec, self.settings.data_dir, self.settings.worker.idle_inline_ms)
        runner.version = version.version
        runner.load()
        log.info(
            "model %s: loaded version %s in %.2fs", model.name, version.version, time.perf_counter() - started
        )
        return runner

    async def load_initial(self) -> None:
        """Build every followed model's wanted versions before the worker serves; raises ConfigError."""
        self._token = await self.registry.state_token()
        for model in self.followed:
            primary, wanted = await self._wanted(model)
            loaded = {v: await asyncio.to_thread(self._build, model, mv) for v, mv in wanted.items()}
            self.versions[model.name] = loaded
            self.runners[model.name] = loaded[primary.version]

    async def start(self, poll_s: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(poll_s))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._retiring):
            task.cancel()

    async def _follow(self, poll_s: float) -> None:
        while True:
            await asyncio.sleep(poll_s)
            try:
                token = await self.registry.state_token()
                if token == self._token:
                    continue
                for model in self.followed:
                    await self.refresh(model)
                self._token = token
            except asyncio.CancelledError:
                raise
            except Exception:
                # The serving versions stay; the next poll tries again.
                log.exception("following the registry failed; serving the loaded versions meanwhile")

    async def refresh(self, model: FollowedModel) -> None:
        """Load what the registry now wants for ``model``, switch its alias route, retire the rest."""
        primary, wanted = await self._wanted(model)
        loaded = self.versions.setdefault(model.name, {})
        fresh = dict(loaded)
        for version, found in wanted.items():
            if version not in fresh:
                fresh[version] = await asyncio.to_thread(self._build, model, found)
        for version in [v for v in fresh if v not in wanted]:
            del fresh[version]
        previous = self.runners.get(model.name)
        # The switch: new requests see the new mapping from here on; calls under way keep their runner.
        self.versions[model.name] = fresh
        self.runners[model.name] = fresh[primary.version]
        if previous is not None and previous.version != primary.version:
            self.switches += 1
            log.info("model %s: %s now serves version %s (was %s)", model.name, model.alias,
                     primary.version, previous.version)  # fmt: skip
        for version, runner in loaded.items():
            if version not in fresh:
                task = asyncio.get_running_loop().create_task(self._retire(runner))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def _retire(self, runner: ModelRunner) -> None:
        deadline = time.monotonic() + RETIRE_WAIT_S
        # Polled: only retiring versions wait here, and a runner has no idle signal to wait on.
        while runner.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await runner.close()
        log.info("model %s: version %s retired", runner.name, runner.version)
