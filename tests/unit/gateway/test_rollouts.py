"""Rollouts at the gateway on a real SQLite registry: split ratios, stickiness, refreshes, shadows.

The registry is the real SqlRegistry on a file; artifact URIs are never opened here, so they need
not exist. The gateway tests talk to a real HTTP server on a loopback port that answers the worker's
versioned paths, so what the gateway sends and returns is seen on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from modelfleet.cli.main import main
from modelfleet.gateway.app import GatewayApp
from modelfleet.gateway.rollouts import (
    BUCKETS,
    RolloutRouter,
    answering_version,
    compare_answers,
    sticky_bucket,
    version_target,
)
from modelfleet.plan import Endpoint, FleetPlan
from modelfleet.registry import Registry, make_registry
from modelfleet.registry.api import RegistryAPI
from modelfleet.settings import GatewaySettings
from modelfleet.store.errors import StoreError

MODEL = "intent"


def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


async def seeded(registry: Registry, versions: int = 3) -> None:
    """Versions 1..n of the model; production -> 1, canary -> 2."""
    for number in range(1, versions + 1):
        await registry.register(MODEL, f"file:///lake/{MODEL}-{number}", "tfidf-logreg", {}, {})
    await registry.set_alias(MODEL, "production", "1")
    await registry.set_alias(MODEL, "canary", "2")


def with_router(
    tmp_path: Path, body: Callable[[Registry, RolloutRouter], Awaitable[None]], **router: Any
) -> None:
    async def go() -> None:
        registry = make_registry(db_url(tmp_path))
        await registry.open()
        rollouts = RolloutRouter(registry, **router)
        try:
            await seeded(registry)
            await body(registry, rollouts)
        finally:
            await rollouts.stop()
            await registry.close()

    asyncio.run(go())


def assert_within_4_sigma(count: int, trials: int, share: float) -> None:
    expected = trials * share
    sigma = math.sqrt(trials * share * (1 - share))
    assert abs(count - expected) <= 4 * sigma, (
        f"{count} of {trials}, expected {expected:.0f} ± {4 * sigma:.0f}"
    )


def rewrite_rollout(tmp_path: Path, spec: dict[str, Any]) -> None:
    """Store a rollout the registry's own checks would refuse (refs that no longer resolve), the way an
    older process or a hand edit could leave it, and move the state token."""
    with contextlib.closing(sqlite3.connect(tmp_path / "registry.db")) as db:
        db.execute("UPDATE rollouts SET spec = ? WHERE model = ?", (json.dumps(spec), MODEL))
        db.execute("UPDATE registered_models SET generation = generation + 1 WHERE model = ?", (MODEL,))
        db.commit()


# --- choosing a version -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "shares"),
    [
        ([{"ref": "production", "weight": 90}, {"ref": "canary", "weight": 10}], {"1": 0.9, "2": 0.1}),
        ([{"ref": "1", "weight": 50}, {"ref": "2", "weight": 50}], {"1": 0.5, "2": 0.5}),
        ([{"ref": "canary", "weight": 5}, {"ref": "production", "weight": 95}], {"2": 0.05, "1": 0.95}),
    ],
)
def test_random_split_is_within_four_sigma_of_the_weights(
    tmp_path: Path, routes: list[dict[str, Any]], shares: dict[str, float]
) -> None:
    async def body(registry: Registry, rollouts: RolloutRouter) -> None:
        await registry.set_rollout(MODEL, {"routes": routes})
        assert await rollouts.refresh()
        trials = 20_000
        counts = Counter(rollouts.choose(MODEL) for _ in range(trials))
        assert set(counts) == set(shares)
        for version, share in shares.items():
            assert_within_4_sigma(counts[version], trials, share)

    with_router(tmp_path, body)


def test_sticky_key_always_sees_one_version_and_keys_spread_by_weight(tmp_path: Path) -> None:
    async def body(registry: Registry, rollouts: RolloutRouter) -> None:
        spec = {
            "routes": [{"ref": "production", "weight": 90}, {"ref": "canary", "weight": 10}],
            "sticky_header": "X-User-Id",
        }
        await registry.set_rollout(MODEL, spec)
        await rollouts.refresh()
        keys = [f"user-{n}".encode() for n in range(4000)]
        before = {key: rollouts.choose(MODEL, [(b"x-user-id", key)]) for key in keys}

        # Given one user, 1000 requests all go to the version that user was given.
        user = [(b"accept", b"*/*"), (b"x-user-id", b"user-7")]
        assert {rollouts.choose(MODEL, user) for _ in range(1000)} == {before[b"user-7"]}

        # Different users spread in proportion to the weights.
        assert_within_4_sigma(sum(v == "2" for v in before.values()), len(keys), 0.10)

        # An unrelated change moves the state token; after the refresh every user keeps its version.
        await registry.set_alias(MODEL, "staging", "3")
        assert await rollouts.refresh()
        assert {key: rollouts.choose(MODEL, [(b"x-user-id", key)]) for key in keys} == before

        # Another gateway process (a fresh router) maps every user the same way.
        other = RolloutRouter(registry)
        await other.refresh()
        assert {key: other.choose(MODEL, [(b"x-user-id", key)]) for key in keys} == before

        # Without the header the pick is random: both versions come up.
        assert set(Counter(rollouts.choose(MODEL, [(b"x-other", b"user-7")]) for _ in range(1000))) == {
            "1",
            "2",
        }

    with_router(tmp_path, body)


def test_sticky_bucket_is_stable_and_depends_on_the_model() -> None:
    assert sticky_bucket("intent", b"user-1") == sticky_bucket("intent", b"user-1")
    assert 0 <= sticky_bucket("intent", b"user-1") < BUCKETS
    buckets = [sticky_bucket("intent", f"user-{n}".encode()) for n in range(2000)]
    elsewhere = [sticky_bucket("sentiment", f"user-{n}".encode()) for n in range(2000)]
    assert buckets != elsewhere
    # Uniform over the buckets: each tenth holds about a tenth of the keys.
    tenths = Counter(bucket * 10 // BUCKETS for bucket in buckets)
    for tenth in range(10):
        assert_within_4_sigma(tenths[tenth], len(buckets), 0.1)


def test_refresh_follows_set_clear_and_alias_moves(tmp_path: Path) -> None:
    async def body(registry: Registry, rollouts: RolloutRouter) -> None:
        assert await rollouts.refresh()
        assert rollouts.choose(MODEL) is None
        assert rollouts.find(MODEL) is None
        assert not await rollouts.refresh()  # nothing changed, nothing reread

        await registry.set_rollout(MODEL, {"routes": [{"ref": "canary", "weight": 100}]})
        assert await rollouts.refresh()
        assert rollouts.choose(MODEL) == "2"

        await registry.set_alias(MODEL, "canary", "3")
        assert await rollouts.refresh()
        assert rollouts.choose(MODEL) == "3"

        # Registering a version is no alias or rollout change: the token stays.
        await registry.register(MODEL, f"file:///lake/{MODEL}-4", "tfidf-logreg", {}, {})
        assert not await rollouts.refresh()

        assert await registry.clear_rollout(MODEL)
        assert await rollouts.refresh()
        assert rollouts.choose(MODEL) is None
        assert rollouts.choose("unknown-model") is None

    with_router(tmp_path, body)


def test_background_poll_picks_up_a_new_rollout(tmp_path: Path) -> None:
    async def body(registry: Registry, rollouts: RolloutRouter) -> None:
        await rollouts.start()
        assert rollouts.choose(MODEL) is None
        await registry.set_rollout(MODEL, {"routes": [{"ref": "2", "weight": 100}]})
        for _ in range(250):
            if rollouts.choose(MODEL) is not None:
                break
            await asyncio.sleep(0.02)
        assert rollouts.choose(MODEL) == "2"

    with_router(tmp_path, body, poll_s=0.05)


def test_unresolvable_refs_are_skipped_and_logged_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(registry: Registry, rollouts: RolloutRouter) -> None:
        await registry.set_rollout(
            MODEL, {"routes": [{"ref": "production", "weight": 50}, {"ref": "canary", "weight": 50}]}
        )
        spec = {
            "routes": [{"ref": "production", "weight": 50}, {"ref": "9", "weight": 50}],
            "sticky_header": None,
            "shadow": "ghost",
        }
        rewrite_rollout(tmp_path, spec)
        with caplog.at_level(logging.ERROR, logger="modelfleet.gateway.rollouts"):
            assert await rollouts.refresh()
        assert "ref '9' skipped" in caplog.text
        assert "ref 'ghost' skipped" in caplog.text
        # The route that resolves takes all the traffic; the shadow that does not is left out.
        assert {rollouts.choose(MODEL) for _ in range(200)} == {"1"}
        found = rollouts.find(MODEL)
        assert found is not None
        assert found.shadow_version is None
        view = rollouts.describe()["rollouts"][0]
        assert view["routes"][1]["version"] is None
        assert "no version '9'" in view["routes"][1]["error"]
        assert view["shadow"]["error"] is not None

        # No route resolves: the model is served as if it had no rollout.
        rewrite_rollout(tmp_path, {"routes": [{"ref": "7", "weight": 100}]})
        assert await rollouts.refresh()
        assert rollouts.choose(MODEL) is None
        assert rollouts.describe()["rollouts"][0]["active"] is False

    with_router(tmp_path, body)


def test_a_failing_registry_keeps_the_last_routes(tmp_path: Path) -> None:
    async def body(registry: Registry, rollouts: RolloutRouter) -> None:
        await registry.set_rollout(MODEL, {"routes": [{"ref": "canary", "weight": 100}]})
        await rollouts.refresh()
        await registry.close()
        with pytest.raises(StoreError):
            await rollouts.refresh()
        await rollouts.start()  # logs the failure instead of raising it
        assert rollouts.refresh_error is not None
        assert rollouts.choose(MODEL) == "2"
        await registry.open()  # so the fixture's clean-up works on an open registry

    with_router(tmp_path, body)


def test_shadow_answers_are_compared_on_outputs_only() -> None:
    primary = b'{"model":"m","version":"1","output":{"label":"a","score":0.9}}'
    assert compare_answers(
        primary, 200, b'{"model":"m","version":"2","output":{"label":"a","score":0.9}}'
    ) == ("agree")
    assert compare_answers(
        primary, 200, b'{"model":"m","version":"2","output":{"label":"b","score":0.9}}'
    ) == ("differ")
    assert compare_answers(primary, 200, b'{"model":"m","version":"2","outputs":[{"label":"a"}]}') == "differ"
    assert compare_answers(primary, 404, b'{"error":"no version"}') == "error"
    assert compare_answers(primary, 200, b"not json") == "error"
    oip = b'{"model_name":"m","model_version":"%s","id":"%s","outputs":[{"name":"label","data":["a"]}]}'
    assert compare_answers(oip % (b"1", b"r1"), 200, oip % (b"2", b"r1:shadow")) == "agree"


def test_version_paths_and_answering_version() -> None:
    assert version_target("v1", "intent", "3") == b"/v1/models/intent/versions/3/predict"
    assert version_target("v2", "intent", "3") == b"/v2/models/intent/versions/3/infer"
    assert answering_version(b'{"model":"intent","version":"4","output":{}}') == "4"
    assert answering_version(b'{"model_name":"intent","model_version":"5","outputs":[]}') == "5"
    assert answering_version(b"[]") is None


# --- through the gateway ------------------------------------------------------------------------

Handler = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


async def upstream(handler: Handler) -> tuple[asyncio.Server, int, list[str]]:
    """A real HTTP/1.1 server on a loopback port; ``handler(path, body)`` gives (status, JSON body)."""
    paths: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                paths.append(path)
                status, answer = await handler(path, body)
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (status, len(answer), answer)
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], paths


def versioned_answers(labels: dict[str, str], loaded: set[str] | None = None) -> Handler:
    """Answers like a worker hosting ``intent``: each loaded version labels every text its own way;
    the unversioned path is production (version 1); a version not loaded is 404."""

    async def handler(path: str, body: bytes) -> tuple[int, bytes]:
        parts = path.strip("/").split("/")
        if parts[0] == "v2" and parts[1] == "health":
            return 200, b'{"ready":true}'
        version = parts[4] if len(parts) == 6 and parts[3] == "versions" else "1"
        if loaded is not None and version not in loaded:
            return 404, b'{"error":"model \'intent\' has no version %s"}' % version.encode()
        text = orjson.loads(body)["text"]
        if text == "fail":
            return 500, b'{"error":"prediction failed"}'
        output = {"label": labels[version], "text": text}
        return 200, orjson.dumps({"model": MODEL, "version": version, "output": output})

    return handler


async def call(
    app: GatewayApp,
    method: str,
    path: str,
    body: Any = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    raw = orjson.dumps(body) if body is not None else b""
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *(headers or [])],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def through_gateway(
    tmp_path: Path,
    handler: Handler,
    body: Callable[[GatewayApp, Registry, list[str]], Awaitable[None]],
    **settings: Any,
) -> None:
    async def go() -> None:
        server, port, paths = await upstream(handler)
        registry = make_registry(db_url(tmp_path))
        plan = FleetPlan(Endpoint("127.0.0.1", 1), {"svc": [Endpoint("127.0.0.1", port)]}, {MODEL: "svc"})
        app = GatewayApp(plan, GatewaySettings(**settings), registry=RegistryAPI(registry))
        await app.start()
        try:
            await seeded(registry)
            await body(app, registry, paths)
        finally:
            await app.stop()
            server.close()
            await server.wait_closed()

    asyncio.run(go())


async def refreshed(app: GatewayApp) -> RolloutRouter:
    assert app.rollouts is not None
    await app.rollouts.refresh()
    return app.rollouts


def test_routed_request_goes_to_the_chosen_version_and_is_counted(tmp_path: Path) -> None:
    async def body(app: GatewayApp, registry: Registry, paths: list[str]) -> None:
        # Given no rollout, the unversioned path is forwarded as it came.
        status, headers, _ = await call(app, "POST", f"/v1/models/{MODEL}/predict", {"text": "hi"})
        assert status == 200
        assert b"x-model-version" not in headers
        assert paths[-1] == f"/v1/models/{MODEL}/predict"

        await registry.set_rollout(MODEL, {"routes": [{"ref": "canary", "weight": 100}]})
        await refreshed(app)
        status, headers, answer = await call(app, "POST", f"/v1/models/{MODEL}/predict", {"text": "hi"})
        assert status == 200
        assert headers[b"x-model-version"] == b"2"
        assert orjson.loads(answer)["version"] == "2"
        assert paths[-1] == f"/v1/models/{MODEL}/versions/2/predict"
        status, headers, _ = await call(app, "POST", f"/v2/models/{MODEL}/infer", {"text": "hi"})
        assert headers[b"x-model-version"] == b"2"
        assert paths[-1] == f"/v2/models/{MODEL}/versions/2/infer"
        status, _, _ = await call(app, "POST", f"/v1/models/{MODEL}/predict", {"text": "fail"})
        assert status == 500

        # An explicit version passes through unchanged and uncounted.
        status, headers, _ = await call(app, "POST", f"/v1/models/{MODEL}/versions/3/predict", {"text": "x"})
        assert status == 200
        assert b"x-model-version" not in headers
        assert paths[-1] == f"/v1/models/{MODEL}/versions/3/predict"

        status, _, listing = await call(app, "GET", "/v1/rollouts")
        assert status == 200
        (view,) = orjson.loads(listing)["rollouts"]
        assert view["model"] == MODEL
        assert view["served"] is True
        assert view["routes"] == [{"ref": "canary", "weight": 100, "version": "2", "error": None}]
        assert view["versions"] == {"2": {"requests": 3, "errors": 1, "client_errors": 0, "fallbacks": 0}}
        _, _, metrics = await call(app, "GET", "/metrics")
        text = metrics.decode()
        assert (
            'modelfleet_gateway_version_requests_total{code_class="2xx",model="intent",version="2"} 2.0'
            in text
        )
        assert (
            'modelfleet_gateway_version_requests_total{code_class="5xx",model="intent",version="2"} 1.0'
            in text
        )

    through_gateway(tmp_path, versioned_answers({"1": "a", "2": "b", "3": "c"}), body)


def test_a_version_not_loaded_yet_falls_back_to_the_alias_version(tmp_path: Path) -> None:
    async def body(app: GatewayApp, registry: Registry, paths: list[str]) -> None:
        await registry.set_rollout(MODEL, {"routes": [{"ref": "canary", "weight": 100}]})
        await refreshed(app)
        status, headers, answer = await call(app, "POST", f"/v1/models/{MODEL}/predict", {"text": "hi"})
        assert status == 200
        assert headers[b"x-model-version"] == b"1"
        assert orjson.loads(answer)["version"] == "1"
        assert paths[-2:] == [f"/v1/models/{MODEL}/versions/2/predict", f"/v1/models/{MODEL}/predict"]
        versions = (await refreshed(app)).describe()["rollouts"][0]["versions"]
        assert versions["2"]["fallbacks"] == 1
        assert versions["1"]["requests"] == 1

    through_gateway(tmp_path, versioned_answers({"1": "a", "2": "b"}, loaded={"1"}), body)


def test_shadow_never_changes_or_delays_the_answer(tmp_path: Path) -> None:
    shadow_may_answer = asyncio.Event()
    labels = {"1": "a", "2": "b", "3": "c"}
    answer_of = versioned_answers(labels)

    async def handler(path: str, body: bytes) -> tuple[int, bytes]:
        if "/versions/3/" in path:
            await shadow_may_answer.wait()  # the shadow answers only after the client has its answer
        return await answer_of(path, body)

    async def body(app: GatewayApp, registry: Registry, paths: list[str]) -> None:
        rollouts = await refreshed(app)
        plain = [await call(app, "POST", f"/v1/models/{MODEL}/predict", {"text": f"t{n}"}) for n in range(5)]

        await registry.set_rollout(MODEL, {"routes": [{"ref": "production", "weight": 100}], "shadow": "3"})
        await rollouts.refresh()
        shadowed = []
        for n in range(5):
            # The answer arrives while the shadow is still blocked: nothing waited for it.
            answer = call(app, "POST", f"/v1/models/{MODEL}/predict", {"text": f"t{n}"})
            shadowed.append(await asyncio.wait_for(answer, timeout=5))
        assert rollouts.shadows_in_flight == 5
        assert [(s, b) for s, _, b in shadowed] == [(s, b) for s, _, b in plain]
        assert all(h[b"x-model-version"] == b"1" for _, h, _ in shadowed)

        shadow_may_answer.set()
        await asyncio.wait_for(rollouts.wait_for_shadows(), timeout=5)
        assert sum(path == f"/v1/models/{MODEL}/versions/3/predict" for path in paths) == 5
        view = rollouts.describe()["rollouts"][0]
        assert view["shadow_outcomes"] == {"3": {"agree": 0, "differ": 5, "error": 0, "dropped": 0}}
        assert view["versions"] == {"1": {"requests": 5, "errors": 0, "client_errors": 0, "fallbacks": 0}}
        _, _, metrics = await call(app, "GET", "/metrics")
        assert 'modelfleet_gateway_shadow_total{model="intent",outcome="differ",version="3"} 5.0' in (
            metrics.decode()
        )

    through_gateway(tmp_path, handler, body)


def test_shadow_agreement_and_the_in_flight_bound(tmp_path: Path) -> None:
    release = asyncio.Event()
    answer_of = versioned_answers({"1": "same", "2": "same"})

    async def handler(path: str, body: bytes) -> tuple[int, bytes]:
        if "/versions/2/" in path:
            await release.wait()
        return await answer_of(path, body)

    async def body(app: GatewayApp, registry: Registry, paths: list[str]) -> None:
        await registry.set_rollout(
            MODEL, {"routes": [{"ref": "production", "weight": 100}], "shadow": "canary"}
        )
        rollouts = await refreshed(app)
        answers = [
            await call(app, "POST", f"/v1/models/{MODEL}/predict", {"text": f"t{n}"}) for n in range(3)
        ]
        assert all(status == 200 for status, _, _ in answers)
        # The bound is 2: the third copy was dropped, not queued.
        assert rollouts.shadows_in_flight == 2
        release.set()
        await asyncio.wait_for(rollouts.wait_for_shadows(), timeout=5)
        outcomes = rollouts.describe()["rollouts"][0]["shadow_outcomes"]
        assert outcomes == {"2": {"agree": 2, "differ": 0, "error": 0, "dropped": 1}}

    through_gateway(tmp_path, handler, body, shadow_max_in_flight=2)


def test_rollouts_listing_needs_the_registry() -> None:
    async def go() -> None:
        app = GatewayApp(FleetPlan(Endpoint("127.0.0.1", 1)), GatewaySettings())
        status, _, answer = await call(app, "GET", "/v1/rollouts")
        assert status == 404
        assert "registry" in orjson.loads(answer)["error"]

    asyncio.run(go())


# --- the command line ---------------------------------------------------------------------------


def cli_config(tmp_path: Path) -> Path:
    config = {
        "store_url": db_url(tmp_path),
        "data_dir": str(tmp_path / "data"),
        "supervisor": {"run_dir": str(tmp_path / "run")},
        "models": {MODEL: {"class": "echo"}},
        "services": {"light": {"models": [MODEL]}},
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def registry_state(tmp_path: Path) -> tuple[dict[str, str], dict[str, Any] | None]:
    async def go() -> tuple[dict[str, str], dict[str, Any] | None]:
        registry = make_registry(db_url(tmp_path))
        await registry.open()
        try:
            rollout = await registry.find_rollout(MODEL)
            return await registry.aliases(MODEL), rollout.spec.to_dict() if rollout else None
        finally:
            await registry.close()

    return asyncio.run(go())


def test_cli_sets_shows_clears_and_rolls_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(cli_config(tmp_path))

    async def seed() -> None:
        registry = make_registry(db_url(tmp_path))
        await registry.open()
        try:
            await seeded(registry)
            await registry.set_alias(MODEL, "production", "3")  # promoted 1 -> 3
        finally:
            await registry.close()

    asyncio.run(seed())
    args = ["rollout", "set", MODEL, "--route", "production=90", "--route", "canary=10", "-c", config]
    assert main([*args, "--sticky-header", "X-User-Id", "--shadow", "1"]) == 0
    assert (
        "production (v3) 90%, canary (v2) 10%; sticky on x-user-id; shadow 1 (v1)" in capsys.readouterr().out
    )
    assert registry_state(tmp_path)[1] == {
        "routes": [{"ref": "production", "weight": 90}, {"ref": "canary", "weight": 10}],
        "sticky_header": "x-user-id",
        "shadow": "1",
    }

    assert main(["rollout", "show", MODEL, "--json", "-c", config]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [route["version"] for route in shown["rollout"]["routes"]] == ["3", "2"]
    assert shown["fleet_running"] is False

    # Bad input is refused with the reason, and nothing changes.
    assert main(["rollout", "set", MODEL, "--route", "production=90", "-c", config]) == 1
    assert "sum to 90" in capsys.readouterr().err
    assert main(["rollout", "set", MODEL, "--route", "production", "-c", config]) == 1
    assert "REF=WEIGHT" in capsys.readouterr().err

    # The one-command rollback: the split is gone and, with --alias, production moves back one step.
    assert main(["rollback", MODEL, "--alias", "production", "-c", config]) == 0
    out = capsys.readouterr().out
    assert "cleared the rollout (production (v3) 90%, canary (v2) 10%" in out
    assert "production rolled back to 1 (was 3)" in out
    assert "all traffic goes to production (v1)" in out
    assert registry_state(tmp_path) == ({"canary": "2", "production": "1"}, None)

    assert main(["rollback", MODEL, "-c", config]) == 0
    assert "had no rollout" in capsys.readouterr().out
    assert main(["rollout", "clear", MODEL, "-c", config]) == 0
    assert "had no rollout; all traffic goes to production (v1)" in capsys.readouterr().out
    assert main(["rollout", "show", "nobody", "-c", config]) == 1
    assert "nobody" in capsys.readouterr().err
