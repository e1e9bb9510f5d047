"""Rollouts at the gateway: which version of a model answers a request, and the shadow that listens in.

The registry keeps each model's rollout as refs (aliases or version numbers) with weights. The
:class:`RolloutRouter` resolves those refs to concrete versions whenever the registry's state token
changes (polled every ``rollout_poll_s``), so routing a request is a dictionary look-up plus one
random number or one hash; it never waits on the database.

A request is routed by weight. When the rollout names a ``sticky_header`` and the request carries
it, a stable hash of the header's value picks the version, so one user keeps seeing one version for
as long as the split stays the same; without the header, the pick is random. A shadow version is
sent a copy of a routed request only after the client has its answer. The shadow's answer is
compared with the client's and counted, never returned.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from modelfleet.errors import AliasNotFound, VersionNotFound
from modelfleet.gateway.client import UpstreamResponse
from modelfleet.metrics import GatewayMetrics
from modelfleet.registry.registry import Registry, Rollout, RolloutSpec
from modelfleet.types import BINARY_HEADER_LENGTH

log = logging.getLogger("modelfleet.gateway.rollouts")

BUCKETS = 10_000
"""Traffic is cut into this many buckets; a weight of 1% is 100 of them."""

VERSION_HEADER = b"x-model-version"
"""Response header naming the version that answered a routed request."""

ShadowOutcome = Literal["agree", "differ", "error", "dropped"]
SHADOW_OUTCOMES: tuple[ShadowOutcome, ...] = ("agree", "differ", "error", "dropped")

ShadowCall = Callable[[], Awaitable[UpstreamResponse]]
"""Sends the copy to the shadow version: returns its answer."""

# What an answer says about who answered rather than what: left out when answers are compared.
_IDENTITY_KEYS = frozenset({"model", "version", "model_name", "model_version", "id"})


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """A route of a rollout as last resolved: ``version`` is None (and ``error`` says why) when
    its ref did not resolve, and such a route gets no traffic."""

    ref: str
    weight: int
    version: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "weight": self.weight, "version": self.version, "error": self.error}


@dataclass(frozen=True, slots=True)
class ActiveRollout:
    """One model's rollout with its refs resolved to versions: what routing reads.

    ``bounds`` cut the BUCKETS buckets in proportion to the weights of the routes that resolved
    (weights are renormalised when a route is skipped); ``versions[i]`` owns the buckets below
    ``bounds[i]`` and at or above ``bounds[i - 1]``.
    """

    model: str
    spec: RolloutSpec
    updated_at: datetime
    routes: tuple[ResolvedRoute, ...]
    shadow: ResolvedRoute | None
    versions: tuple[str, ...]
    bounds: tuple[int, ...]
    sticky_header: bytes | None

    @classmethod
    def build(
        cls, rollout: Rollout, routes: Iterable[ResolvedRoute], shadow: ResolvedRoute | None
    ) -> ActiveRollout:
        routes = tuple(routes)
        live = [route for route in routes if route.version is not None and route.weight > 0]
        total = sum(route.weight for route in live)
        bounds: list[int] = []
        running = 0
        for route in live:
            running += route.weight
            bounds.append(running * BUCKETS // total)
        sticky = rollout.spec.sticky_header
        return cls(
            model=rollout.model,
            spec=rollout.spec,
            updated_at=rollout.updated_at,
            routes=routes,
            shadow=shadow,
            versions=tuple(route.version for route in live if route.version is not None),
            bounds=tuple(bounds),
            sticky_header=sticky.lower().encode("latin-1") if sticky is not None else None,
        )

    @property
    def routable(self) -> bool:
        """Whether a route resolved with a weight above zero (if none did, it is served as without one)."""
        return bool(self.versions)

    @property
    def shadow_version(self) -> str | None:
        return self.shadow.version if self.shadow is not None else None

    def version_at(self, bucket: int) -> str:
        """The version owning ``bucket`` (0 <= bucket < BUCKETS); only for a routable rollout."""
        return self.versions[bisect.bisect_right(self.bounds, bucket)]

    def bucket_of(self, headers: Iterable[tuple[bytes, bytes]], rng: random.Random) -> int:
        """The request's bucket: a hash of the sticky header's value when present, else random."""
        if self.sticky_header is not None:
            for name, value in headers:
                if name == self.sticky_header:
                    return sticky_bucket(self.model, bytes(value))
        return rng.randrange(BUCKETS)


def sticky_bucket(model: str, key: bytes) -> int:
    """A stable bucket for a sticky key: the same in every gateway process and across restarts.

    The model's name is mixed in so one user is not in the same slice of every model's rollout.
    """
    digest = hashlib.blake2b(model.encode() + b"\x00" + key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(slots=True)
class VersionCounts:
    """Routed requests a version answered since the gateway started; ``fallbacks`` are requests
    routed to it that its replica could not take (version not loaded), answered by the alias's
    version instead."""

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    fallbacks: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "fallbacks": self.fallbacks,
        }


@dataclass(slots=True)
class _ModelCounts:
    versions: dict[str, VersionCounts] = field(default_factory=dict)
    shadow: dict[str, dict[str, int]] = field(default_factory=dict)


def split_binary(body: bytes, header_length: bytes | None) -> tuple[bytes, bytes]:
    """An answer's JSON and the binary tensor data after it (the OIP binary extension; empty when
    the answer is all JSON)."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        return body, b""
    return body[:length], body[length:]


