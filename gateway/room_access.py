"""May the requesting server read this room? A dependency shared by room routes.

Spec: https://spec.matrix.org/v1.19/server-server-api/#server-access-control-lists-acls
(ACLs MUST be enforced with 403 ``M_FORBIDDEN`` on ``/state``, ``/state_ids``,
``/event_auth``, ``/backfill``, ``/get_missing_events``, the membership
handshakes...; [Synapse] also requires the requester to have a joined member,
see https://spec.matrix.org/v1.19/client-server-api/#room-history-visibility).
The events service owns the room state, so the decision is one
``QueryServerAllowed`` call. A room still in partial state here (joined with
``omit_members``, resyncing) is refused with 403
``ORG.MATRIX.MSC3895_UNABLE_DUE_TO_PARTIAL_STATE`` (MSC3895, as Synapse does):
its state lacks members, so answers would be incomplete; the asker tries
another server of the room.

Use it on a route whose path names the room ``{room_id}``::

    @router.get("/_matrix/federation/v1/state_ids/{room_id}")
    async def state_ids(room_id: str, origin: str = Depends(require_joined_room_access)): ...

The dependency verifies X-Matrix itself (through ``require_origin``) and
returns the verified origin, so a route needs only this one dependency.
"""

from __future__ import annotations

from fastapi import Depends, Request

from gateway.errors import MatrixError, forbidden, not_found
from gateway.xmatrix_auth import require_origin
from mxfed.service_errors import UNABLE_DUE_TO_PARTIAL_STATE
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc

# Reads are cheap for the service; a slow answer means it is overloaded or down.
QUERY_TIMEOUT = 30.0


def events_stub(request: Request) -> events_pb2_grpc.EventsStub:
    return events_pb2_grpc.EventsStub(request.app.state.services.channel("events"))


def partial_state_refusal() -> MatrixError:
    """403 ``ORG.MATRIX.MSC3895_UNABLE_DUE_TO_PARTIAL_STATE``: the room is resyncing here."""
    return MatrixError(
        403, UNABLE_DUE_TO_PARTIAL_STATE, "Unable to answer now: the room is partial-stated here"
    )


async def check_room_access(
    request: Request,
    room_id: str,
    server_name: str,
    *,
    check_acl: bool = True,
    require_joined: bool = True,
) -> None:
    """Raise 404 ``M_NOT_FOUND`` for an unknown room, 403 ``M_FORBIDDEN`` when refused."""
    reply = await events_stub(request).QueryServerAllowed(
        events_pb2.QueryServerAllowedRequest(
            room_id=room_id,
            server_name=server_name,
            check_acl=check_acl,
            require_joined=require_joined,
        ),
        timeout=QUERY_TIMEOUT,
    )
    if not reply.room_exists:
        raise not_found("Unknown room")
    if reply.partial_state:
        raise partial_state_refusal()
    if not reply.allowed:
        raise forbidden(reply.reason or f"{server_name} may not access this room")


async def require_joined_room_access(
    room_id: str, request: Request, origin: str = Depends(require_origin)
) -> str:
    """The verified origin, after checking it passes the ACL and has a joined member."""
    await check_room_access(request, room_id, origin, check_acl=True, require_joined=True)
    return origin


async def require_acl_room_access(
    room_id: str, request: Request, origin: str = Depends(require_origin)
) -> str:
    """The verified origin, after checking only the room's ACL (for make_join and friends)."""
    await check_room_access(request, room_id, origin, check_acl=True, require_joined=False)
    return origin
