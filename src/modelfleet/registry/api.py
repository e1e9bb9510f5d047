"""The model registry's HTTP API, served by the gateway under /v1/registry.

GET    /v1/registry/models                                   every model: version count, latest, aliases
GET    /v1/registry/models/{m}                               its versions, aliases and rollout
GET    /v1/registry/models/{m}/versions                      its versions, newest first
POST   /v1/registry/models/{m}/versions                      register {"artifact_uri", "trainer",
                                                             "params", "metrics", "dataset"} -> 201
GET    /v1/registry/models/{m}/versions/{v}                  one version
DELETE /v1/registry/models/{m}/versions/{v}                  forget an unused version (and its artifact)
GET    /v1/registry/models/{m}/aliases                       alias -> version
GET    /v1/registry/models/{m}/aliases/{a}                   the version the alias points at
PUT    /v1/registry/models/{m}/aliases/{a}  {"version": "3"} promote
DELETE /v1/registry/models/{m}/aliases/{a}                   remove the alias
POST   /v1/registry/models/{m}/aliases/{a}/rollback          back to the version before the last promotion
GET|PUT|DELETE /v1/registry/models/{m}/rollout               the traffic split: {"routes", "sticky_header",
                                                             "shadow"}
GET    /v1/registry/models/{m}/history[?alias=&limit=]       alias events, newest first

Errors are domain errors (mapped to statuses in :mod:`modelfleet.http`) or HTTPError: a body
that is not JSON is 400, a body of the wrong shape 422, an unknown model, version or alias 404,
a change the registry's state forbids (deleting a version an alias points at) 409.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson

from modelfleet.errors import AliasNotFound, InvalidInput, MalformedRequest, VersionNotFound
from modelfleet.http import HTTPError
from modelfleet.registry.registry import MAX_LIST_LIMIT, Registry, Rollout, is_version_number

log = logging.getLogger("modelfleet.registry")

DeleteArtifact = Callable[[str], object]
"""Removes an artifact from the lake by URI; may be a coroutine function; False means there was none."""

_REGISTER_FIELDS = frozenset({"artifact_uri", "trainer", "params", "metrics", "dataset"})


class RegistryAPI:
    """The registry over HTTP: the gateway hands it the method, the path after /v1/registry and the bytes.

    ``delete_artifact`` (the lake's, when there is one) is called with a deleted version's
    artifact URI once the version is gone from the registry (see :func:`remove_artifact`).
    """

    def __init__(self, registry: Registry, delete_artifact: DeleteArtifact | None = None) -> None:
        self.registry = registry
        self.delete_artifact = delete_artifact

    async def start(self) -> None:
        await self.registry.open()

    async def stop(self) -> None:
        await self.registry.close()

    async def handle(self, method: str, parts: Sequence[str], query: bytes, body: bytes) -> tuple[int, bytes]:
        """Answer one request: ``parts`` is the path after /v1/registry split on "/"; returns (status, JSON).

        Raises HTTPError (unknown route 404, wrong method 405, bad query 400) and the registry's
        domain errors.
        """
        if method == "HEAD":
            method = "GET"
        n = len(parts)
        if n >= 1 and parts[0] == "models":
            if n == 1:
                _allow(method, "GET")
                return 200, _dump({"models": [m.to_dict() for m in await self.registry.models()]})
            model = parts[1]
            if n == 2:
                _allow(method, "GET")
                return 200, _dump(await model_view(self.registry, model))
            section = parts[2]
            if section == "versions" and n in (3, 4):
                return await self._versions(method, model, parts[3] if n == 4 else None, body)
            if section == "aliases" and n in (3, 4):
                return await self._aliases(method, model, parts[3] if n == 4 else None, body)
            if section == "aliases" and n == 5 and parts[4] == "rollback":
                _allow(method, "POST")
                return 200, _dump((await self.registry.rollback(model, parts[3])).to_dict())
            if section == "rollout" and n == 3:
                return await self._rollout(method, model, body)
            if section == "history" and n == 3:
                _allow(method, "GET")
                return 200, _dump(await self._history(model, query))
        raise HTTPError(404, f"no route for {method} /v1/registry/{'/'.join(parts)}")

    async def _versions(self, method: str, model: str, version: str | None, body: bytes) -> tuple[int, bytes]:
        if version is None:
            _allow(method, "GET", "POST")
            if method == "GET":
                return 200, _dump(
                    {"model": model, "versions": [v.to_dict() for v in await self.registry.versions(model)]}
                )
            request = _json_object(body, "a version to register")
            unknown = set(request) - _REGISTER_FIELDS
            if unknown:
                raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
            missing = sorted({"artifact_uri", "trainer"} - set(request))
            if missing:
                raise InvalidInput(f"missing field(s): {', '.join(missing)}")
            registered = await self.registry.register(
                model,
                request["artifact_uri"],
                request["trainer"],
                request.get("params", {}),
                request.get("metrics", {}),
                request.get("dataset"),
            )
            return 201, _dump(registered.to_dict())
        _allow(method, "GET", "DELETE")
        if method == "GET":
            return 200, _dump((await self.registry.get_version(model, version)).to_dict())
        deleted = await self.registry.delete_version(model, version)
        answer: dict[str, Any] = {
            "deleted": deleted.to_dict(),
            "artifact_uri": deleted.artifact_uri,
            "artifact_deleted": False,
            "artifact_error": None,
        }
        if self.delete_artifact is not None:
            removed, error = await remove_artifact(self.delete_artifact, deleted.artifact_uri)
            if error is not None:
                log.warning(
                    "could not delete artifact %s of %s v%s: %s", deleted.artifact_uri, model, version, error
                )
            answer["artifact_deleted"] = removed
            answer["artifact_error"] = error
        return 200, _dump(answer)

    async def _aliases(self, method: str, model: str, alias: str | None, body: bytes) -> tuple[int, bytes]:
        if alias is None:
            _allow(method, "GET")
            return 200, _dump({"model": model, "aliases": await self.registry.aliases(model)})
        _allow(method, "GET", "PUT", "DELETE")
        if method == "GET":
            if is_version_number(alias):
                # resolve() would read a number as a version; under /aliases it can only be an alias.
                await self.registry.aliases(model)
                raise AliasNotFound(f"model {model!r} has no alias {alias!r}: aliases start with a letter")
            version = await self.registry.resolve(model, alias)
            return 200, _dump({"model": model, "alias": alias, "version": version.to_dict()})
        if method == "DELETE":
            return 200, _dump((await self.registry.delete_alias(model, alias)).to_dict())
        request = _json_object(body, 'the version to promote, as {"version": "3"}')
        if set(request) != {"version"}:
            raise InvalidInput('send exactly {"version": "<number>"}, the version the alias should point at')
        version_ref = request["version"]
        if isinstance(version_ref, int) and not isinstance(version_ref, bool):
            version_ref = str(version_ref)
        if not isinstance(version_ref, str) or not is_version_number(version_ref):
            # An alias here would hide which version is meant, so only numbers are taken.
            raise InvalidInput(f'version must be a version number such as "3", not {version_ref!r}')
        return 200, _dump((await self.registry.set_alias(model, alias, version_ref)).to_dict())

    async def _rollout(self, method: str, model: str, body: bytes) -> tuple[int, bytes]:
        _allow(method, "GET", "PUT", "DELETE")
        if method == "PUT":
            spec = _json_object(body, 'a rollout, as {"routes": [{"ref": "production", "weight": 90}, ...]}')
            return 200, _dump(await rollout_view(self.registry, await self.registry.set_rollout(model, spec)))
        if method == "DELETE":
            return 200, _dump({"model": model, "cleared": await self.registry.clear_rollout(model)})
        await self.registry.aliases(model)  # an unknown model is 404 for what it is
        rollout = await self.registry.find_rollout(model)
        if rollout is None:
            raise HTTPError(
                404, f"model {model!r} has no rollout; all its traffic goes to its 'production' alias"
            )
        return 200, _dump(await rollout_view(self.registry, rollout))

    async def _history(self, model: str, query: bytes) -> dict[str, Any]:
        options = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
        unknown = set(options) - {"alias", "limit"}
        if unknown:
            raise HTTPError(
                400, f"unknown query parameter(s): {', '.join(sorted(unknown))}; use alias and limit"
            )
        try:
            limit = int(options.get("limit", "100"))
        except ValueError:
            raise HTTPError(400, f"limit must be a whole number 1..{MAX_LIST_LIMIT}") from None
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise HTTPError(400, f"limit must be a whole number 1..{MAX_LIST_LIMIT}")
        alias = options.get("alias")
        events = await self.registry.history(model, alias, limit)
        return {"model": model, "alias": alias, "events": [event.to_dict() for event in events]}


async def remove_artifact(delete_artifact: DeleteArtifact, uri: str) -> tuple[bool, str | None]:
    """Call the lake's deleter on a deleted version's artifact: (whether one was removed, why it failed).

    Called after the version is gone from the registry, never before: an orphaned artifact only
    wastes space, while a registered version whose artifact is gone could not be served. So a
    failure here is reported, not raised.
    """
    try:
        outcome = delete_artifact(uri)
        if inspect.isawaitable(outcome):
            outcome = await outcome
    except Exception as err:
        return False, f"{type(err).__name__}: {err}"
    return outcome is not False, None


async def model_view(registry: Registry, model: str) -> dict[str, Any]:
    """Everything about one model as JSON: versions (newest first), aliases and rollout.

    Raises VersionNotFound for an unknown model.
    """
    versions = await registry.versions(model)
    rollout = await registry.find_rollout(model)
    return {
        "model": model,
        "latest": versions[0].version if versions else None,
        "aliases": await registry.aliases(model),
        "rollout": await rollout_view(registry, rollout) if rollout is not None else None,
        "versions": [v.to_dict() for v in versions],
    }


async def rollout_view(registry: Registry, rollout: Rollout) -> dict[str, Any]:
    """The rollout as JSON with the version each ref means now, so a reader need not resolve them."""

    async def version_of(ref: str) -> str | None:
        try:
            return (await registry.resolve(rollout.model, ref)).version
        except (VersionNotFound, AliasNotFound):
            return None

    view = rollout.to_dict()
    view["routes"] = [
        {**route.to_dict(), "version": await version_of(route.ref)} for route in rollout.spec.routes
    ]
    shadow = rollout.spec.shadow
    view["shadow_version"] = await version_of(shadow) if shadow is not None else None
    return view


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HTTPError(405, f"method {method} not allowed here; use {' or '.join(allowed)}")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        raise MalformedRequest(f"the body is empty; send {what}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise MalformedRequest(f"malformed JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"the body must be a JSON object: {what}")
    return value


def _dump(value: Any) -> bytes:
    return orjson.dumps(value)
