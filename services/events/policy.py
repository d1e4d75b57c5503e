"""Asking a room's policy server to sign events: ours before we send them, received ones without.

Spec: https://spec.matrix.org/v1.19/server-server-api/#policy-servers —
"Asking for a Policy Server signature on an event" (``POST
/_matrix/policy/v1/sign`` before sending any event in a room that uses one;
an error means the event is not sent) and "Validating Policy Server
signatures" (a received event whose signature is missing or invalid: ask
for a new one; still none → soft fail, step 7 of
https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu).

This module only does the asking, through the federation client (X-Matrix,
block lists, a deadline of ``policy_server_timeout`` seconds). The decision
is taken in the one write path: :class:`~services.events.room_batch.RoomBatch`
checks the signature against the room's current state when it adds the
event (soft failure for received events, refusal for ours). What a policy
server that does not answer means:

* a timeout, a connection failure or a 5xx: the policy server is
  *unavailable*; for :data:`UNAVAILABLE_PAUSE` seconds it is not asked again
  (so a dead policy server costs one deadline, not one per event). Our own
  events are not sent (the actor gets UNAVAILABLE, errcode ``M_UNKNOWN``,
  and may retry); received events without a valid signature are soft-failed
  at once. Events that already carry a valid signature are unaffected.
* a 4xx answer is its refusal: our event is not sent and the actor gets the
  policy server's errcode and message verbatim (PERMISSION_DENIED; 429 →
  RESOURCE_EXHAUSTED ``M_LIMIT_EXCEEDED``).

No room is blocked for ever: each call ends by its deadline, and the
``m.room.policy`` state event itself is never sent to the policy server, so
the room's moderators can always clear or replace it (as can the policy
server by leaving the room).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import asyncpg
import grpc

from matrix_protocol.events import Event
from matrix_protocol.policy_servers import (
    POLICY_STATE_KEY,
    PolicyServer,
    has_valid_policy_signature,
    needs_policy_signature,
    policy_server_from_content,
    with_policy_signature,
)
from mxfed.bounded import BoundedDict
from mxfed.federation_client import (
    FederationClient,
    FederationError,
    HttpResponseError,
    federation_path,
)
from mxfed.service_errors import ServiceError, Unavailable
from services.events import metrics, storage
from services.events.pdu_checks import CheckedPdu

log = logging.getLogger(__name__)

SIGN_PATH = federation_path("_matrix", "policy", "v1", "sign")
# Seconds an unavailable policy server is left alone before it is asked again.
UNAVAILABLE_PAUSE = 30.0
# Policy servers remembered as unavailable (their names come from room state).
MAX_PAUSED = 10_000
# /sign requests in flight at once from this process.
MAX_CONCURRENT_ASKS = 32
_ERRCODE = re.compile(r"M_[A-Z0-9_]{1,64}|[a-z0-9._-]{1,64}\.[A-Z0-9_]{1,64}")
_MAX_ERROR_TEXT = 500


class PolicyServerRefused(ServiceError):
    """The room's policy server refused to sign the event (its errcode, verbatim)."""

    status = grpc.StatusCode.PERMISSION_DENIED
    errcode = "M_FORBIDDEN"


class PolicyServerRateLimited(ServiceError):
    """The room's policy server answered 429: try again later."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    errcode = "M_LIMIT_EXCEEDED"


class PolicyServerUnavailable(Unavailable):
    """The room's policy server did not answer in time, or not usably."""


def _errcode(value: Any) -> str:
    return value if isinstance(value, str) and _ERRCODE.fullmatch(value) else "M_FORBIDDEN"


def _text(value: Any, default: str) -> str:
    return value[:_MAX_ERROR_TEXT] if isinstance(value, str) and value else default


async def rooms_naming_one(conn: asyncpg.Connection, room_ids: Sequence[str]) -> set[str]:
    """Which of ``room_ids`` have an ``m.room.policy`` state event (maybe not a valid one)."""
    return set(await storage.current_state_of_rooms(conn, room_ids, *POLICY_STATE_KEY))


