"""Refuse request targets with a NUL character before any route sees them.

No Matrix identifier, room alias, token or parameter may contain U+0000, and
PostgreSQL cannot store it in text, so a path segment or query value with a
NUL (``%00`` once decoded) would otherwise reach a service and fail there as
an internal error. It is bad input: 400 ``M_INVALID_PARAM``.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send


class RefuseNulMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_nul(scope):
            body = orjson.dumps(
                {"errcode": "M_INVALID_PARAM", "error": "The request target contains a NUL"}
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _has_nul(scope: Scope) -> bool:
    query = scope.get("query_string") or b""
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query
