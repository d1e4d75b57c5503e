"""Per-origin concurrency limit for authenticated federation requests.

Spec: https://spec.matrix.org/v1.19/client-server-api/#rate-limiting
(servers SHOULD rate-limit, refusing with 429
``M_LIMIT_EXCEEDED`` and a ``Retry-After`` header). Only requests whose
X-Matrix signature verified are counted against their origin, so nobody can
spend another server's allowance by forging its name. ``/send`` is held to
one transaction in flight per origin by its own route.

``require_origin`` calls :meth:`OriginLimiter.enter` once the origin is
known; :class:`OriginLimitMiddleware` gives the slot back when the response
is done, whatever the handler did.

The counts live in this process. With several gateway replicas the limit
holds per origin because the federation proxy in front of them
(``deploy/compose/haproxy.cfg``, compose and Kubernetes) sends every request
of one X-Matrix origin to the same replica.
"""

from __future__ import annotations

from collections import defaultdict

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import MatrixError

MAX_CONCURRENT_PER_ORIGIN = 32
_SCOPE_KEY = "mxfed.counted_origin"


class OriginLimiter:
    def __init__(self, limit: int = MAX_CONCURRENT_PER_ORIGIN) -> None:
        self.limit = limit
        self.active: defaultdict[str, int] = defaultdict(int)

    def enter(self, scope: Scope, origin: str) -> None:
        if scope.get(_SCOPE_KEY):
            return  # this request is already counted
        if self.active[origin] >= self.limit:
            raise MatrixError(
                429,
                "M_LIMIT_EXCEEDED",
                "Too many concurrent requests from your server",
                headers={"Retry-After": "1"},
                retry_after_ms=1000,
            )
        self.active[origin] += 1
        scope[_SCOPE_KEY] = origin

    def leave(self, scope: Scope) -> None:
        origin = scope.pop(_SCOPE_KEY, None)
        if origin is None:
            return
        self.active[origin] -= 1
        if not self.active[origin]:
            del self.active[origin]


class OriginLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: OriginLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.leave(scope)