def compare_answers(
    primary: bytes,
    shadow_status: int,
    shadow: bytes,
    primary_header_length: bytes | None = None,
    shadow_header_length: bytes | None = None,
) -> ShadowOutcome:
    """How a shadow's answer relates to the primary's: the same ``outputs`` (or ``output``) JSON,
    and the same binary tensor data if any, is "agree", other answers "differ"; a non-2xx status
    or a body that is not JSON is "error"."""
    if not 200 <= shadow_status < 300:
        return "error"
    expected_json, expected_tail = split_binary(primary, primary_header_length)
    actual_json, actual_tail = split_binary(shadow, shadow_header_length)
    try:
        expected, actual = orjson.loads(expected_json), orjson.loads(actual_json)
    except orjson.JSONDecodeError:
        return "error"
    same = _comparable(expected) == _comparable(actual) and expected_tail == actual_tail
    return "agree" if same else "differ"


def _comparable(answer: Any) -> Any:
    if isinstance(answer, dict):
        for key in ("outputs", "output"):
            if key in answer:
                return {key: answer[key]}
        return {key: value for key, value in answer.items() if key not in _IDENTITY_KEYS}
    return answer


def version_target(api: str, model: str, version: str) -> bytes:
    """The worker path serving one version: /v1/models/{m}/versions/{v}/predict or /v2/.../infer."""
    verb = "predict" if api == "v1" else "infer"
    return f"/{api}/models/{model}/versions/{version}/{verb}".encode()


def answering_version(answer_or_body: UpstreamResponse | bytes) -> str | None:
    """The version a worker's answer says it came from ("version" in /v1, "model_version" in /v2)."""
    if isinstance(answer_or_body, UpstreamResponse):
        body, _ = split_binary(answer_or_body.body, answer_or_body.header(BINARY_HEADER_LENGTH))
    else:
        body = answer_or_body
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(answer, dict):
        for key in ("version", "model_version"):
            value = answer.get(key)
            if isinstance(value, str) and value:
                return value
    return None


