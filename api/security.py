"""API-key protection for write endpoints (`X-API-Key` header).

A key is required only when one is configured (`create_app(api_key=...)` or
`SHOPGRAPH_API_KEY`), so a local demo needs none. Keys are compared with
`hmac.compare_digest`, whose run time does not depend on where the strings differ, so the key
cannot be guessed byte by byte from response times.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

API_KEY_HEADER = "X-API-Key"
_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                       description="Required on write endpoints when the server has a key")


def keys_match(given: str, expected: str) -> bool:
    """Constant-time comparison of two keys (bytes, so non-ASCII keys work too)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def require_api_key(request: Request,
                    given: Annotated[str | None, Depends(_scheme)] = None) -> None:
    """FastAPI dependency: 401 unless the configured key (if any) came in `X-API-Key`."""
    expected: str | None = getattr(request.app.state, "api_key", None)
    if not expected:
        return
    if not given:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            detail=f"missing API key: send it in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": "ApiKey"})
    if not keys_match(given, expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="invalid API key",
                            headers={"WWW-Authenticate": "ApiKey"})


ApiKey = Depends(require_api_key)
"""`dependencies=[ApiKey]` on a route or router protects it."""
