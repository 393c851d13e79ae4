"""Error responses: always JSON `{"detail": "<one clear sentence>"}`, never a traceback.

Clients can show `detail` for any error without knowing which kind it was: validation errors
get a sentence naming the offending field (their structured `errors` list is kept beside it),
and unexpected exceptions are logged server-side and answered with a generic 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger("shopgraph.api")


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """`"query parameter 'k': Input should be less than or equal to 100"`, one per error."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        where = {"query": "query parameter", "path": "path parameter", "body": "body field",
                 "header": "header"}.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:])
        parts.append(f"{where} {name!r}: {error.get('msg', 'invalid')}" if name
                     else f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [_plain(e) for e in exc.errors()]
    return JSONResponse({"detail": describe_validation_errors(errors), "errors": errors},
                        status_code=422)


def _plain(error: dict[str, Any]) -> dict[str, Any]:
    """An error entry safe to serialise: no `ctx`/`url`, `input` only when a plain value."""
    out = {k: v for k, v in error.items() if k not in ("ctx", "url", "input")}
    if isinstance(error.get("input"), str | int | float | bool | None):
        out["input"] = error.get("input")
    return jsonable_encoder(out)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error)
