"""The gateway app against real upstream sockets: what it forwards, how it frames, where it sends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from modelfleet.gateway.app import GatewayApp
from modelfleet.plan import Endpoint, FleetPlan
from modelfleet.settings import GatewaySettings

Handler = Callable[[bytes, bytes], Awaitable[bytes | None]]


async def upstream(handler: Handler) -> tuple[asyncio.Server, int, list[bytes]]:
    """A real HTTP/1.1 server on a loopback port whose answers come from ``handler(head, body)``."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                answer = await handler(head, body)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], heads


def ok(body: bytes = b'{"ok":true}') -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def asgi(
    app: GatewayApp,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [*(headers or [])],
    }
    if not any(name == b"content-type" for name, _ in scope["headers"]):
        scope["headers"].insert(0, (b"content-type", b"application/json"))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def gateway(ports: list[int], **settings: Any) -> GatewayApp:
    plan = FleetPlan(
        Endpoint("127.0.0.1", 1), {"svc": [Endpoint("127.0.0.1", p) for p in ports]}, {"m": "svc", "n": "svc"}
    )
    return GatewayApp(plan, GatewaySettings(**settings))


def test_forwards_body_request_id_and_remaining_deadline() -> None:
    async def scenario() -> None:
        seen_bodies: list[bytes] = []

        async def handler(head: bytes, body: bytes) -> bytes:
            seen_bodies.append(body)
            return ok()

        server, port, heads = await upstream(handler)
        app = gateway([port])
        status, headers, body = await asgi(
            app,
            "POST",
            "/v1/models/m/predict",
            b'{"text":"x"}',
            [(b"x-request-id", b"trace-1"), (b"x-request-timeout-ms", b"5000")],
        )
        assert status == 200
        assert body == b'{"ok":true}'
        assert headers[b"x-request-id"] == b"trace-1"
        assert seen_bodies == [b'{"text":"x"}']
        head = heads[0].decode().lower()
        assert head.startswith("post /v1/models/m/predict http/1.1")
        assert "x-request-id: trace-1" in head
        remaining = int(head.split("x-request-timeout-ms: ")[1].split("\r\n")[0])
        assert 4000 < remaining <= 5000
        await app.stop()
        server.close()

    asyncio.run(scenario())


def test_generated_request_id_is_the_one_sent_upstream() -> None:
    async def scenario() -> None:
        server, port, heads = await upstream(lambda head, body: _const(ok()))
        app = gateway([port])
        _, headers, _ = await asgi(app, "POST", "/v1/models/m/predict", b"{}")
        assert b"x-request-id: " + headers[b"x-request-id"] in heads[0]
        await app.stop()
        server.close()

    asyncio.run(scenario())


async def _const(value: bytes | None) -> bytes | None:
    return value


def test_keep_alive_connection_is_reused_and_chunked_bodies_are_joined() -> None:
    async def scenario() -> None:
        chunked = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
        )
        server, port, heads = await upstream(lambda head, body: _const(chunked))
        app = gateway([port])
        for _ in range(3):
            status, _, body = await asgi(app, "POST", "/v1/models/m/predict", b"{}")
            assert (status, body) == (200, b'{"a":1}')
        assert app.services["svc"].replicas[0].pool.open_connections == 1
        assert len(heads) == 3
        await app.stop()
        server.close()

    asyncio.run(scenario())


def test_upstream_closing_an_idle_connection_is_retried_transparently() -> None:
    async def scenario() -> None:
        calls = 0

        async def handler(head: bytes, body: bytes) -> bytes | None:
            nonlocal calls
            calls += 1
            return ok() if calls != 2 else None  # the second request finds the connection closed

        server, port, _ = await upstream(handler)
        app = gateway([port])
        assert (await asgi(app, "POST", "/v1/models/m/predict", b"{}"))[0] == 200
        assert (await asgi(app, "POST", "/v1/models/m/predict", b"{}"))[0] == 200
        assert calls == 3
        await app.stop()
        server.close()

    asyncio.run(scenario())


def test_refused_replica_is_ejected_and_the_request_served_by_another() -> None:
    async def scenario() -> None:
        server, port, heads = await upstream(lambda head, body: _const(ok()))
        dead = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead_port = dead.sockets[0].getsockname()[1]
        dead.close()
        await dead.wait_closed()
        app = gateway([dead_port, port])
        results = [await asgi(app, "POST", "/v1/models/m/predict", b"{}") for _ in range(4)]
        assert all(r[0] == 200 for r in results)
        assert len(heads) == 4
        replicas = app.services["svc"].replicas
        assert replicas[0].healthy is False
        assert replicas[1].healthy is True
        metrics = app.metrics.render().decode()
        assert 'modelfleet_gateway_replica_healthy{replica="svc-0",service="svc"} 0.0' in metrics
        await app.stop()
        server.close()

    asyncio.run(scenario())


def test_no_replica_left_is_503_naming_the_service() -> None:
    async def scenario() -> None:
        dead = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = dead.sockets[0].getsockname()[1]
        dead.close()
        await dead.wait_closed()
        app = gateway([port])
        status, _, body = await asgi(app, "POST", "/v1/models/m/predict", b"{}")
        assert status == 503
        assert "no replica of service 'svc'" in orjson.loads(body)["error"]
        await app.stop()

    asyncio.run(scenario())


