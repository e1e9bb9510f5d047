"""Small HTTP helpers shared by the worker and the gateway, and the one table from errors to statuses.

Both services are plain ASGI callables: the hot path is a handful of dictionary look-ups, so the
per-request cost stays close to the server's own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable

import orjson

from modelfleet.errors import (
    AliasNotFound,
    ArtifactNotFound,
    Conflict,
    DatasetNotFound,
    DatasetRejected,
    DeadlineExceeded,
    InvalidInput,
    MalformedRequest,
    ModelfleetError,
    ModelNotFound,
    ModelNotReady,
    PipelineNotFound,
    PredictionFailed,
    RunNotFound,
    TrainingJobNotFound,
    UpstreamUnavailable,
    VersionNotFound,
)
from modelfleet.store.errors import JobNotFound, StoreError
from modelfleet.types import JSON_CONTENT_TYPE, OCTET_STREAM, REQUEST_ID_HEADER, Receive, Scope, Send


class HTTPError(Exception):
    """Raised inside a handler to answer with ``status`` and a JSON error message."""

    def __init__(self, status: int, message: str, details: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


STATUS_OF: dict[type[ModelfleetError], int] = {
    MalformedRequest: 400,
    ModelNotFound: 404,
    PipelineNotFound: 404,
    RunNotFound: 404,
    InvalidInput: 422,
    PredictionFailed: 500,
    ModelNotReady: 503,
    UpstreamUnavailable: 503,
    StoreError: 503,
    JobNotFound: 404,
    VersionNotFound: 404,
    AliasNotFound: 404,
    TrainingJobNotFound: 404,
    Conflict: 409,
    DatasetNotFound: 404,
    DatasetRejected: 422,
    ArtifactNotFound: 404,
    DeadlineExceeded: 504,
}


def http_error_of(err: ModelfleetError) -> HTTPError:
    """Map a domain error to the HTTP answer it deserves."""
    for cls in type(err).__mro__:
        status = STATUS_OF.get(cls)
        if status is not None:
            details = err.details if isinstance(err, InvalidInput) else None
            return HTTPError(status, str(err), details or None)
    return HTTPError(500, str(err))


def status_of(err: BaseException) -> int:
    """The status an exception escaping a handler will be answered with."""
    if isinstance(err, HTTPError):
        return err.status
    if isinstance(err, ModelfleetError):
        return http_error_of(err).status
    return 500


Dispatch = Callable[[Scope, Receive, Send, bytes], Awaitable[None]]


async def serve_request(
    dispatch: Dispatch, scope: Scope, receive: Receive, send: Send, log: logging.Logger
) -> None:
    """Run ``dispatch`` for one HTTP request, answering every error as JSON with the request id."""
    rid = request_id_of(scope)
    try:
        await dispatch(scope, receive, send, rid)
    except HTTPError as err:
        await respond_error(send, err, rid)
    except ModelfleetError as err:
        await respond_error(send, http_error_of(err), rid)
    except Exception:
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        await respond_error(send, HTTPError(500, "internal error"), rid)


def error_body(message: str, details: list[dict[str, object]] | None = None) -> bytes:
    body: dict[str, object] = {"error": message}
    if details:
        body["details"] = details
    return orjson.dumps(body)


def get_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def request_id_of(scope: Scope) -> bytes:
    """The caller's request id, or a new one; ids are capped so a client cannot bloat logs."""
    rid = get_header(scope, REQUEST_ID_HEADER)
    if rid and len(rid) <= 128:
        return rid
    return uuid.uuid4().hex.encode()


def check_json_content_type(scope: Scope, binary_ok: bool = False) -> None:
    """Accept application/json (or no content type at all); anything else is 415.

    ``binary_ok`` also accepts application/octet-stream: an inference request carrying binary
    tensor data after its JSON header.
    """
    ctype = get_header(scope, b"content-type")
    if ctype is None:
        return
    media = ctype.split(b";", 1)[0].strip().lower()
    if media == JSON_CONTENT_TYPE or (binary_ok and media == OCTET_STREAM):
        return
    if not (media.startswith(b"application/") and media.endswith(b"+json")):
        allowed = "application/json or application/octet-stream" if binary_ok else "application/json"
        raise HTTPError(
            415, f"unsupported media type {media.decode('latin-1')!r}; send Content-Type: {allowed}"
        )


async def read_body(scope: Scope, receive: Receive, limit_bytes: int) -> bytes:
    """Read the whole request body; raises HTTPError(413) past ``limit_bytes`` without buffering more."""
    declared = get_header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, "invalid Content-Length header") from None
        if size > limit_bytes:
            raise HTTPError(413, f"request body of {size} bytes exceeds the limit of {limit_bytes} bytes")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit_bytes:
            raise HTTPError(413, f"request body exceeds the limit of {limit_bytes} bytes")
        return bytes(body)
    chunks = [body]
    total = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit_bytes:
            raise HTTPError(413, f"request body exceeds the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    request_id: bytes | None = None,
    content_type: bytes = JSON_CONTENT_TYPE,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((REQUEST_ID_HEADER, request_id))
    headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, err: HTTPError, request_id: bytes | None = None) -> None:
    await respond(send, err.status, error_body(err.message, err.details), request_id)


async def lifespan(
    receive: Receive,
    send: Send,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Answer the ASGI lifespan protocol, running the service's start and stop hooks."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                if on_startup is not None:
                    await on_startup()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
