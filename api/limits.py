"""A cap on request body size, enforced while the body is read.

A declared `Content-Length` over the cap is refused before a single body byte is read; a
chunked body is counted as it streams in and refused as soon as it passes the cap. Either way
the refusal is raised from `receive`, i.e. after routing, so the 413 is counted under its route
in the metrics and goes through the normal error handlers.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large(limit: int) -> HTTPException:
    return HTTPException(413,
                         detail=f"request body too large: the limit is {limit:,} bytes")


class BodyLimitMiddleware:
    """Pure ASGI middleware: at most `max_bytes` of request body per request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > self.max_bytes:
                raise too_large(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
