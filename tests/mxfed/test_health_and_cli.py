"""Every service answers the standard gRPC health check; `mxfed health` reports it."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.databases import create_database, drop_database
from tests.support.mxfed_process import PARTS, MxfedProcess


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

    ok = health("--service", "keys", "--address", running_mxfed.grpc_address("keys"))
    assert ok.returncode == 0 and ok.stdout == "keys: SERVING\n"
    down = health("--service", "keys", "--address", f"127.0.0.1:{refused_port}")
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
