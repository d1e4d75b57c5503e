"""Every service answers the standard gRPC health check; `mxfed health` reports it."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxfed.internal_identity import Caller
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.mxfed_process import PARTS, MxfedProcess

pytestmark = pytest.mark.whole_stack


@pytest.fixture(scope="module")
def running_mxfed(tmp_path_factory: pytest.TempPathFactory):
    database_url = asyncio.run(create_database("mxfed_health"))
    process = MxfedProcess(tmp_path_factory.mktemp("health") / "data", database_url)
    try:
        process.start()
        yield process
    finally:
        process.stop()
        asyncio.run(drop_database(database_url))


@pytest.mark.parametrize("service", PARTS)
async def test_service_reports_serving(running_mxfed: MxfedProcess, service: str) -> None:
    async with running_mxfed.channel(service) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        named = await stub.Check(
            health_pb2.HealthCheckRequest(service=f"mxfed.{service}.v1"), timeout=5
        )
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert named.status == health_pb2.HealthCheckResponse.SERVING


def test_health_command_exit_codes(
    running_mxfed: MxfedProcess, tmp_path: Path, refused_port: int
) -> None:
    def health(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mxfed.cli", "health", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=running_mxfed.environment(),
        )

    # The certificates are where the config says (as in a part's container, where the
    # environment says); the health check is made over the internal plane too.
    config = ("--config", str(running_mxfed.config_path))
    ok = health(*config, "--service", "keys", "--address", running_mxfed.grpc_address("keys"))
    assert ok.returncode == 0 and ok.stdout == "keys: SERVING\n"
    down = health(*config, "--service", "keys", "--address", f"127.0.0.1:{refused_port}")
    assert down.returncode == 1 and down.stdout == "keys: UNAVAILABLE\n"

    gateway = health("--service", "gateway", "--config", str(running_mxfed.config_path))
    assert gateway.returncode == 0 and gateway.stdout == "gateway: SERVING\n"
    gone = health("--service", "gateway", "--address", f"127.0.0.1:{refused_port}")
    assert gone.returncode == 1 and gone.stdout == "gateway: UNAVAILABLE\n"

    every = health("--config", str(running_mxfed.config_path), "--json")
    assert every.returncode == 0
    assert [json.loads(line) for line in every.stdout.splitlines()] == [
        {"part": part, "status": "SERVING"} for part in (*PARTS, "gateway")
    ]


def test_metrics_are_served(running_mxfed: MxfedProcess) -> None:
    import urllib.request

    for part in (*PARTS, "gateway"):
        port = running_mxfed.metrics_ports[part]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"python_info" in response.read()


def _cli(running_mxfed: MxfedProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "--config", str(running_mxfed.config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_works_out_of_the_box(running_mxfed: MxfedProcess) -> None:
    # The first `mxfed run` made the operator's certificate; the CLI finds it, no flags.
    shown = _cli(running_mxfed, "keys", "show")
    assert shown.returncode == 0, shown.stderr + shown.stdout
    assert shown.stdout.startswith(f"server {running_mxfed.server_name}, published until ")
    destinations = _cli(running_mxfed, "destinations")
    assert destinations.returncode == 0, destinations.stderr + destinations.stdout


async def test_an_actor_certificate_from_actors_add_reaches_the_bot_surface_only(
    running_mxfed: MxfedProcess,
) -> None:
    added = _cli(running_mxfed, "actors", "add", "echo-bot")
    assert added.returncode == 0, added.stderr + added.stdout
    directory = running_mxfed.data_dir / "internal" / "actor-echo-bot"
    assert f"issued mxfed:actor/echo-bot: {directory}/" in added.stdout
    assert sorted(path.name for path in directory.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    again = _cli(running_mxfed, "actors", "add", "echo-bot")
    assert again.returncode == 1 and "already has a certificate" in again.stderr
    assert "mxfed:actor/echo-bot" in _cli(running_mxfed, "actors", "list").stdout

    bot = Caller.actor("echo-bot")
    async with running_mxfed.channel("events", caller=bot) as channel:
        events = events_pb2_grpc.EventsStub(channel)
        created = await events.PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(creator=f"@bot:{running_mxfed.server_name}"),
            timeout=30,
        )
        assert created.room_id.startswith("!")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await events.InputTransaction(
                events_pb2.InputTransactionRequest(origin="evil.example"), timeout=10
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with running_mxfed.channel("keys", caller=bot) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await keys_pb2_grpc.KeysStub(channel).PerformKeyRotation(
                keys_pb2.PerformKeyRotationRequest(), timeout=10
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("service", PARTS)
async def test_reflection_lists_every_service_of_every_part(
    running_mxfed: MxfedProcess, service: str
) -> None:
    """grpcio-reflection on every part: what a generic tool (grpcurl) sees, as an actor."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from mxfed.reflection import api_services

    added = _cli(running_mxfed, "actors", "add", "reflector")
    assert added.returncode == 0 or "already has a certificate" in added.stderr
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=api_services(service)[0]),
        # (the keys process also serves accounts while accounts_in_keys is on)
    ]
    async with running_mxfed.channel(service, caller=Caller.actor("reflector")) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = [answer async for answer in stub.ServerReflectionInfo(iter(requests))]
    listed = {s.name for s in answers[0].list_services_response.service}
    assert listed == {
        *api_services(service, running_mxfed.config().hosted_services(service)),
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert api_services(service), service
    # The descriptors come along, so a tool can build requests.
    assert answers[1].file_descriptor_response.file_descriptor_proto
