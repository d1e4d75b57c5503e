"""gRPC layer of the Membership service, and its ``setup`` inside the events process.

Errors become typed gRPC statuses (:mod:`mxfed.service_errors`; 400 →
INVALID_ARGUMENT, 403 → PERMISSION_DENIED, 404 → NOT_FOUND, anything else →
UNAVAILABLE); M_INCOMPATIBLE_ROOM_VERSION carries ``room_version`` in the
ErrorInfo metadata.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.membership import MembershipError
from mxfed.federation_client.from_config import federation_client_from_config
from mxfed.service_errors import reports_service_errors
from mxfed.service_runtime import ServiceContext
from mxfed_api.events.v1 import membership_pb2, membership_pb2_grpc
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.events.admin.blocks import BLOCKED_ROOMS
from services.events.local_events import LocalEvents
from services.events.membership import storage as oob_storage
from services.events.membership.common import MembershipDeps
from services.events.membership.join import Join
from services.events.membership.knock import Knock
from services.events.membership.leave import Leave
from services.events.membership.received_invites import ReceivedInvites
from services.events.membership.resident import Resident
from services.events.membership.resync import PartialStateResync
from services.events.membership.templates import make_membership
from services.events.room_batch import RoomsCore

log = logging.getLogger(__name__)

T = TypeVar("T")


class MembershipServicer(membership_pb2_grpc.MembershipServicer):
    def __init__(self, deps: MembershipDeps) -> None:
        self.deps = deps
        self.resident = Resident(deps)
        self.resync = PartialStateResync(deps)
        self.join = Join(deps, self.resync)
        self.leave = Leave(deps)
        self.knock = Knock(deps)
        self.invites = ReceivedInvites(deps)

    @reports_service_errors
    async def MakeMembership(self, request, context):  # noqa: N802, ANN001, ANN201
        BLOCKED_ROOMS.check(request.room_id)
        version, template = await make_membership(
            self.deps,
            request.origin,
            request.room_id,
            request.user_id,
            request.membership,
            list(request.supported_versions),
        )
        return membership_pb2.MakeMembershipResponse(
            room_version=version, event_json=encode_json(template)
        )

    @reports_service_errors
    async def SendJoin(self, request, context):  # noqa: N802, ANN001, ANN201
        BLOCKED_ROOMS.check(request.room_id)
        body = await self.resident.send_join(
            request.origin,
            request.room_id,
            request.event_id,
            request.pdu_json,
            request.omit_members,
        )
        return membership_pb2.SendJoinResponse(response_json=body)

    @reports_service_errors
    async def SendLeave(self, request, context):  # noqa: N802, ANN001, ANN201
        BLOCKED_ROOMS.check(request.room_id)
        body = await self.resident.send_leave(
            request.origin, request.room_id, request.event_id, request.pdu_json
        )
        return membership_pb2.SendLeaveResponse(response_json=body)

    @reports_service_errors
    async def SendKnock(self, request, context):  # noqa: N802, ANN001, ANN201
        BLOCKED_ROOMS.check(request.room_id)
        body = await self.resident.send_knock(
            request.origin, request.room_id, request.event_id, request.pdu_json
        )
        return membership_pb2.SendKnockResponse(response_json=body)

    @reports_service_errors
    async def ReceiveInvite(self, request, context):  # noqa: N802, ANN001, ANN201
        BLOCKED_ROOMS.check(request.room_id)
        signed = await self.invites.receive_invite(
            request.origin,
            request.room_id,
            request.event_id,
            request.room_version,
            request.pdu_json,
            request.invite_room_state_json,
        )
        return membership_pb2.ReceiveInviteResponse(event_json=signed)

    @reports_service_errors
    async def PerformInvite(self, request, context):  # noqa: N802, ANN001, ANN201
        BLOCKED_ROOMS.check(request.room_id)
        event_id = await self.resident.perform_invite(
            request.room_id, request.sender, request.target, request.reason
        )
        return membership_pb2.PerformInviteResponse(event_id=event_id)

    @reports_service_errors
    async def PerformJoin(self, request, context):  # noqa: N802, ANN001, ANN201
        content: Any = {}
        if request.content_json:
            try:
                content = decode_json(request.content_json)
            except ValueError:
                content = None
            if not isinstance(content, dict):
                raise MembershipError(400, "M_BAD_JSON", "content_json must be a JSON object")
        room_id, event_id, remote = await self.join.perform_join(
            request.room_id_or_alias,
            request.user_id,
            list(request.servers),
            request.reason,
            content,
        )
        return membership_pb2.PerformJoinResponse(room_id=room_id, event_id=event_id, remote=remote)

    @reports_service_errors
    async def PerformLeave(self, request, context):  # noqa: N802, ANN001, ANN201
        event_id = await self.leave.perform_leave(request.room_id, request.user_id, request.reason)
        return membership_pb2.PerformLeaveResponse(event_id=event_id)

    @reports_service_errors
    async def PerformKnock(self, request, context):  # noqa: N802, ANN001, ANN201
        room_id, event_id, stripped = await self.knock.perform_knock(
            request.room_id_or_alias, request.user_id, list(request.servers), request.reason
        )
        return membership_pb2.PerformKnockResponse(
            room_id=room_id, event_id=event_id, stripped_state_json=encode_json(stripped)
        )

    @reports_service_errors
    async def QueryInvites(self, request, context):  # noqa: N802, ANN001, ANN201
        rows = await self.invites.query_invites(request.user_id)
        return membership_pb2.QueryInvitesResponse(
            memberships=[
                membership_pb2.OutOfBandMembership(
                    room_id=row.room_id,
                    user_id=row.user_id,
                    membership=row.membership,
                    event_id=row.event_id,
                    room_version=row.room_version,
                    sender=row.sender,
                    via_server=row.via_server,
                    event_json=row.event_json.encode(),
                    stripped_state_json=row.stripped_state_json.encode(),
                    received_ts=row.received_ts,
                )
                for row in rows
            ]
        )


async def setup_membership(context: ServiceContext, local: LocalEvents) -> None:
    """Register the Membership servicer next to the Events one (same core and caches)."""
    core: RoomsCore = local.core
    await oob_storage.create_tables(context.pool)
    client = federation_client_from_config(context.config)
    context.on_stop(client.close)
    deps = MembershipDeps(
        pool=context.pool,
        core=core,
        local=local,
        keys=keys_pb2_grpc.KeysStub(context.channel("keys")),
        client=client,
        signing_key=context.signing_key,
        spawn=context.spawn,
    )
    servicer = MembershipServicer(deps)
    membership_pb2_grpc.add_MembershipServicer_to_server(servicer, context.server)
    # Rooms left partial by a stop or a crash: their resyncs go on.
    await servicer.resync.resume_all()
