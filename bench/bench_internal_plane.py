"""What mutual TLS on the internal plane costs on the hot path (not a test).

Runs the keys service as its own process (``mxfed run --service keys``, as in
production) on a throw-away database, once with ``internal_tls: true`` and
once with ``internal_tls: false``, and calls it from this process the way the
gateway does for every inbound federation request: ``Keys.VerifyRequest``
with a real X-Matrix signature of a remote server whose key is cached after
the first call. Also a bare health check, for the transport alone. Prints
calls/s one at a time (latency-bound) and with 32 in flight (throughput-bound),
and the ratio TLS / plaintext.

    .venv/bin/python bench/bench_internal_plane.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matrix_protocol.xmatrix import parse_xmatrix_header, sign_request  # noqa: E402
from mxfed.config import PART_NAMES, Config  # noqa: E402
from mxfed.internal_identity import OPERATOR, Caller  # noqa: E402
from mxfed.internal_pki import ensure  # noqa: E402
from mxfed.internal_plane import open_channel  # noqa: E402
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.key_servers import FakeKeyServer  # noqa: E402
from tests.support.ports import HeldPort  # noqa: E402

OUR_SERVER = "bench.example"
GATEWAY = Caller.part("gateway")
CONCURRENCY = 32


def start_keys(directory: Path, database_url: str, port: int, tls: bool) -> subprocess.Popen:
    config = directory / f"keys-{'tls' if tls else 'plain'}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server_name": OUR_SERVER,
                "data_dir": str(directory),
                "database_url": database_url,
                "keys_listen": f"127.0.0.1:{port}",
                "keys_metrics_listen": "127.0.0.1:0",
                "listen_reuse_port": True,
                "internal_tls": tls,
                "internal_tls_dir": str(directory / "internal"),
                "federation_verify_tls": False,
                "federation_allowed_ip_ranges": ["127.0.0.0/8"],
                "log_level": "WARNING",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
    return subprocess.Popen(
        [sys.executable, "-m", "mxfed.cli", "--config", str(config), "run", "--service", "keys"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def rate(call: Callable[[], Awaitable[Any]], seconds: float, concurrency: int) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await call()
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def measure(config: Config, address: str, origin: FakeKeyServer, seconds: float) -> dict:
    uri = "/_matrix/federation/v1/send/bench"
    body = b'{"origin":"x","pdus":[]}'
    header = sign_request(
        "PUT", uri, origin.server_name, OUR_SERVER, {"origin": "x", "pdus": []},
        origin.signing_key, origin.key_id,
    )  # fmt: skip
    credentials = parse_xmatrix_header(header)
    request = keys_pb2.VerifyRequestRequest(
        method="PUT",
        uri=uri,
        origin=origin.server_name,
        destination=OUR_SERVER,
        content=body,
        signatures=[keys_pb2.RequestSignature(key_id=credentials.key, sig=credentials.sig)],
    )
    results = {}
    async with (
        open_channel(config, "keys", caller=GATEWAY, address=address) as gateway,
        open_channel(config, "keys", caller=OPERATOR, address=address) as operator,
    ):
        keys = keys_pb2_grpc.KeysStub(gateway)
        health = health_pb2_grpc.HealthStub(operator)
        for _ in range(300):  # until it serves
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.1)
        reply = await keys.VerifyRequest(request)  # fetches the origin's key once
        assert reply.ok, reply.error

        async def verify() -> None:
            await keys.VerifyRequest(request)

        async def check() -> None:
            await health.Check(health_pb2.HealthCheckRequest())

        await rate(verify, 1.0, CONCURRENCY)  # warm-up
        for name, call in (("VerifyRequest", verify), ("health Check", check)):
            for concurrency in (1, CONCURRENCY):
                results[(name, concurrency)] = await rate(call, seconds, concurrency)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    database_url = await create_database("mxfed_bench_plane")
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        internal = directory / "internal"
        ensure(
            internal,
            internal / "ca.crt",
            internal / "ca.key",
            [Caller.part(part) for part in PART_NAMES] + [OPERATOR],
            "bench CA",
        )
        origin = await FakeKeyServer(directory).start()
        results = {}
        try:
            for tls in (True, False):
                held = HeldPort()
                process = start_keys(directory, database_url, held.port, tls)
                try:
                    config = Config(internal_tls=tls, internal_tls_dir=internal)
                    address = f"127.0.0.1:{held.port}"
                    results[tls] = await measure(config, address, origin, args.seconds)
                finally:
                    process.terminate()
                    process.wait(20)
                    held.release()
        finally:
            await origin.stop()
            await drop_database(database_url)
    print(f"gRPC calls/s to the keys service (its own process), {args.seconds:.0f} s each:")
    print(f"  {'call':16s} {'in flight':>9s} {'mTLS':>9s} {'plaintext':>9s} {'mTLS/plain':>10s}")
    for name, concurrency in results[True]:
        tls_rate = results[True][(name, concurrency)]
        plain_rate = results[False][(name, concurrency)]
        print(
            f"  {name:16s} {concurrency:9d} {tls_rate:9,.0f} {plain_rate:9,.0f} "
            f"{tls_rate / plain_rate:10.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
