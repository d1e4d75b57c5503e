"""``health_listen``: the plaintext health-only port that Kubernetes gRPC probes and
compose's grpc_health_probe use (they cannot present the internal plane's certificates)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxfed.startup import EXIT_FATAL
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from tests.support.mxfed_process import MxfedProcess
from tests.support.ports import HeldPort

GUARD = 30  # a hang guard, not a measure


@pytest.fixture
def mxfed(tmp_path: Path, own_database_url: str):
    process = MxfedProcess(tmp_path / "data", own_database_url)
    yield process
    process.stop()


async def _serving(address: str) -> health_pb2.HealthCheckResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="mxfed.keys.v1"),
            timeout=GUARD,
            wait_for_ready=True,
        )


async def _other_rpc(address: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await keys_pb2_grpc.KeysStub(channel).QueryOwnServerKeys(
                keys_pb2.QueryOwnServerKeysRequest(), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_a_part_alone_serves_its_health_in_plaintext_and_nothing_else(
    mxfed: MxfedProcess,
) -> None:
    held = HeldPort()
    mxfed.extra_config["health_listen"] = f"127.0.0.1:{held.port}"
    mxfed.write_config()
    environment = {**mxfed.environment(), "MXFED_CONFIG": str(mxfed.config_path)}
    # As in compose and Kubernetes: the certificates first, then the part alone.
    subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "init"], env=environment, check=True, timeout=GUARD
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "mxfed.cli", "run", "--service", "keys"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{held.port}"
        reply = asyncio.run(_serving(address))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Only the health protocol is there: the service's own RPCs need mutual TLS.
        assert asyncio.run(_other_rpc(address)) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=GUARD)
        assert process.returncode == 0, stderr.decode()[-2000:]
        held.release()


def test_several_services_cannot_share_one_health_port(mxfed: MxfedProcess) -> None:
    mxfed.extra_config["health_listen"] = "127.0.0.1:0"
    mxfed.write_config()
    outcome = subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "run", "--config", str(mxfed.config_path)],
        capture_output=True,
        text=True,
        timeout=GUARD,
        env=mxfed.environment(),
    )
    assert outcome.returncode == EXIT_FATAL
    assert "ready" not in outcome.stdout
    assert "health_listen (127.0.0.1:0) serves one service" in outcome.stderr
    assert "mxfed run --service NAME" in outcome.stderr
