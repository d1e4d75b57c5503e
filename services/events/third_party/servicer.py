"""gRPC layer of the ThirdPartyInvites service, and its ``setup`` in the events process.

Errors become typed gRPC statuses (:mod:`mxfed.service_errors`; 400 →
INVALID_ARGUMENT, 403 → PERMISSION_DENIED, 404 → NOT_FOUND, anything else →
UNAVAILABLE), as the Membership service does.
"""

from __future__ import annotations

from typing import TypeVar

from matrix_protocol.canonical_json import decode_json
from matrix_protocol.membership import MembershipError
from mxfed.federation_client.from_config import federation_client_from_config
from mxfed.service_errors import reports_service_errors
from mxfed.service_runtime import ServiceContext
from mxfed_api.accounts.v1 import accounts_pb2_grpc
from mxfed_api.events.v1 import third_party_pb2, third_party_pb2_grpc
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.events.local_events import LocalEvents
from services.events.membership.common import MembershipDeps
from services.events.third_party.identity import IdentityClient
from services.events.third_party.logic import ThirdParty

T = TypeVar("T")


class ThirdPartyInvitesServicer(third_party_pb2_grpc.ThirdPartyInvitesServicer):
    def __init__(self, logic: ThirdParty) -> None:
        self.logic = logic

    @reports_service_errors
    async def PerformThirdPartyInvite(self, request, context):  # noqa: N802, ANN001, ANN201
        event_id, token, display_name = await self.logic.perform_invite(
            request.room_id,
            request.sender,
            request.id_server,
            request.medium,
            request.address,
            request.id_access_token,
        )
        return third_party_pb2.PerformThirdPartyInviteResponse(
            event_id=event_id, token=token, display_name=display_name
        )

    @reports_service_errors
    async def ReceiveOnBind(self, request, context):  # noqa: N802, ANN001, ANN201
        try:
            body = decode_json(request.body_json)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("invites"), list):
            raise MembershipError(400, "M_BAD_JSON", "the onbind body must be an object")
        outcomes = await self.logic.on_bind(body)
        return third_party_pb2.ReceiveOnBindResponse(
            outcomes=[
                third_party_pb2.OnBindOutcome(
                    room_id=o.room_id,
                    token=o.token,
                    result=o.result,
                    event_id=o.event_id,
                    error=o.error,
                )
                for o in outcomes
            ]
        )

    @reports_service_errors
    async def ExchangeThirdPartyInvite(self, request, context):  # noqa: N802, ANN001, ANN201
        event_id = await self.logic.exchange(request.origin, request.room_id, request.event_json)
        return third_party_pb2.ExchangeThirdPartyInviteResponse(event_id=event_id)


async def setup_third_party(context: ServiceContext, local: LocalEvents) -> None:
    """Register the ThirdPartyInvites servicer next to the Events one (same core)."""
    config = context.config
    client = federation_client_from_config(config)
    context.on_stop(client.close)
    identity = IdentityClient(client, allow_http=config.identity_server_allow_http)
    deps = MembershipDeps(
        pool=context.pool,
        core=local.core,
        local=local,
        keys=keys_pb2_grpc.KeysStub(context.channel("keys")),
        client=client,
        signing_key=context.signing_key,
        spawn=context.spawn,
    )
    accounts = accounts_pb2_grpc.AccountsStub(context.channel("accounts"))
    third_party_pb2_grpc.add_ThirdPartyInvitesServicer_to_server(
        ThirdPartyInvitesServicer(ThirdParty(deps, accounts, identity)), context.server
    )
