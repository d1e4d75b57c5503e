"""The federation access log: one structured record per request.

Fields: ``origin`` (the X-Matrix origin once verified, else null), ``client``
(the peer address), ``method``, ``route`` (the path template, never the
raw path with its ids), ``status``, ``duration_ms``, ``bytes_in`` and
``bytes_out`` (bodies), and ``trace_id`` (the request's trace when tracing
is on, ``tracing_otlp_endpoint``; else null). Logged to ``mxfed.access`` at
``access_log_level`` (``OFF``: not installed). A plain ASGI middleware, the
outermost one, so refusals by the other middlewares are logged too.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mxfed.logs import current_trace_id

log = logging.getLogger("mxfed.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, level: int) -> None:
        self.app = app
        self.level = level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(self.level):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        bytes_in = bytes_out = 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        finally:
            state = scope.get("state") or {}
            client = scope.get("client")
            log.log(
                self.level,
                "request",
                extra={
                    "origin": state.get("origin"),
                    "client": client[0] if client else None,
                    "method": scope["method"],
                    "route": getattr(scope.get("route"), "path", "unmatched"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "trace_id": current_trace_id(),
                },
            )


def install_access_log(app: FastAPI, level_name: str) -> None:
    if level_name == "OFF":
        return
    app.add_middleware(AccessLogMiddleware, level=logging.getLevelName(level_name))
