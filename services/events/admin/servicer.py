"""gRPC layer of the Admin service (``mxfed.events.v1.Admin``), and its setup.

The caller of each action is the identity its verified client certificate
names (the operator's, ``mxfed:operator``); on a plaintext internal plane
(``internal_tls: false``, development only) it is ``unauthenticated``.
"""

from __future__ import annotations

from typing import Any

import grpc

from mxfed.internal_plane import caller_of
from mxfed.service_errors import BadRequest, reports_service_errors
from mxfed.service_runtime import ServiceContext
from mxfed_api.events.v1 import admin_pb2, admin_pb2_grpc
from services.events.admin.blocks import PolicyMirror
from services.events.admin.logic import AdminActions
from services.events.local_events import LocalEvents

UNAUTHENTICATED = "unauthenticated"


def _caller(context: grpc.aio.ServicerContext) -> str:
    caller = caller_of(context)
    return str(caller) if caller is not None else UNAUTHENTICATED


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, actions: AdminActions) -> None:
        self.actions = actions

    @reports_service_errors
    async def PerformBlockServer(  # noqa: N802
        self, request: admin_pb2.PerformBlockServerRequest, context: Any
    ) -> admin_pb2.PerformBlockServerResponse:
        added = await self.actions.block_server(
            _caller(context), request.pattern, request.reason, request.allow
        )
        return admin_pb2.PerformBlockServerResponse(added=added)

    @reports_service_errors
    async def PerformUnblockServer(  # noqa: N802
        self, request: admin_pb2.PerformUnblockServerRequest, context: Any
    ) -> admin_pb2.PerformUnblockServerResponse:
        removed = await self.actions.unblock_server(
            _caller(context), request.pattern, request.allow
        )
        return admin_pb2.PerformUnblockServerResponse(removed=removed)

    @reports_service_errors
    async def PerformSetAllowListMode(  # noqa: N802
        self, request: admin_pb2.PerformSetAllowListModeRequest, context: Any
    ) -> admin_pb2.PerformSetAllowListModeResponse:
        was = await self.actions.set_allow_list_mode(_caller(context), request.enabled)
        return admin_pb2.PerformSetAllowListModeResponse(was_enabled=was)

    @reports_service_errors
    async def QueryServerPolicy(  # noqa: N802
        self, request: admin_pb2.QueryServerPolicyRequest, context: Any
    ) -> admin_pb2.QueryServerPolicyResponse:
        if request.known_version and request.known_version == await self.actions.policy_version():
            return admin_pb2.QueryServerPolicyResponse(
                version=request.known_version, unchanged=True
            )
        rows = await self.actions.policy()
        return admin_pb2.QueryServerPolicyResponse(
            version=rows.version,
            allow_list_mode=rows.allow_list_mode,
            rules=[
                admin_pb2.ServerRule(
                    pattern=rule.pattern,
                    allow=rule.allow,
                    reason=rule.reason,
                    created_by=rule.created_by,
                    created_ts=rule.created_ts,
                )
                for rule in rows.rules
            ],
        )

    @reports_service_errors
    async def PerformShutdownRoom(  # noqa: N802
        self, request: admin_pb2.PerformShutdownRoomRequest, context: Any
    ) -> admin_pb2.PerformShutdownRoomResponse:
        result = await self.actions.shutdown_room(
            _caller(context), request.room_id, request.reason, request.purge
        )
        return admin_pb2.PerformShutdownRoomResponse(
            left_users=result.left_users, purged_events=result.purged_events
        )

    @reports_service_errors
    async def PerformBlockRoom(  # noqa: N802
        self, request: admin_pb2.PerformBlockRoomRequest, context: Any
    ) -> admin_pb2.PerformBlockRoomResponse:
        changed = await self.actions.block_room(
            _caller(context), request.room_id, request.reason, request.unblock
        )
        return admin_pb2.PerformBlockRoomResponse(changed=changed)

    @reports_service_errors
    async def QueryBlockedRooms(  # noqa: N802
        self, request: admin_pb2.QueryBlockedRoomsRequest, context: Any
    ) -> admin_pb2.QueryBlockedRoomsResponse:
        rows = await self.actions.policy()
        return admin_pb2.QueryBlockedRoomsResponse(
            rooms=[
                admin_pb2.BlockedRoom(
                    room_id=row.room_id,
                    reason=row.reason,
                    created_by=row.created_by,
                    created_ts=row.created_ts,
                )
                for row in rows.blocked_rooms
            ]
        )

    @reports_service_errors
    async def PerformPurgeHistory(  # noqa: N802
        self, request: admin_pb2.PerformPurgeHistoryRequest, context: Any
    ) -> admin_pb2.PerformPurgeHistoryResponse:
        which = request.WhichOneof("before")
        if which is None:
            raise BadRequest("give before_ts or before_event_id", "M_MISSING_PARAM")
        purged, kept = await self.actions.purge_history(
            _caller(context),
            request.room_id,
            request.before_ts if which == "before_ts" else None,
            request.before_event_id if which == "before_event_id" else None,
        )
        return admin_pb2.PerformPurgeHistoryResponse(purged_events=purged, kept_events=kept)

    @reports_service_errors
    async def QueryAuditLog(  # noqa: N802
        self, request: admin_pb2.QueryAuditLogRequest, context: Any
    ) -> admin_pb2.QueryAuditLogResponse:
        limit = request.limit if 0 < request.limit <= 10_000 else 100
        rows = await self.actions.audit_log(limit)
        return admin_pb2.QueryAuditLogResponse(
            records=[
                admin_pb2.AuditRecord(
                    id=row.id,
                    ts=row.ts,
                    caller=row.caller,
                    action=row.action,
                    target=row.target,
                    details_json=row.details_json.encode(),
                )
                for row in rows
            ]
        )


async def setup_admin(context: ServiceContext, local: LocalEvents) -> AdminActions:
    """Register the Admin servicer; load the lists now and follow their changes."""
    mirror = PolicyMirror(context.pool)
    await mirror.refresh()
    interval = context.config.server_policy_refresh_interval
    context.spawn(lambda: mirror.run(interval), name="events-admin-policy")
    actions = AdminActions(
        context.pool, local, context.config.server_name, mirror, local.core.event_cache
    )
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(actions), context.server)
    return actions
