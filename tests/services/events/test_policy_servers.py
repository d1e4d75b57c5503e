"""Policy servers (spec v1.18+, server-server API "Policy Servers") with a real one on loopback.

The policy server (tests.support.policy_server) answers ``POST
/_matrix/policy/v1/sign`` over HTTPS with its own policy key, refuses
events whose body says "spam", and can stall. It has a member in the room,
so once the room's ``m.room.policy`` names it the room uses it: our events
carry its signature or are not sent; received events without its valid
signature get one asked for, and are soft-failed when they still have none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from matrix_protocol.canonical_json import decode_json, encode_json
from matrix_protocol.events import Event
from matrix_protocol.policy_servers import POLICY_SERVER_KEY_ID, has_valid_policy_signature
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import generate_signing_key, sign_json
from mxfed_api.events.v1 import events_pb2, membership_pb2, membership_pb2_grpc
from services.events import metrics
from tests.support.events_service import (
    EventsService,
    RemoteServer,
    _public_room_with_remote_member,
)
from tests.support.policy_server import PolicyServer
from tests.support.service_errors import described, errcode

VERSION = "10"
# The policy server listens on 127.0.0.1 with a self-signed certificate.
SETTINGS: dict[str, Any] = {
    "federation_verify_tls": False,
    "federation_allowed_ip_ranges": ["127.0.0.0/8"],
    "policy_server_timeout": 1.0,
}


@pytest.fixture
async def policy_server() -> AsyncIterator[PolicyServer]:
    server = PolicyServer(room_version(VERSION))
    await server.start()
    yield server
    await server.stop()


@dataclass
class Protected:
    events: EventsService
    room_id: str
    admin: str
    alice: str  # a user of ``remote``
    remote: RemoteServer
    policy: PolicyServer

    async def send(self, body: str) -> events_pb2.PerformSendEventResponse:
        return await self.events.send(self.room_id, self.admin, "m.room.message", {"body": body})

    async def stored_pdu(self, event_id: str) -> tuple[int, dict[str, Any]]:
        record = await self.events.event(event_id)
        assert record is not None, event_id
        return record.status, decode_json(record.pdu_json)

    def signed_by_policy(self, pdu: dict[str, Any], event_id: str) -> bool:
        from services.events.policy import usable_policy_server

        policy = usable_policy_server(self.policy.policy_content(), self.events.server_name)
        assert policy is not None
        return has_valid_policy_signature(Event(pdu, room_version(VERSION), event_id), policy)


async def _protected_room(
    events: EventsService, remote: RemoteServer, policy: PolicyServer
) -> Protected:
    room_id, alice = await _public_room_with_remote_member(events, remote, VERSION)
    admin = f"@admin:{events.server_name}"
    # Named but not joined: the room does not use it yet, nobody asks it.
    await events.send(room_id, admin, "m.room.policy", policy.policy_content(), state_key="")
    via = RemoteServer(policy)  # type: ignore[arg-type] - signs with the policy server's own key
    moderator = via.user("moderator")
    head = await events.head(room_id)
    join, join_id = via.pdu(head, "m.room.member", moderator, {"membership": "join"}, moderator)
    assert await events.transaction(policy.server_name, [join]) == {"pdus": {join_id: {}}}
    assert policy.requests == []
    return Protected(events, room_id, admin, alice, remote, policy)


@pytest.fixture
async def protected(
    events_factory: Callable[..., Awaitable[EventsService]],
    remote: RemoteServer,
    policy_server: PolicyServer,
) -> Protected:
    events = await events_factory(**SETTINGS)
    return await _protected_room(events, remote, policy_server)


async def test_our_events_carry_the_policy_servers_signature(protected: Protected) -> None:
    sent = await protected.send("hello")
    status, pdu = await protected.stored_pdu(sent.event_id)
    assert status == events_pb2.EVENT_STATUS_ACCEPTED
    assert protected.signed_by_policy(pdu, sent.event_id)
    # Our own signature is still there, next to the policy server's.
    assert protected.events.server_name in pdu["signatures"]
    assert protected.policy.asked_about(sent.event_id)
    # Asked through the federation client: an X-Matrix request from us.
    authorization = protected.policy.authorizations[-1]
    assert authorization.startswith("X-Matrix ")
    assert f'origin="{protected.events.server_name}"' in authorization


async def test_a_refused_event_is_not_sent_and_the_actor_gets_the_error(
    protected: Protected,
) -> None:
    before = await protected.events.head(protected.room_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await protected.send("buy spam now")
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert described(refused.value) == "M_FORBIDDEN: This looks like spam"
    assert len(protected.policy.requests) == 1
    # Nothing stored: the room's head did not move.
    after = await protected.events.head(protected.room_id)
    assert (after.extremities, after.max_depth) == (before.extremities, before.max_depth)


async def test_state_and_membership_events_are_signed_too_but_not_m_room_policy(
    protected: Protected,
) -> None:
    events, room_id, admin = protected.events, protected.room_id, protected.admin
    topic = await events.send(room_id, admin, "m.room.topic", {"topic": "t"}, state_key="")
    _, pdu = await protected.stored_pdu(topic.event_id)
    assert protected.signed_by_policy(pdu, topic.event_id)
    asked = len(protected.policy.requests)
    # The m.room.policy state event itself is never sent to the policy server.
    policy_event = await events.send(
        room_id, admin, "m.room.policy", protected.policy.policy_content(), state_key=""
    )
    assert len(protected.policy.requests) == asked
    status, pdu = await protected.stored_pdu(policy_event.event_id)
    assert status == events_pb2.EVENT_STATUS_ACCEPTED
    assert POLICY_SERVER_KEY_ID not in pdu["signatures"].get(protected.policy.server_name, {})


async def test_received_events_are_checked_against_the_policy_server(
    protected: Protected,
) -> None:
    events, remote, alice, policy = (
        protected.events,
        protected.remote,
        protected.alice,
        protected.policy,
    )
    version = room_version(VERSION)

    # Unsigned, and the policy server signs when asked: accepted, stored with its signature.
    head = await events.head(protected.room_id)
    fine, fine_id = remote.pdu(head, "m.room.message", alice, {"body": "hi"})
    assert await events.transaction(remote.name, [fine]) == {"pdus": {fine_id: {}}}
    status, pdu = await protected.stored_pdu(fine_id)
    assert status == events_pb2.EVENT_STATUS_ACCEPTED and protected.signed_by_policy(pdu, fine_id)
    assert policy.asked_about(fine_id)

    # Unsigned and refused when asked: soft-failed (stored, not part of the room's head).
    head = await events.head(protected.room_id)
    spam, spam_id = remote.pdu(head, "m.room.message", alice, {"body": "spam"}, advance=False)
    assert await events.transaction(remote.name, [spam]) == {"pdus": {spam_id: {}}}
    status, _ = await protected.stored_pdu(spam_id)
    assert status == events_pb2.EVENT_STATUS_SOFT_FAILED
    assert (await events.head(protected.room_id)).extremities == [fine_id]

    # Signed already: accepted without asking.
    asked = len(policy.requests)
    signed, signed_id = remote.pdu(head, "m.room.message", alice, {"body": "signed spam"})
    signed = policy.signed(signed, version)
    assert await events.transaction(remote.name, [signed]) == {"pdus": {signed_id: {}}}
    status, _ = await protected.stored_pdu(signed_id)
    assert status == events_pb2.EVENT_STATUS_ACCEPTED
    assert len(policy.requests) == asked

    # A signature made with another key (not the room's) and refused when asked again.
    head = await events.head(protected.room_id)
    forged, forged_id = remote.pdu(head, "m.room.message", alice, {"body": "more spam"})
    forged = sign_json(forged, generate_signing_key(), policy.server_name, POLICY_SERVER_KEY_ID)
    assert await events.transaction(remote.name, [forged]) == {"pdus": {forged_id: {}}}
    status, _ = await protected.stored_pdu(forged_id)
    assert status == events_pb2.EVENT_STATUS_SOFT_FAILED
    assert policy.asked_about(forged_id)


async def test_a_policy_server_that_does_not_answer(protected: Protected) -> None:
    """README "Policy servers": our events are not sent (UNAVAILABLE), received unsigned
    ones are soft-failed, the policy server is left alone for a while, and the room can
    always clear its m.room.policy."""
    events, policy = protected.events, protected.policy
    policy.stall = True
    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
        await protected.send("hello?")
    assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
    assert errcode(unavailable.value) == "M_UNKNOWN"
    assert "unavailable" in unavailable.value.details()
    asked = len(policy.requests)

    # Received while it is unavailable: soft-failed, without waiting for it again.
    head = await events.head(protected.room_id)
    message, message_id = protected.remote.pdu(
        head, "m.room.message", protected.alice, {"body": "hi"}
    )
    assert await events.transaction(protected.remote.name, [message]) == {"pdus": {message_id: {}}}
    status, _ = await protected.stored_pdu(message_id)
    assert status == events_pb2.EVENT_STATUS_SOFT_FAILED
    with pytest.raises(grpc.aio.AioRpcError) as paused:
        await protected.send("still there?")
    assert paused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "asking it again in" in paused.value.details()
    assert len(policy.requests) == asked

    # The escape hatch: m.room.policy is never sent to it, so the room can drop it.
    await events.send(protected.room_id, protected.admin, "m.room.policy", {}, state_key="")
    sent = await protected.send("back to normal")
    status, pdu = await protected.stored_pdu(sent.event_id)
    assert status == events_pb2.EVENT_STATUS_ACCEPTED
    assert policy.server_name not in pdu["signatures"]


async def test_send_join_we_host_needs_the_policy_servers_signature(protected: Protected) -> None:
    """MSC4284: the policy server may decline a membership event given to send_join,
    and the request then fails with its error; else the join is stored signed."""
    events, remote = protected.events, protected.remote
    assert events.channel is not None
    membership = membership_pb2_grpc.MembershipStub(events.channel)

    async def send_join(localpart: str, displayname: str) -> tuple[str, Any]:
        user = remote.user(localpart)
        head = await events.head(protected.room_id)
        content = {"membership": "join", "displayname": displayname}
        join, join_id = remote.pdu(head, "m.room.member", user, content, user, advance=False)
        request = membership_pb2.SendJoinRequest(
            origin=remote.name,
            room_id=protected.room_id,
            event_id=join_id,
            pdu_json=encode_json(join),
        )
        return join_id, membership.SendJoin(request)

    spammer_id, call = await send_join("spammer", "spam king")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert described(refused.value) == "M_FORBIDDEN: This looks like spam"
    assert await events.event(spammer_id) is None

    bob_id, call = await send_join("bob", "Bob")
    await call
    status, pdu = await protected.stored_pdu(bob_id)
    assert status == events_pb2.EVENT_STATUS_ACCEPTED and protected.signed_by_policy(pdu, bob_id)


async def test_sends_into_a_room_using_a_policy_server_do_not_build_on_a_kept_head(
    protected: Protected,
) -> None:
    """A send on a head kept from the last one would be built, found to need the policy
    server's signature, and begun again on the head read under the lock: a wasted
    transaction per send, counted as a stale head."""
    await protected.send("first")  # the head kept from the room's set-up is stale
    stale_before = metrics.LOCAL_SEND_STALE_HEADS._value.get()
    for body in ("second", "third"):
        sent = await protected.send(body)
        _, pdu = await protected.stored_pdu(sent.event_id)
        assert protected.signed_by_policy(pdu, sent.event_id)
    assert metrics.LOCAL_SEND_STALE_HEADS._value.get() == stale_before
