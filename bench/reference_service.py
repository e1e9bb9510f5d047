"""Bare reference service: VADER behind a minimal Starlette app, served by uvicorn.

POST /predict with {"text": "..."} answers VADER's polarity scores. It is what a careful
hand-written service would do, with no framework of ours in between, so the benchmark can tell
how much modelfleet's worker costs on top.

    python bench/reference_service.py --port 9001
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

analyzer = SentimentIntensityAnalyzer()


async def predict(request: Request) -> JSONResponse:
    data = await request.json()
    return JSONResponse(analyzer.polarity_scores(data["text"]))


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(
    routes=[Route("/predict", predict, methods=["POST"]), Route("/ready", ready, methods=["GET"])]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
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