class RolloutRouter:
    """Routes predict calls of models under a rollout to versions, counts them, and runs shadows.

    ``registry`` must be open before :meth:`start`; the router does not close it. ``poll_s`` is
    how often the registry's state token is read; ``shadow_max_in_flight`` bounds the shadow
    calls running at once (a copy over the bound is dropped and counted as "dropped").
    ``metrics``, when given, gets the per-version and shadow counters too.
    """

    def __init__(
        self,
        registry: Registry,
        metrics: GatewayMetrics | None = None,
        *,
        poll_s: float = 1.0,
        shadow_max_in_flight: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        if shadow_max_in_flight < 1:
            raise ValueError(f"shadow_max_in_flight must be at least 1, got {shadow_max_in_flight}")
        self.registry = registry
        self.metrics = metrics
        self.poll_s = poll_s
        self.shadow_max_in_flight = shadow_max_in_flight
        # Not for secrets: a traffic split only needs to be uniform.
        self._rng = rng or random.Random()
        self._rollouts: dict[str, ActiveRollout] = {}
        self._token: str | None = None
        self._counts: dict[str, _ModelCounts] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._poll_task: asyncio.Task[None] | None = None
        self._warned_fallback: set[tuple[str, str]] = set()
        self.refreshed_at: datetime | None = None
        self.refresh_error: str | None = None

    async def start(self) -> None:
        """Read the rollouts once (a failure is logged, not raised) and start polling for changes."""
        await self._refresh_logged()
        self._poll_task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        """Stop polling and cancel the shadow calls still running; idempotent."""
        tasks = [*self._shadows, *([self._poll_task] if self._poll_task is not None else [])]
        self._poll_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            if message != self.refresh_error:
                log.warning("cannot read rollouts from the registry (keeping the last ones): %s", message)
            self.refresh_error = message
            return
        if self.refresh_error is not None:
            log.info("reading rollouts from the registry works again")
            self.refresh_error = None

    async def refresh(self) -> bool:
        """Reread every rollout and resolve its refs if the registry's state token changed.

        Returns whether anything was reread. A ref that does not resolve is logged and its route
        skipped; a model none of whose routes resolve is served as if it had no rollout. Raises
        StoreError when the registry cannot be read, leaving the current routes in place.
        """
        # The token is read first: a change landing while the rollouts are read moves it again,
        # so the next poll rereads.
        token = await self.registry.state_token()
        if token == self._token:
            return False
        rollouts: dict[str, ActiveRollout] = {}
        for rollout in await self.registry.rollouts():
            routes = [await self._resolve(rollout.model, r.ref, r.weight) for r in rollout.spec.routes]
            shadow = rollout.spec.shadow
            resolved_shadow = await self._resolve(rollout.model, shadow, 0) if shadow is not None else None
            active = ActiveRollout.build(rollout, routes, resolved_shadow)
            if not active.routable:
                log.error(
                    "rollout of model %r has no route that resolves; serving it as without a rollout",
                    rollout.model,
                )
            rollouts[rollout.model] = active
        self._rollouts = rollouts
        self._token = token
        self._warned_fallback.clear()
        self.refreshed_at = datetime.now(UTC)
        return True

    async def _resolve(self, model: str, ref: str, weight: int) -> ResolvedRoute:
        try:
            version = await self.registry.resolve(model, ref)
        except (VersionNotFound, AliasNotFound) as err:
            log.error("rollout of model %r: ref %r skipped: %s", model, ref, err)
            return ResolvedRoute(ref, weight, None, str(err))
        return ResolvedRoute(ref, weight, version.version)

    def find(self, model: str) -> ActiveRollout | None:
        """The model's rollout when it routes traffic, else None (no rollout, or no route resolves)."""
        rollout = self._rollouts.get(model)
        return rollout if rollout is not None and rollout.routable else None

    def choose(self, model: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> str | None:
        """The version this request of ``model`` goes to, or None when the model has no routing rollout.

        ``headers`` are the request's (lower-case names, as ASGI gives them).
        """
        rollout = self.find(model)
        return self.route(rollout, headers) if rollout is not None else None

    def route(self, rollout: ActiveRollout, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """:meth:`choose` for a rollout already found."""
        return rollout.version_at(rollout.bucket_of(headers, self._rng))

    def record(self, model: str, version: str, status: int) -> None:
        """Count one routed request answered with ``status`` (5xx counts as an error, 4xx apart)."""
        counts = self._version_counts(model, version)
        counts.requests += 1
        if status >= 500:
            counts.errors += 1
        elif status >= 400:
            counts.client_errors += 1
        if self.metrics is not None:
            self.metrics.observe_version(model, version, status)

    def record_fallback(self, model: str, version: str) -> None:
        """Count a request routed to ``version`` that its replica could not serve (not loaded there)."""
        self._version_counts(model, version).fallbacks += 1
        if (model, version) not in self._warned_fallback:
            self._warned_fallback.add((model, version))
            log.warning(
                "model %r version %s is not loaded by a replica its rollout sent traffic to; "
                "the alias's version answered instead",
                model,
                version,
            )

    def _version_counts(self, model: str, version: str) -> VersionCounts:
        per_model = self._counts.setdefault(model, _ModelCounts())
        counts = per_model.versions.get(version)
        if counts is None:
            counts = per_model.versions[version] = VersionCounts()
        return counts

    def _count_shadow(self, model: str, version: str, outcome: ShadowOutcome) -> None:
        outcomes = self._counts.setdefault(model, _ModelCounts()).shadow.setdefault(
            version, dict.fromkeys(SHADOW_OUTCOMES, 0)
        )
        outcomes[outcome] += 1
        if self.metrics is not None:
            self.metrics.observe_shadow(model, version, outcome)

    @property
    def shadows_in_flight(self) -> int:
        return len(self._shadows)

    async def wait_for_shadows(self) -> None:
        """Wait until the shadow copies running now have finished and been counted."""
        await asyncio.gather(*self._shadows, return_exceptions=True)

    def mirror(
        self,
        model: str,
        shadow_version: str,
        primary_version: str,
        primary: UpstreamResponse,
        call: ShadowCall,
        rid: bytes,
    ) -> None:
        """Send a copy to the shadow in the background and compare its answer with ``primary``.

        Call it only after the primary answer was sent: nothing here delays or changes it. Over
        ``shadow_max_in_flight`` copies at once, the copy is dropped (and counted as "dropped").
        """
        if len(self._shadows) >= self.shadow_max_in_flight:
            self._count_shadow(model, shadow_version, "dropped")
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow(model, shadow_version, primary_version, primary, call, rid)
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        model: str,
        version: str,
        primary_version: str,
        primary: UpstreamResponse,
        call: ShadowCall,
        rid: bytes,
    ) -> None:
        request = rid.decode("latin-1")
        try:
            answer = await call()
        except Exception as err:
            self._count_shadow(model, version, "error")
            log.info("shadow of model %r version %s failed on request %s: %s", model, version, request, err)
            return
        status, body = answer.status, answer.body
        outcome = compare_answers(
            primary.body,
            status,
            body,
            primary.header(BINARY_HEADER_LENGTH),
            answer.header(BINARY_HEADER_LENGTH),
        )
        self._count_shadow(model, version, outcome)
        if outcome == "differ":
            log.info(
                "shadow of model %r: version %s answered differently from version %s on request %s",
                model,
                version,
                primary_version,
                request,
            )
        elif outcome == "error":
            log.info(
                "shadow of model %r version %s answered %d on request %s: %s",
                model,
                version,
                status,
                request,
                body[:200].decode("utf-8", errors="replace"),
            )

    def describe(self, served: Container[str] | None = None) -> dict[str, Any]:
        """Every rollout as JSON: the spec, the versions its refs resolved to, and the live counters.

        ``served`` (the fleet's model names) marks which rollouts this fleet can route.
        """
        rollouts = []
        for model in sorted(self._rollouts):
            rollout = self._rollouts[model]
            counts = self._counts.get(model, _ModelCounts())
            rollouts.append(
                {
                    "model": model,
                    "served": model in served if served is not None else None,
                    "active": rollout.routable,
                    "spec": rollout.spec.to_dict(),
                    "updated_at": rollout.updated_at.isoformat(),
                    "routes": [route.to_dict() for route in rollout.routes],
                    "shadow": rollout.shadow.to_dict() if rollout.shadow is not None else None,
                    "versions": {v: c.to_dict() for v, c in sorted(counts.versions.items())},
                    "shadow_outcomes": {v: dict(o) for v, o in sorted(counts.shadow.items())},
                }
            )
        return {
            "rollouts": rollouts,
            "state_token": self._token,
            "refreshed_at": self.refreshed_at.isoformat() if self.refreshed_at is not None else None,
            "refresh_error": self.refresh_error,
            "shadows_in_flight": len(self._shadows),
        }
