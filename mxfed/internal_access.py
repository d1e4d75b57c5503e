"""Who may call which internal RPC: the authorization table of the internal plane.

Every RPC of every mxfed service is listed here with the callers it admits;
an RPC that is not listed is refused to everyone (PERMISSION_DENIED), so a
new RPC is unreachable until someone decides who needs it. Callers are
mxfed's parts (each by name), the operator (the ``mxfed`` CLI) and local
actors (bots and bridges, holders of an actor certificate). Actors get the
Perform*/Query*/Stream* surface a bot or bridge needs; the operator gets
that and the administrative calls; nothing outside mxfed's own parts can
feed federation input (Input*, the gateway's Receive*/Send*/Make* calls),
and nothing can ask a service to sign arbitrary data.
"""

from __future__ import annotations

from dataclasses import dataclass

from mxfed.config import PART_NAMES
from mxfed.internal_identity import Caller, CallerKind


@dataclass(frozen=True)
class Access:
    """The callers one RPC admits."""

    parts: frozenset[str] = frozenset()
    actors: bool = False  # local actors, and the operator
    operator: bool = False

    def __or__(self, other: Access) -> Access:
        return Access(
            self.parts | other.parts,
            self.actors or other.actors,
            self.operator or other.operator,
        )

    def admits(self, caller: Caller) -> bool:
        if caller.kind is CallerKind.PART:
            return caller.name in self.parts
        if caller.kind is CallerKind.OPERATOR:
            return self.actors or self.operator
        return self.actors


def parts(*names: str) -> Access:
    return Access(parts=frozenset(names))


ACTORS = Access(actors=True)
OPERATOR = Access(operator=True)
ANYONE = Access(parts=frozenset(PART_NAMES), actors=True)
# Accounts calls as itself when it runs as its own part, and as the keys part while the
# keys process hosts it (accounts_in_keys): its calls admit both.
ACCOUNTS = parts("accounts", "keys")

