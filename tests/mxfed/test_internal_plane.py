"""The internal plane: mutual TLS on every gRPC connection, per-RPC authorization by the
caller's certificate, a deadline on every unary call, plaintext only when asked for."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from mxfed.config import PART_NAMES, Config
from mxfed.internal_access import access_for, listed_methods
from mxfed.internal_identity import OPERATOR, Caller, identity_directory, server_name_of
from mxfed.internal_pki import ensure
from mxfed.internal_plane import (
    InternalPlaneError,
    bind_port,
    new_server,
    open_channel,
)
from mxfed.protogen import proto_files
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from tests.support.grpc_plane import TEST_BOT, plane_config, session_tls_dir


class RecordingKeys(keys_pb2_grpc.KeysServicer):
    """Answers what it is asked, and counts the calls that reached it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay = delay

    async def QueryOwnServerKeys(self, request, context):  # noqa: N802
        self.calls.append("QueryOwnServerKeys")
        await asyncio.sleep(self.delay)
        return keys_pb2.QueryOwnServerKeysResponse(server_keys_json=b"{}")

    async def VerifyRequest(self, request, context):  # noqa: N802
        self.calls.append("VerifyRequest")
        return keys_pb2.VerifyRequestResponse(ok=True)

    async def PerformKeyRotation(self, request, context):  # noqa: N802
        self.calls.append("PerformKeyRotation")
        return keys_pb2.PerformKeyRotationResponse(new_key_id="ed25519:new")


