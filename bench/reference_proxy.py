"""Bare reference proxy: a minimal Starlette app forwarding POST bodies with aiohttp.

Every POST is forwarded, path and body unchanged, to the upstream given on the command line over a
pooled aiohttp ClientSession, and the upstream's status, body and content type are returned. With
reference_service.py behind it, it is the hand-written counterpart of modelfleet's gateway and
worker.

    python bench/reference_proxy.py --port 9000 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

UPSTREAM = "http://127.0.0.1:9001"
CONNECTION_LIMIT = 512


class State:
    session: aiohttp.ClientSession | None = None


state = State()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT, limit_per_host=CONNECTION_LIMIT)
    state.session = aiohttp.ClientSession(connector=connector)
    try:
        yield
    finally:
        await state.session.close()


async def forward(request: Request) -> Response:
    assert state.session is not None
    body = await request.body()
    async with state.session.post(
        UPSTREAM + request.scope["path"], data=body, headers={"content-type": "application/json"}
    ) as upstream:
        content = await upstream.read()
        return Response(content, status_code=upstream.status, media_type=upstream.content_type)


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(
    routes=[Route("/ready", ready, methods=["GET"]), Route("/{path:path}", forward, methods=["POST"])],
    lifespan=lifespan,
)


def main() -> None:
    global UPSTREAM
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream", required=True, help="base URL of the service, e.g. http://127.0.0.1:9001"
    )
    args = parser.parse_args()
    UPSTREAM = args.upstream.rstrip("/")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