_RULES: dict[str, dict[str, Access]] = {
    "grpc.health.v1.Health": {"Check": ANYONE, "Watch": ANYONE},
    # Server reflection (mxfed/reflection.py): generic gRPC tools list and describe methods.
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo": ANYONE},
    "mxfed.keys.v1.Keys": {
        "QueryOwnServerKeys": parts("gateway") | ACTORS,
        "QueryServerKeys": parts("gateway"),
        "QueryVerifyKeys": parts("events", "backfill"),
        "VerifyJsonSignatures": parts("events", "backfill"),
        "VerifyRequest": parts("gateway"),
        "PerformKeyRotation": OPERATOR,
        # mxfed doctor: outbound probes of any server, an operator's diagnosis.
        "QueryFederationReport": OPERATOR,
    },
    "mxfed.accounts.v1.Accounts": {
        "PerformSetProfile": ACTORS,
        "QueryProfile": parts("gateway") | ACTORS,
        "PerformUploadKeys": ACTORS,
        "PerformUploadCrossSigningKeys": ACTORS,
        "PerformDeleteDevice": ACTORS,
        "QueryUserDevices": parts("gateway") | ACTORS,
        "QueryKeys": parts("gateway") | ACTORS,
        "PerformClaimKeys": parts("gateway") | ACTORS,
        "PerformMintOpenIdToken": parts("events") | ACTORS,
        "QueryOpenIdToken": parts("gateway"),
        "QueryRemoteDevices": ACTORS,
        "InputDeviceListUpdates": parts("gateway"),
        "QueryToDeviceMessages": ACTORS,
        "PerformAckToDeviceMessages": ACTORS,
        "StreamToDeviceMessages": ACTORS,
        "QueryPresence": parts("gateway") | ACTORS,
    },
    "mxfed.events.v1.Events": {
        "InputTransaction": parts("gateway"),
        "InputPdus": parts("backfill"),
        "PerformCreateRoom": ACTORS,
        "PerformSendEvent": ACTORS,
        "StreamSendEvents": ACTORS,
        "PerformCreateAlias": ACTORS,
        "PerformDeleteAlias": ACTORS,
        "QueryEvents": parts("gateway", "backfill", "sender") | ACCOUNTS | ACTORS,
        "QueryStateAtEvent": parts("gateway") | ACTORS,
        "QueryAuthChain": parts("gateway") | ACTORS,
        "QueryCurrentState": parts("keys") | ACTORS,
        "QueryTimeline": ACTORS,
        "QueryRoomInfo": parts("backfill") | ACCOUNTS | ACTORS,
        "QueryServersInRoom": parts("sender", "backfill") | ACCOUNTS | ACTORS,
        "QueryAlias": parts("gateway") | ACTORS,
        "QueryServerAllowed": parts("gateway", "backfill", "keys") | ACTORS,
        "StreamEvents": parts("sender") | ACCOUNTS | ACTORS,
        "StreamEventBatches": parts("sender") | ACCOUNTS | ACTORS,
    },
    "mxfed.events.v1.Membership": {
        "MakeMembership": parts("gateway"),
        "SendJoin": parts("gateway"),
        "SendLeave": parts("gateway"),
        "SendKnock": parts("gateway"),
        "ReceiveInvite": parts("gateway"),
        "PerformInvite": ACTORS,
        "PerformJoin": ACTORS,
        "PerformLeave": ACTORS,
        "PerformKnock": ACTORS,
        "QueryInvites": ACTORS,
    },
    "mxfed.events.v1.ThirdPartyInvites": {
        "PerformThirdPartyInvite": ACTORS,
        "ReceiveOnBind": parts("gateway"),
        "ExchangeThirdPartyInvite": parts("gateway"),
    },
    # The operator's actions; every part reads the server block list.
    "mxfed.events.v1.Admin": {
        "PerformBlockServer": OPERATOR,
        "PerformUnblockServer": OPERATOR,
        "PerformSetAllowListMode": OPERATOR,
        "QueryServerPolicy": parts("gateway", "keys", "sender", "backfill", "media", "accounts")
        | OPERATOR,
        "PerformShutdownRoom": OPERATOR,
        "PerformBlockRoom": OPERATOR,
        "QueryBlockedRooms": OPERATOR,
        "PerformPurgeHistory": OPERATOR,
        "QueryAuditLog": OPERATOR,
    },
    "mxfed.events.v1.Directory": {
        "PerformPublishRoom": ACTORS,
        "PerformUnpublishRoom": ACTORS,
        "QueryPublicRooms": parts("gateway") | ACTORS,
        "QueryHierarchy": parts("gateway") | ACTORS,
        "QueryRoomsOfUser": ACCOUNTS | ACTORS,
    },
    # The events service's side of serving history; the backfill part serves it.
    "mxfed.events.v1.History": {
        "QueryBackfill": parts("backfill"),
        "QueryMissingEvents": parts("backfill"),
        "QueryEventAtTimestamp": parts("backfill"),
        "QueryBackwardExtremities": parts("backfill"),
        "QueryServersByJoinAge": parts("backfill"),
    },
    "mxfed.backfill.v1.Backfill": {
        "QueryBackfill": parts("gateway"),
        "QueryMissingEvents": parts("gateway"),
        "QueryEventAtTimestamp": parts("gateway"),
        "PerformBackfill": ACTORS,
        "PerformFetchMissingEvents": parts("events"),
        "PerformFetchEvents": parts("events"),
    },
    "mxfed.media.v1.Media": {
        "PerformUpload": ACTORS,
        "PerformCreateMedia": ACTORS,
        "QueryMedia": ACTORS,
        # The gateway serves our media over federation (/media/download, /thumbnail).
        "StreamContent": parts("gateway") | ACTORS,
        "StreamThumbnail": parts("gateway") | ACTORS,
    },
    "mxfed.sender.v1.Sender": {
        "PerformSendEdus": ACCOUNTS | ACTORS,
        "PerformServerUp": parts("gateway"),
        # The keys part asks for mxfed doctor's delivery step.
        "QueryDestinations": parts("keys") | OPERATOR,
    },
}

NOBODY = Access()


def access_for(method: str) -> Access:
    """The callers ``method`` ("/package.Service/Method") admits; nobody when unlisted."""
    service, _, name = method.lstrip("/").partition("/")
    return _RULES.get(service, {}).get(name, NOBODY)


def listed_methods() -> set[str]:
    return {f"/{service}/{name}" for service, rules in _RULES.items() for name in rules}


def rpc_methods() -> list[tuple[str, str]]:
    """Every listed RPC as (full service name, method name)."""
    return [(service, name) for service, rules in _RULES.items() for name in rules]
