"""Device and to-device EDUs from /send: a keys process that can't be reached means "retry"."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from gateway.edu_routing import forward_device_edus
from gateway.errors import MatrixError
from tests.support.grpc_plane import GATEWAY, bind_loopback, channel_to, make_server

TO_DEVICE = {
    "edu_type": "m.direct_to_device",
    "content": {
        "sender": "@alice:remote.test",
        "type": "m.room_key",
        "message_id": "m1",
        "messages": {"@bob:here.test": {"DEVICE": {"k": "v"}}},
    },
}


def _request(channel: grpc.aio.Channel) -> SimpleNamespace:
    state = SimpleNamespace(
        config=SimpleNamespace(presence_enabled=False),
        services=SimpleNamespace(channel=lambda _name: channel),
    )
    return SimpleNamespace(app=SimpleNamespace(state=state))


async def test_unreachable_keys_process_asks_the_sender_to_retry(refused_port: int) -> None:
    # A real channel to a port nobody listens on: the call fails UNAVAILABLE.
    async with channel_to(f"127.0.0.1:{refused_port}", "keys", GATEWAY) as channel:
        with pytest.raises(MatrixError) as refused:
            await forward_device_edus(_request(channel), "remote.test", [TO_DEVICE])
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "5"}


class _RecordingServer(grpc.GenericRpcHandler):
    """Records the method of every call it receives (and answers UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        self.methods.append(handler_call_details.method)
        return None


async def test_transactions_without_keys_edus_make_no_call() -> None:
    recorder = _RecordingServer()
    server = make_server("keys")
    server.add_generic_rpc_handlers([recorder])
    address = bind_loopback(server, "keys")
    await server.start()
    try:
        async with channel_to(address, "keys", GATEWAY) as channel:
            typing = {"edu_type": "m.typing", "content": {}}
            await forward_device_edus(_request(channel), "remote.test", [typing, "junk"])
            assert recorder.methods == []
            # The same channel does carry a transaction that has a keys-process EDU.
            await forward_device_edus(_request(channel), "remote.test", [typing, TO_DEVICE])
            assert recorder.methods == ["/mxfed.accounts.v1.Accounts/InputDeviceListUpdates"]
    finally:
        await server.stop(None)