class PolicyServers:
    """The ``/sign`` calls of one events process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        server_name: str,
        client: FederationClient | None,
        timeout: float,  # noqa: ASYNC109 - the deadline of one /sign call
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.server_name = server_name
        self.client = client
        self.timeout = timeout
        self._clock = clock
        self._paused: BoundedDict[str, float] = BoundedDict(
            "events_policy_servers_paused", MAX_PAUSED
        )
        self._asks = asyncio.Semaphore(MAX_CONCURRENT_ASKS)

    # ------------------------------------------------------------ which one

    async def for_room(self, conn: asyncpg.Connection, room_id: str) -> PolicyServer | None:
        """The policy server the room's stored current state names, if the room uses one.

        A read outside the room's lock, good for deciding whom to ask; the
        decision itself is :meth:`RoomBatch.policy_server`'s.
        """
        ids = await storage.current_state_ids(conn, room_id, [POLICY_STATE_KEY])
        if not ids:
            return None
        stored = (await storage.fetch_events(conn, ids[:1])).get(ids[0])
        if stored is None:
            return None
        policy = usable_policy_server(stored.event.content, self.server_name)
        if policy is None or not await storage.server_has_joined_member(conn, room_id, policy.via):
            return None
        return policy

    # ------------------------------------------------------------ asking

    async def sign(
        self, policy: PolicyServer, event: Event, pdu: dict[str, Any]
    ) -> tuple[Event, dict[str, Any]]:
        """``event`` with the policy server's valid signature merged in; raises if there is none.

        Raises :class:`PolicyServerRefused` (a 4xx answer, an answer without
        a signature, or one that does not verify with the room's key),
        :class:`PolicyServerRateLimited` or :class:`PolicyServerUnavailable`.
        """
        via = policy.via
        paused_until = self._paused.get(via)
        now = self._clock()
        if paused_until is not None and paused_until > now:
            metrics.POLICY_ASKS.labels("paused").inc()
            raise PolicyServerUnavailable(
                f"the room's policy server {via} was unavailable; asking it again in"
                f" {paused_until - now:.0f} s"
            )
        if self.client is None:
            raise PolicyServerUnavailable("this process cannot reach policy servers")
        try:
            async with self._asks:
                answer = await self.client.post_json(
                    via, SIGN_PATH, pdu, timeout=self.timeout, idempotent=True
                )
        except HttpResponseError as error:
            if error.status == 429:
                metrics.POLICY_ASKS.labels("rate_limited").inc()
                raise PolicyServerRateLimited(
                    _text(error.error, f"the room's policy server {via} is rate limiting us"),
                    retry_after_ms=error.retry_after_ms or 0,
                ) from None
            if error.status >= 500:
                self._pause(via)
                raise PolicyServerUnavailable(
                    f"the room's policy server {via} failed: HTTP {error.status}"
                ) from None
            metrics.POLICY_ASKS.labels("refused").inc()
            raise PolicyServerRefused(
                _text(error.error, f"the room's policy server {via} refused the event"),
                _errcode(error.errcode),
            ) from None
        except FederationError as error:
            self._pause(via)
            raise PolicyServerUnavailable(
                f"the room's policy server {via} is unavailable: {error}"
            ) from None
        merged = with_policy_signature(pdu, answer, policy)
        signed = Event(merged, event.room_version, event.event_id) if merged else None
        if merged is None or signed is None or not has_valid_policy_signature(signed, policy):
            metrics.POLICY_ASKS.labels("bad_signature").inc()
            raise PolicyServerRefused(
                f"the room's policy server {via} answered without a signature that verifies"
                " with the key in the room's m.room.policy"
            )
        metrics.POLICY_ASKS.labels("signed").inc()
        self._paused.pop(via, None)
        return signed, merged

    def _pause(self, via: str) -> None:
        metrics.POLICY_ASKS.labels("unavailable").inc()
        self._paused[via] = self._clock() + UNAVAILABLE_PAUSE

    async def sign_received_rooms(
        self, by_room: Mapping[str, Sequence[CheckedPdu]], named: Collection[str] | None = None
    ) -> None:
        """:meth:`sign_received` for several rooms, with one query for those naming no
        policy server (most rooms: the hot path pays that one query per transaction);
        ``named``: the caller's :func:`rooms_naming_one` (no query then)."""
        wanted = [room_id for room_id, pdus in by_room.items() if pdus]
        if not wanted:
            return
        if named is None:
            async with self.pool.acquire() as conn:
                named = await rooms_naming_one(conn, wanted)
        named = [room_id for room_id in named if room_id in wanted]
        if named:
            await asyncio.gather(*(self.sign_received(r, by_room[r]) for r in named))

    async def sign_received(self, room_id: str, pdus: Sequence[CheckedPdu]) -> None:
        """Ask for the signatures received events of ``room_id`` lack, before their batch.

        Events that carry a valid signature of the room's policy server, or
        get one now, are marked (``CheckedPdu.policy_signed_by``) so the
        batch need not verify it again; the others are left as they are and
        the batch soft-fails them (a refusal or an unavailable policy server
        changes nothing here).
        """
        todo = [p for p in pdus if p.refusal is None and _needs_signature(p.event)]
        if not todo:
            return
        async with self.pool.acquire() as conn:
            policy = await self.for_room(conn, room_id)
        if policy is None:
            return
        unsigned = []
        for checked in todo:
            if has_valid_policy_signature(checked.event, policy):
                checked.policy_signed_by = policy
            else:
                unsigned.append(checked)
        await asyncio.gather(*(self._ask_for(policy, checked) for checked in unsigned))

    async def _ask_for(self, policy: PolicyServer, checked: CheckedPdu) -> None:
        try:
            checked.event, checked.pdu = await self.sign(policy, checked.event, checked.pdu)
        except ServiceError as error:
            log.info(
                "no policy server signature for a received event",
                extra={
                    "event_id": checked.event.event_id,
                    "room_id": checked.event.room_id,
                    "policy_server": policy.via,
                    "error": f"{error.errcode}: {error.message}",
                },
            )
            return
        checked.policy_signed_by = policy


def _needs_signature(event: Event) -> bool:
    return needs_policy_signature(event.type, event.state_key)


def usable_policy_server(content: Any, server_name: str) -> PolicyServer | None:
    """The policy server a ``m.room.policy`` content names, unless invalid or this server.

    NOTSPEC: a room naming this server is treated as using none (mxfed is
    not a policy server and answers ``/sign`` with M_UNRECOGNIZED), as
    Synapse does; the joined-member half is the caller's to check.
    """
    if not isinstance(content, Mapping):
        return None
    policy = policy_server_from_content(content)
    if policy is None or policy.via == server_name:
        return None
    return policy


__all__ = [
    "PolicyServerRateLimited",
    "PolicyServerRefused",
    "PolicyServerUnavailable",
    "PolicyServers",
    "usable_policy_server",
]
