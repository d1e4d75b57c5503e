"""Tells the sender that a server is up when it authenticates a request to us.

NOTSPEC: the spec leaves backoff to the implementation; like Synapse, a server
that reaches us with a valid request is evidently reachable, so its outbound
backoff is reset and its queue woken.
The call is fire-and-forget and made at most once per interval per origin,
so a busy peer costs one RPC per interval, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from mxfed.bounded import BoundedDict
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc

log = logging.getLogger(__name__)

NOTIFY_INTERVAL = 30.0


class ServerUpNotifier:
    def __init__(self, channel: grpc.aio.Channel, interval: float = NOTIFY_INTERVAL) -> None:
        self._stub = sender_pb2_grpc.SenderStub(channel)
        self._interval = interval
        # One entry per origin that authenticated lately: bounded all the same.
        self._last_notified: BoundedDict[str, float] = BoundedDict(
            "gateway_server_up_notified", 10_000
        )
        self._pending: set[asyncio.Task[None]] = set()

    def seen(self, origin: str) -> None:
        now = time.monotonic()
        if now - self._last_notified.get(origin, -self._interval) < self._interval:
            return
        self._last_notified[origin] = now
        task = asyncio.create_task(self._notify(origin))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _notify(self, origin: str) -> None:
        try:
            await self._stub.PerformServerUp(
                sender_pb2.PerformServerUpRequest(server_name=origin), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            # The sender being down must never fail inbound requests.
            log.debug(
                "server-up notification failed", extra={"origin": origin, "code": str(exc.code())}
            )
