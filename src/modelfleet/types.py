"""Shared vocabulary: the ASGI callables every HTTP-facing room is built from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CONTENT_TYPE = b"application/json"
OCTET_STREAM = b"application/octet-stream"
REQUEST_ID_HEADER = b"x-request-id"
TIMEOUT_HEADER = b"x-request-timeout-ms"
# The Open Inference Protocol's binary tensor data extension: the length of the JSON header that
# binary tensor data follows, on requests and answers alike.
BINARY_HEADER_LENGTH = b"inference-header-content-length"
