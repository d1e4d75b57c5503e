"""To-device messages from a Synapse user reach an mxfed user's device.

A whole mxfed runs (``MxfedProcess``); its user has devices created through
Accounts (``PerformUploadKeys``). A Synapse user sends
``PUT /_matrix/client/v3/sendToDevice/{type}/{txnId}`` naming that device,
and then ``*`` (all of the user's devices); Synapse turns each into an
``m.direct_to_device`` EDU in a ``/send`` transaction to mxfed (no shared
room is needed). The messages come out of Accounts' StreamToDeviceMessages
and QueryToDeviceMessages, once each, with Synapse's sender, type and
message_id.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from synapse_harness import SynapseClient, SynapseServer, wait_until

from mxfed_api.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]


@pytest.fixture
async def accounts(mxfed: MxfedProcess) -> AsyncIterator[accounts_pb2_grpc.AccountsStub]:
    channel = mxfed.channel("keys")
    yield accounts_pb2_grpc.AccountsStub(channel)
    await channel.close()


async def send_to_device(
    client: SynapseClient, token: str, event_type: str, messages: dict[str, Any]
) -> None:
    txn_id = secrets.token_hex(8)
    await client.request(
        "PUT",
        f"/_matrix/client/v3/sendToDevice/{quote(event_type, safe='')}/{txn_id}",
        token,
        json={"messages": messages},
    )


async def test_synapse_user_sends_to_an_mxfed_device(
    mxfed: MxfedProcess,
    synapse: SynapseServer,
    synapse_client: SynapseClient,
    accounts: accounts_pb2_grpc.AccountsStub,
) -> None:
    sender, token = await synapse_client.register(f"tdsender_{secrets.token_hex(4)}")
    alice = f"@alice_{secrets.token_hex(4)}:{mxfed.server_name}"
    for device_id in ("ALICE1", "ALICE2"):
        await accounts.PerformUploadKeys(
            accounts_pb2.PerformUploadKeysRequest(user_id=alice, device_id=device_id),
            timeout=30,
        )

    streamed: list[accounts_pb2.ToDeviceMessage] = []
    stream = accounts.StreamToDeviceMessages(
        accounts_pb2.StreamToDeviceMessagesRequest(user_id=alice, device_id="ALICE1")
    )

    async def follow() -> None:
        async for message in stream:
            streamed.append(message)

    follower = asyncio.create_task(follow())
    try:
        await send_to_device(
            synapse_client, token, "org.example.ping", {alice: {"ALICE1": {"n": 1}}}
        )
        await wait_until(lambda: len(streamed) >= 1, timeout=60)
        await send_to_device(synapse_client, token, "org.example.ping", {alice: {"*": {"n": 2}}})
        await wait_until(lambda: len(streamed) >= 2, timeout=60)
        await asyncio.sleep(1.0)  # a duplicate would show up by now
    finally:
        stream.cancel()
        follower.cancel()

    assert [(m.sender, m.type, orjson.loads(m.content_json)) for m in streamed] == [
        (sender, "org.example.ping", {"n": 1}),
        (sender, "org.example.ping", {"n": 2}),
    ]
    assert all(m.origin == synapse.server_name and m.message_id for m in streamed)
    assert streamed[0].message_id != streamed[1].message_id

    # "*" reached the other device too; the inboxes hold each message once.
    other = await accounts.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=alice, device_id="ALICE2"), timeout=30
    )
    assert [orjson.loads(m.content_json) for m in other.messages] == [{"n": 2}]
    first = await accounts.QueryToDeviceMessages(
        accounts_pb2.QueryToDeviceMessagesRequest(user_id=alice, device_id="ALICE1"), timeout=30
    )
    assert [m.position for m in first.messages] == [1, 2]