def test_hanging_replica_hits_the_deadline() -> None:
    async def scenario() -> None:
        async def hang(head: bytes, body: bytes) -> bytes:
            await asyncio.sleep(5)
            return ok()

        server, port, _ = await upstream(hang)
        app = gateway([port])
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, body = await asgi(
            app, "POST", "/v1/models/m/predict", b"{}", [(b"x-request-timeout-ms", b"200")]
        )
        assert status == 504
        assert "deadline of 200 ms" in orjson.loads(body)["error"]
        assert loop.time() - started < 1.0
        await app.stop()
        server.close()

    asyncio.run(scenario())


def test_least_outstanding_prefers_the_idle_replica() -> None:
    async def scenario() -> None:
        async def slow(head: bytes, body: bytes) -> bytes:
            await asyncio.sleep(0.3)
            return ok(b'"slow"')

        async def fast(head: bytes, body: bytes) -> bytes:
            await asyncio.sleep(0.01)
            return ok(b'"fast"')

        slow_server, slow_port, _ = await upstream(slow)
        fast_server, fast_port, _ = await upstream(fast)
        app = gateway([slow_port, fast_port])
        # Given 10 concurrent streams of requests, when one replica is slow, then it gets few of them.
        answers: list[bytes] = []

        async def stream() -> None:
            for _ in range(5):
                answers.append((await asgi(app, "POST", "/v1/models/m/predict", b"{}"))[2])

        await asyncio.gather(*(stream() for _ in range(10)))
        assert len(answers) == 50
        assert answers.count(b'"slow"') <= 15
        await app.stop()
        slow_server.close()
        fast_server.close()

    asyncio.run(scenario())


def test_gateway_checks_model_media_type_and_size_itself() -> None:
    async def scenario() -> None:
        app = gateway([1], body_limit_bytes=10)
        status, _, body = await asgi(app, "POST", "/v1/models/zzz/predict", b"{}")
        assert status == 404
        assert "model 'zzz' is not served" in orjson.loads(body)["error"]
        status, _, _ = await asgi(app, "POST", "/v1/models/m/predict", b"x" * 11)
        assert status == 413
        await app.stop()

    asyncio.run(scenario())


def test_binary_tensor_bodies_pass_through_with_their_header_length_both_ways() -> None:
    async def scenario() -> None:
        seen: list[bytes] = []
        answer_head = (
            b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]}'
        )
        answer = answer_head + b"\x00\x00\x80\x3f"

        async def handler(head: bytes, body: bytes) -> bytes:
            seen.append(body)
            return (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                b"inference-header-content-length: %d\r\ncontent-length: %d\r\n\r\n%s"
                % (len(answer_head), len(answer), answer)
            )

        server, port, heads = await upstream(handler)
        app = gateway([port])
        request = (
            b'{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":5}}]}'
        )
        body = request + b"\x01\x00\x00\x00\xff"
        scope_headers = [
            (b"inference-header-content-length", str(len(request)).encode()),
        ]
        # Given a client that sends binary data as application/octet-stream (a JSON type is replaced)
        app_scope_ctype = (b"content-type", b"application/octet-stream")
        status, headers, got = await asgi(
            app, "POST", "/v2/models/m/infer", body, [*scope_headers, app_scope_ctype]
        )
        assert status == 200
        assert got == answer
        assert headers[b"inference-header-content-length"] == str(len(answer_head)).encode()
        assert headers[b"content-type"] == b"application/octet-stream"
        assert seen == [body]
        head = heads[0].lower()
        assert b"inference-header-content-length: %d\r\n" % len(request) in head
        assert b"content-type: application/octet-stream" in head
        # A JSON body goes as before, without the binary header
        status, headers, _ = await asgi(app, "POST", "/v2/models/m/infer", b"{}")
        assert b"inference-header-content-length" not in heads[1].lower()
        await app.stop()
        server.close()

    asyncio.run(scenario())


def test_octet_stream_without_binary_framing_is_415() -> None:
    async def scenario() -> None:
        app = gateway([1])
        scope_headers = [(b"content-type", b"application/octet-stream")]
        status, _, body = await asgi(app, "POST", "/v2/models/m/infer", b"{}", scope_headers)
        assert status == 415
        assert b"application/json" in body

    asyncio.run(scenario())


def test_ready_only_after_every_service_passed_a_probe_and_then_as_probes_say() -> None:
    async def scenario() -> None:
        worker_ready = False

        async def handler(head: bytes, body: bytes) -> bytes:
            if head.startswith(b"GET /v2/health/ready"):
                if worker_ready:
                    return ok(b'{"ready":true}')
                return b'HTTP/1.1 503 Service Unavailable\r\ncontent-length: 15\r\n\r\n{"ready":false}'
            return ok()

        server, port, _ = await upstream(handler)
        app = gateway([port], health_interval_s=0.05, failures_to_eject=1)
        # Before any probe: the replica is routed to, but the gateway is not ready
        status, _, body = await asgi(app, "GET", "/v2/health/ready")
        assert (status, orjson.loads(body)) == (503, {"ready": False, "services_down": ["svc"]})
        assert (await asgi(app, "POST", "/v1/models/m/predict", b"{}"))[0] == 200
        await app.start()
        await asyncio.sleep(0.3)
        assert (await asgi(app, "GET", "/v2/health/ready"))[0] == 503
        worker_ready = True
        await asyncio.sleep(0.3)
        assert (await asgi(app, "GET", "/v2/health/ready"))[0] == 200
        # A replica that stops passing probes takes readiness with it
        worker_ready = False
        await asyncio.sleep(0.3)
        assert (await asgi(app, "GET", "/v2/health/ready"))[0] == 503
        await app.stop()
        server.close()

    asyncio.run(scenario())
