"""The registry's HTTP API through the gateway's ASGI app on a real SQLite registry: statuses, messages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from modelfleet.gateway.app import GatewayApp
from modelfleet.plan import Endpoint, FleetPlan
from modelfleet.registry import make_registry
from modelfleet.registry.api import DeleteArtifact, RegistryAPI
from modelfleet.settings import GatewaySettings

Call = Callable[..., Awaitable[tuple[int, Any]]]


def scenario(
    tmp_path: Path,
    body: Callable[[Call], Awaitable[None]],
    delete_artifact: DeleteArtifact | None = None,
) -> None:
    """Run ``body`` with a ``call(method, path, json=..., raw=..., content_type=...)`` into a gateway."""

    async def go() -> None:
        api = RegistryAPI(make_registry(f"sqlite:///{tmp_path / 'registry.db'}"), delete_artifact)
        app = GatewayApp(FleetPlan(Endpoint("127.0.0.1", 1)), GatewaySettings(), registry=api)
        await api.start()
        try:
            await body(lambda *args, **kwargs: request(app, *args, **kwargs))
        finally:
            await api.stop()

    asyncio.run(go())


async def request(
    app: GatewayApp,
    method: str,
    path: str,
    json: Any = None,
    raw: bytes | None = None,
    content_type: bytes = b"application/json",
) -> tuple[int, Any]:
    target, _, query = path.partition("?")
    body = raw if raw is not None else (orjson.dumps(json) if json is not None else b"")
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": target,
        "raw_path": target.encode(),
        "query_string": query.encode(),
        "headers": [(b"content-type", content_type)],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def version_body(artifact_uri: str = "file:///lake/a.joblib", **changes: Any) -> dict[str, Any]:
    return {
        "artifact_uri": artifact_uri,
        "trainer": "tfidf-logreg",
        "params": {"C": 1.0},
        "metrics": {"accuracy": 0.9},
        "dataset": "reviews@3",
        **changes,
    }


async def three_versions(call: Call, model: str = "sentiment") -> None:
    for _ in range(3):
        status, _ = await call("POST", f"/v1/registry/models/{model}/versions", version_body())
        assert status == 201


def test_register_list_and_show(tmp_path: Path) -> None:
    async def body(call: Call) -> None:
        status, registered = await call(
            "POST", "/v1/registry/models/sentiment/versions", version_body(metrics={"accuracy": 0.93})
        )
        assert status == 201
        assert registered["version"] == "1"
        assert registered["metrics"] == {"accuracy": 0.93}
        assert registered["dataset"] == "reviews@3"
        await call("POST", "/v1/registry/models/sentiment/versions", version_body())
        await call("PUT", "/v1/registry/models/sentiment/aliases/production", {"version": "1"})

        status, listing = await call("GET", "/v1/registry/models")
        assert status == 200
        assert listing == {
            "models": [{"model": "sentiment", "versions": 2, "latest": "2", "aliases": {"production": "1"}}]
        }
        status, shown = await call("GET", "/v1/registry/models/sentiment")
        assert status == 200
        assert [v["version"] for v in shown["versions"]] == ["2", "1"]
        assert shown["aliases"] == {"production": "1"}
        assert shown["latest"] == "2"
        assert shown["rollout"] is None
        status, one = await call("GET", "/v1/registry/models/sentiment/versions/1")
        assert (status, one) == (200, registered)
        status, versions = await call("GET", "/v1/registry/models/sentiment/versions")
        assert [v["version"] for v in versions["versions"]] == ["2", "1"]
        status, aliases = await call("GET", "/v1/registry/models/sentiment/aliases")
        assert aliases == {"model": "sentiment", "aliases": {"production": "1"}}
        status, resolved = await call("GET", "/v1/registry/models/sentiment/aliases/production")
        assert (status, resolved["version"]["version"]) == (200, "1")
        status, headed = await call("HEAD", "/v1/registry/models/sentiment/versions/1")
        assert (status, headed) == (200, registered)

    scenario(tmp_path, body)


def test_bad_registrations_are_named(tmp_path: Path) -> None:
    cases: list[tuple[Any, int, str]] = [
        (b"", 400, "the body is empty; send a version to register"),
        (b"{nope", 400, "malformed JSON"),
        ([1, 2], 422, "the body must be a JSON object"),
        ({"trainer": "t"}, 422, r"missing field\(s\): artifact_uri"),
        ({**version_body(), "owner": "me"}, 422, r"unknown field\(s\): owner"),
        (version_body(metrics={"accuracy": "high"}), 422, "metric 'accuracy' must be a finite number"),
        (version_body(dataset="reviews"), 422, "must be 'name@version'"),
    ]

    async def body(call: Call) -> None:
        for sent, expected_status, message in cases:
            raw = sent if isinstance(sent, bytes) else None
            status, answer = await call(
                "POST", "/v1/registry/models/sentiment/versions", None if raw is not None else sent, raw=raw
            )
            assert status == expected_status, (sent, answer)
            assert re.search(message, answer["error"]), (message, answer)
        status, answer = await call("POST", "/v1/registry/models/Sentiment/versions", version_body())
        assert status == 422
        assert "model name 'Sentiment'" in answer["error"]
        status, answer = await call("GET", "/v1/registry/models")
        assert answer == {"models": []}

    scenario(tmp_path, body)


def test_promote_rollback_and_the_conflicts_they_meet(tmp_path: Path) -> None:
    async def body(call: Call) -> None:
        await three_versions(call)
        base = "/v1/registry/models/sentiment/aliases/production"
        for version in ("1", 2, "3"):
            status, event = await call("PUT", base, {"version": version})
            assert (status, event["action"], event["version"]) == (200, "promote", str(version))
        status, event = await call("POST", f"{base}/rollback")
        assert (status, event["version"], event["previous_version"]) == (200, "2", "3")
        status, event = await call("POST", f"{base}/rollback")
        assert (status, event["version"], event["previous_version"]) == (200, "1", "2")
        status, answer = await call("POST", f"{base}/rollback")
        assert status == 409
        assert answer["error"] == (
            "alias 'production' of model 'sentiment' has no earlier version to roll back to "
            "(it points at version 1)"
        )
        status, answer = await call("POST", "/v1/registry/models/sentiment/aliases/canary/rollback")
        assert status == 404
        assert "no alias 'canary' (aliases: production)" in answer["error"]
        status, history = await call("GET", "/v1/registry/models/sentiment/history?alias=production&limit=2")
        assert status == 200
        assert [(e["action"], e["version"]) for e in history["events"]] == [
            ("rollback", "1"),
            ("rollback", "2"),
        ]

    scenario(tmp_path, body)


def test_bad_promotions_are_named(tmp_path: Path) -> None:
    base = "/v1/registry/models/sentiment/aliases"
    cases: list[tuple[str, Any, int, str]] = [
        (f"{base}/production", None, 400, "the body is empty"),
        (f"{base}/production", {"version": "production"}, 422, "must be a version number such as"),
        (f"{base}/production", {"version": True}, 422, "must be a version number such as"),
        (f"{base}/production", {"version": "1", "alias": "x"}, 422, "send exactly"),
        (f"{base}/production", {"version": "9"}, 404, r"no version '9' \(the latest is 3\)"),
        (f"{base}/Prod", {"version": "1"}, 422, "alias 'Prod' must be"),
        ("/v1/registry/models/unknown/aliases/production", {"version": "1"}, 404, "no model 'unknown'"),
        (f"{base}/production/rollforward", {}, 404, "no route for PUT"),
    ]

    async def body(call: Call) -> None:
        await three_versions(call)
        for path, sent, expected_status, message in cases:
            status, answer = await call("PUT", path, sent)
            assert status == expected_status, (path, sent, answer)
            assert re.search(message, answer["error"]), (message, answer)
        status, answer = await call("GET", f"{base}/3")
        assert status == 404
        assert "aliases start with a letter" in answer["error"]
        status, answer = await call(
            "PUT", f"{base}/production", raw=b"version=1", content_type=b"application/x-www-form-urlencoded"
        )
        assert status == 415
        assert "send Content-Type: application/json" in answer["error"]

    scenario(tmp_path, body)


def test_deleting_a_version_deletes_its_artifact_after_the_record(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()

    def delete_file(uri: str) -> None:
        Path(uri.removeprefix("file://")).unlink()

    async def body(call: Call) -> None:
        uris = []
        for name in ("one", "two", "three"):
            path = artifacts / f"{name}.joblib"
            path.write_bytes(b"model")
            uris.append(path.as_uri())
            await call("POST", "/v1/registry/models/sentiment/versions", version_body(path.as_uri()))
        await call("PUT", "/v1/registry/models/sentiment/aliases/production", {"version": "1"})
        status, answer = await call("DELETE", "/v1/registry/models/sentiment/versions/1")
        assert status == 409
        assert "what alias(es) production point at" in answer["error"]
        assert (artifacts / "one.joblib").exists()

        status, answer = await call("DELETE", "/v1/registry/models/sentiment/versions/2")
        assert status == 200
        assert answer["artifact_uri"] == uris[1]
        assert answer["artifact_deleted"] is True
        assert answer["artifact_error"] is None
        assert answer["deleted"]["version"] == "2"
        assert not (artifacts / "two.joblib").exists()

        # The artifact is already gone: the version is still forgotten, and the answer says why
        # the artifact could not be deleted.
        (artifacts / "three.joblib").unlink()
        status, answer = await call("DELETE", "/v1/registry/models/sentiment/versions/3")
        assert status == 200
        assert answer["artifact_deleted"] is False
        assert answer["artifact_error"].startswith("FileNotFoundError")
        status, answer = await call("GET", "/v1/registry/models/sentiment/versions/3")
        assert status == 404
        assert "no version '3'" in answer["error"]

    scenario(tmp_path, body, delete_file)


def test_an_async_artifact_deleter_is_awaited_and_without_one_the_uri_is_returned(tmp_path: Path) -> None:
    deleted: list[str] = []

    async def delete_later(uri: str) -> None:
        await asyncio.sleep(0)
        deleted.append(uri)

    async def with_deleter(call: Call) -> None:
        await three_versions(call)
        status, answer = await call("DELETE", "/v1/registry/models/sentiment/versions/1")
        assert (status, answer["artifact_deleted"]) == (200, True)

    scenario(tmp_path / "a", with_deleter, delete_later)
    assert deleted == ["file:///lake/a.joblib"]

    async def without(call: Call) -> None:
        await three_versions(call)
        status, answer = await call("DELETE", "/v1/registry/models/sentiment/versions/1")
        assert status == 200
        assert (answer["artifact_uri"], answer["artifact_deleted"]) == ("file:///lake/a.joblib", False)

    scenario(tmp_path / "b", without)

    async def nothing_there(call: Call) -> None:
        await three_versions(call)
        status, answer = await call("DELETE", "/v1/registry/models/sentiment/versions/1")
        assert status == 200
        assert (answer["artifact_deleted"], answer["artifact_error"]) == (False, None)

    # The lake's deleter answers False when there was no artifact to delete.
    scenario(tmp_path / "c", nothing_there, lambda uri: False)


def test_rollouts_over_http(tmp_path: Path) -> None:
    path = "/v1/registry/models/sentiment/rollout"

    async def body(call: Call) -> None:
        await three_versions(call)
        await call("PUT", "/v1/registry/models/sentiment/aliases/production", {"version": "2"})
        status, answer = await call("GET", path)
        assert status == 404
        assert "has no rollout" in answer["error"]
        bad = {"routes": [{"ref": "production", "weight": 80}, {"ref": "3", "weight": 10}]}
        status, answer = await call("PUT", path, bad)
        assert status == 422
        assert answer["error"] == "rollout: route weights must sum to 100, they sum to 90"
        status, answer = await call("PUT", path, {"routes": [{"ref": "canary", "weight": 100}]})
        assert status == 422
        assert "ref 'canary' does not resolve" in answer["error"]

        spec = {"routes": [{"ref": "production", "weight": 90}, {"ref": "3", "weight": 10}], "shadow": "1"}
        status, stored = await call("PUT", path, spec)
        assert status == 200
        assert stored["routes"] == [
            {"ref": "production", "weight": 90, "version": "2"},
            {"ref": "3", "weight": 10, "version": "3"},
        ]
        assert (stored["shadow"], stored["shadow_version"], stored["sticky_header"]) == ("1", "1", None)
        status, read = await call("GET", path)
        assert (status, read) == (200, stored)
        status, shown = await call("GET", "/v1/registry/models/sentiment")
        assert shown["rollout"] == stored
        status, answer = await call("DELETE", "/v1/registry/models/sentiment/versions/3")
        assert status == 409
        assert "rollout of model 'sentiment' sends traffic to version 3" in answer["error"]
        status, answer = await call("DELETE", path)
        assert (status, answer) == (200, {"model": "sentiment", "cleared": True})
        status, answer = await call("DELETE", path)
        assert (status, answer) == (200, {"model": "sentiment", "cleared": False})
        status, answer = await call("GET", "/v1/registry/models/unknown/rollout")
        assert status == 404
        assert "no model 'unknown'" in answer["error"]

    scenario(tmp_path, body)


def test_alias_deletion_and_history_queries(tmp_path: Path) -> None:
    async def body(call: Call) -> None:
        await three_versions(call)
        await call("PUT", "/v1/registry/models/sentiment/aliases/canary", {"version": "3"})
        status, event = await call("DELETE", "/v1/registry/models/sentiment/aliases/canary")
        assert (status, event["action"], event["previous_version"]) == (200, "delete", "3")
        status, answer = await call("DELETE", "/v1/registry/models/sentiment/aliases/canary")
        assert status == 404
        status, history = await call("GET", "/v1/registry/models/sentiment/history")
        assert [e["action"] for e in history["events"]] == ["delete", "promote"]
        for query, message in (
            ("limit=0", "limit must be a whole number 1..1000"),
            ("limit=ten", "limit must be a whole number 1..1000"),
            ("since=yesterday", r"unknown query parameter\(s\): since"),
        ):
            status, answer = await call("GET", f"/v1/registry/models/sentiment/history?{query}")
            assert status == 400
            assert re.search(message, answer["error"]), answer
        status, answer = await call("GET", "/v1/registry/models/unknown/history")
        assert status == 404

    scenario(tmp_path, body)


def test_wrong_methods_and_unknown_routes(tmp_path: Path) -> None:
    cases = [
        ("POST", "/v1/registry/models", 405, "method POST not allowed here; use GET"),
        ("DELETE", "/v1/registry/models/sentiment", 405, "use GET"),
        ("PUT", "/v1/registry/models/sentiment/versions", 405, "use GET or POST"),
        ("POST", "/v1/registry/models/sentiment/versions/1", 405, "use GET or DELETE"),
        ("POST", "/v1/registry/models/sentiment/aliases/production", 405, "use GET or PUT or DELETE"),
        ("GET", "/v1/registry/models/sentiment/aliases/production/rollback", 405, "use POST"),
        ("POST", "/v1/registry/models/sentiment/rollout", 405, "use GET or PUT or DELETE"),
        ("GET", "/v1/registry", 404, "no route for GET /v1/registry/"),
        ("GET", "/v1/registry/datasets", 404, "no route for GET /v1/registry/datasets"),
        ("GET", "/v1/registry/models/sentiment/metrics", 404, "no route"),
    ]

    async def body(call: Call) -> None:
        await three_versions(call)
        for method, path, expected_status, message in cases:
            status, answer = await call(method, path, {} if method in ("PUT", "POST") else None)
            assert status == expected_status, (method, path, answer)
            assert message in answer["error"], (message, answer)

    scenario(tmp_path, body)


def test_a_gateway_without_a_registry_has_no_registry_routes() -> None:
    async def go() -> tuple[int, Any]:
        app = GatewayApp(FleetPlan(Endpoint("127.0.0.1", 1)), GatewaySettings())
        return await request(app, "GET", "/v1/registry/models")

    status, answer = asyncio.run(go())

    assert status == 404
    assert answer["error"] == "no route for GET /v1/registry/models"