class RecordingEvents(events_pb2_grpc.EventsServicer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def InputTransaction(self, request, context):  # noqa: N802
        self.calls.append("InputTransaction")
        return events_pb2.InputTransactionResponse()

    async def StreamEvents(self, request, context):  # noqa: N802
        self.calls.append("StreamEvents")
        yield events_pb2.StreamEventsResponse(position=1)


async def _serve(config: Config, part: str, *servicers: object) -> tuple[grpc.aio.Server, str]:
    server = new_server(config, part)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    for servicer in servicers:
        if isinstance(servicer, keys_pb2_grpc.KeysServicer):
            keys_pb2_grpc.add_KeysServicer_to_server(servicer, server)
        else:
            events_pb2_grpc.add_EventsServicer_to_server(servicer, server)
    port = bind_port(server, config, part, "127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def keys_server() -> AsyncIterator[tuple[RecordingKeys, str]]:
    servicer = RecordingKeys()
    server, address = await _serve(plane_config(), "keys", servicer)
    yield servicer, address
    await server.stop(None)


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


# Transport: who can connect at all ------------------------------------------------------


async def test_a_client_without_a_certificate_fails_at_the_handshake(keys_server) -> None:
    servicer, address = keys_server
    ca = (session_tls_dir() / "ca.crt").read_bytes()
    without_certificate = grpc.aio.secure_channel(
        address,
        grpc.ssl_channel_credentials(ca),
        options=[("grpc.ssl_target_name_override", server_name_of("keys"))],
    )
    async with without_certificate, grpc.aio.insecure_channel(address) as plaintext:
        for channel in (without_certificate, plaintext):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await keys_pb2_grpc.KeysStub(channel).QueryOwnServerKeys(
                    keys_pb2.QueryOwnServerKeysRequest(), timeout=5
                )
            # Refused by the transport: no status from a handler, which never ran.
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == []


async def test_a_certificate_from_another_ca_fails_at_the_handshake(
    keys_server, tmp_path: Path
) -> None:
    servicer, address = keys_server
    ensure(tmp_path, tmp_path / "ca.crt", tmp_path / "ca.key", [OPERATOR], "someone else's CA")
    stranger = Config(internal_tls_dir=tmp_path)
    async with open_channel(stranger, "keys", caller=OPERATOR, address=address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await keys_pb2_grpc.KeysStub(channel).QueryOwnServerKeys(
                keys_pb2.QueryOwnServerKeysRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == []


async def test_a_server_must_be_the_part_the_client_asked_for(keys_server) -> None:
    servicer, address = keys_server
    # The keys server's certificate does not name events.mxfed.internal.
    async with open_channel(plane_config(), "events", caller=OPERATOR, address=address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# Authorization: who may call what -----------------------------------------------------


async def test_each_rpc_is_authorized_by_the_callers_certificate(keys_server) -> None:
    servicer, address = keys_server
    config = plane_config()
    outcomes: dict[str, dict[str, str]] = {}
    for caller in (OPERATOR, TEST_BOT, Caller.part("gateway"), Caller.part("sender")):
        async with open_channel(config, "keys", caller=caller, address=address) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
            stub = keys_pb2_grpc.KeysStub(channel)
            results = {}
            for name, request in (
                ("QueryOwnServerKeys", keys_pb2.QueryOwnServerKeysRequest()),
                ("VerifyRequest", keys_pb2.VerifyRequestRequest()),
                ("PerformKeyRotation", keys_pb2.PerformKeyRotationRequest()),
            ):
                try:
                    await getattr(stub, name)(request, timeout=5)
                    results[name] = "ok"
                except grpc.aio.AioRpcError as exc:
                    results[name] = exc.code().name
                    assert exc.details() == f"{caller} may not call /mxfed.keys.v1.Keys/{name}"
            outcomes[str(caller)] = results
    denied = "PERMISSION_DENIED"
    assert outcomes == {
        "mxfed:operator": {
            "QueryOwnServerKeys": "ok",
            "VerifyRequest": denied,
            "PerformKeyRotation": "ok",
        },
        "mxfed:actor/test-bot": {
            "QueryOwnServerKeys": "ok",
            "VerifyRequest": denied,
            "PerformKeyRotation": denied,
        },
        "mxfed:part/gateway": {
            "QueryOwnServerKeys": "ok",
            "VerifyRequest": "ok",
            "PerformKeyRotation": denied,
        },
        "mxfed:part/sender": {
            "QueryOwnServerKeys": denied,
            "VerifyRequest": denied,
            "PerformKeyRotation": denied,
        },
    }
    # A denied call never reaches the servicer.
    assert servicer.calls == [
        "QueryOwnServerKeys",
        "PerformKeyRotation",
        "QueryOwnServerKeys",
        "QueryOwnServerKeys",
        "VerifyRequest",
    ]


async def test_an_actor_cannot_feed_federation_input_or_read_a_parts_stream_unasked() -> None:
    servicer = RecordingEvents()
    server, address = await _serve(plane_config(), "events", servicer)
    try:
        config = plane_config()
        async with open_channel(config, "events", caller=TEST_BOT, address=address) as channel:
            stub = events_pb2_grpc.EventsStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.InputTransaction(events_pb2.InputTransactionRequest(origin="x"))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # Streams are authorized too; actors may follow the event stream.
            items = [item async for item in stub.StreamEvents(events_pb2.StreamEventsRequest())]
            assert [item.position for item in items] == [1]
        sender = Caller.part("backfill")
        async with open_channel(config, "events", caller=sender, address=address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                async for _ in events_pb2_grpc.EventsStub(channel).StreamEvents(
                    events_pb2.StreamEventsRequest()
                ):
                    pass
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(None)
    assert servicer.calls == ["StreamEvents"]


def _proto_methods() -> set[str]:
    import re

    methods = set()
    for path in proto_files():
        text = path.read_text()
        package = re.search(r"^package ([\w.]+);", text, re.M)
        assert package is not None
        for service in re.finditer(r"^service (\w+) \{(.*?)^\}", text, re.M | re.S):
            for rpc in re.finditer(r"rpc (\w+)\(", service.group(2)):
                methods.add(f"/{package.group(1)}.{service.group(1)}/{rpc.group(1)}")
    return methods


def test_every_rpc_has_a_decision_and_no_actor_signs_or_feeds_input() -> None:
    methods = _proto_methods()
    # An RPC nobody listed is refused to everyone; list each one on purpose.
    assert methods - listed_methods() == set()
    assert (
        listed_methods()
        - methods
        - {
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        }
        == set()
    )
    for method in methods:
        name = method.rsplit("/", 1)[1]
        if name.startswith(("Input", "Sign")):
            assert not access_for(method).admits(TEST_BOT), method
    # Nothing signs on request (SignJson is gone): a signer signs only what it builds.
    assert not any(method.rsplit("/", 1)[1].startswith("Sign") for method in methods)
    assert not access_for("/mxfed.keys.v1.Keys/SignJson").admits(OPERATOR)


REPOSITORY = Path(__file__).resolve().parents[2]
PART_SOURCES = {
    "gateway": ["gateway"],
    "keys": ["services/keys", "services/accounts"],  # accounts_in_keys: keys hosts accounts
    "accounts": ["services/accounts"],
    "events": ["services/events"],
    "sender": ["services/sender"],
    "backfill": ["services/backfill"],
    "media": ["services/media"],
}


def test_each_part_may_call_what_its_code_calls() -> None:
    """Every RPC name a part's code calls on a stub is admitted for that part (for at least
    one service with a method of that name), and the CLI's for the operator."""
    import re

    methods = _proto_methods()
    by_name: dict[str, list[str]] = {}
    for method in methods:
        by_name.setdefault(method.rsplit("/", 1)[1], []).append(method)
    # stub.Method(...), or stub.Method passed on to be called later.
    call = re.compile(r"\w\)?\.(" + "|".join(sorted(by_name)) + r")(?=\s*[(,)\n])")
    sources = {**PART_SOURCES, "operator": ["mxfed/commands", "mxfed/client"]}
    refused = []
    calls = 0
    for who, directories in sources.items():
        caller = OPERATOR if who == "operator" else Caller.part(who)
        for directory in directories:
            for path in (REPOSITORY / directory).rglob("*.py"):
                if path.name.endswith(("servicer.py", "_pb2.py", "_pb2_grpc.py")):
                    continue  # a servicer defines the methods it serves
                for name in set(call.findall(path.read_text())):
                    calls += 1
                    if not any(access_for(m).admits(caller) for m in by_name[name]):
                        refused.append(f"{caller} calls {name} in {path.relative_to(REPOSITORY)}")
    assert refused == []
    assert calls > 60  # the scan sees the calls it checks


# Deadlines, plaintext, files -----------------------------------------------------------


async def test_a_unary_call_without_a_timeout_gets_the_default_deadline() -> None:
    config = plane_config().model_copy(update={"internal_call_timeout": 0.3})
    servicer = RecordingKeys(delay=30)
    server, address = await _serve(config, "keys", servicer)
    try:
        async with open_channel(config, "keys", caller=OPERATOR, address=address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await keys_pb2_grpc.KeysStub(channel).QueryOwnServerKeys(
                    keys_pb2.QueryOwnServerKeysRequest()
                )
    finally:
        await server.stop(None)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_plaintext_only_when_asked_and_said_loudly(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mxfed.internal_plane

    monkeypatch.setattr(mxfed.internal_plane, "_plaintext_announced", False)
    config = Config(internal_tls=False)
    with caplog.at_level(logging.WARNING, logger="mxfed.internal_plane"):
        server, address = await _serve(config, "keys", RecordingKeys())
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)
    assert "PLAINTEXT and UNAUTHENTICATED" in caplog.text


def test_a_missing_certificate_is_one_clear_error(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    with pytest.raises(InternalPlaneError) as missing:
        open_channel(config, "keys", caller=OPERATOR)
    assert "no internal TLS certificate for mxfed:operator" in missing.value.cause
    assert "mxfed init" in missing.value.fix
    assert missing.value.line().startswith("mxfed: cannot start: no internal TLS certificate")


def test_issued_identities_and_their_private_keys(tmp_path: Path) -> None:
    callers = [Caller.part(part) for part in PART_NAMES] + [OPERATOR, TEST_BOT]
    issued = ensure(tmp_path, tmp_path / "ca.crt", tmp_path / "ca.key", callers, "CA")
    assert issued == callers
    assert ensure(tmp_path, tmp_path / "ca.crt", tmp_path / "ca.key", callers, "CA") == []
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    for caller in callers:
        directory = identity_directory(tmp_path, caller)
        assert sorted(path.name for path in directory.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
        assert stat.S_IMODE(os.stat(directory / "tls.key").st_mode) == 0o600
        assert (directory / "ca.crt").read_bytes() == (tmp_path / "ca.crt").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["ca.crt", "ca.key", "operator", "actor-test-bot"] + [f"part-{p}" for p in PART_NAMES]
    )
