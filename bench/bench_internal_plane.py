"""What mutual TLS on the internal plane costs on the hot path (not a test).

Runs two keys services as their own processes (``mxfed run --service keys``,
as in production) on a throw-away database, one with ``internal_tls: true``
and one with ``internal_tls: false``, and calls them from this process the
way the gateway does for every inbound federation request:
``Keys.VerifyRequest`` with a real X-Matrix signature of a remote server whose
key is cached after the first call; also a bare health check, for the
transport alone. One call at a time (latency-bound) and 32 in flight
(throughput-bound), the two servers measured alternately for several rounds.
Prints median calls/s, the ratio mTLS / plaintext, and the CPU time per call
on each side (steadier than rates on a shared machine).

    .venv/bin/python bench/bench_internal_plane.py [--seconds 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import psutil
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


@dataclass
class Sample:
    calls_per_second: float
    server_cpu_us: float  # the keys process's CPU time per call
    client_cpu_us: float  # this process's CPU time per call (the caller's side)


async def sample(
    call: Callable[[], Awaitable[Any]], server: psutil.Process, seconds: float, concurrency: int
) -> Sample:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await call()
            count += 1

    server_before = sum(server.cpu_times()[:2])
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    server_cpu = sum(server.cpu_times()[:2]) - server_before
    client_cpu = time.process_time() - client_before
    return Sample(count / elapsed, 1e6 * server_cpu / count, 1e6 * client_cpu / count)


def verify_request(origin: FakeKeyServer) -> keys_pb2.VerifyRequestRequest:
    uri = "/_matrix/federation/v1/send/bench"
    content = {"origin": origin.server_name, "pdus": []}
    header = sign_request(
        "PUT", uri, origin.server_name, OUR_SERVER, content, origin.signing_key, origin.key_id
    )
    credentials = parse_xmatrix_header(header)
    return keys_pb2.VerifyRequestRequest(
        method="PUT",
        uri=uri,
        origin=origin.server_name,
        destination=OUR_SERVER,
        content=orjson.dumps(content),
        signatures=[keys_pb2.RequestSignature(key_id=credentials.key, sig=credentials.sig)],
    )


@dataclass
class Target:
    tls: bool
    address: str
    process: subprocess.Popen
    gateway: grpc.aio.Channel | None = None
    operator: grpc.aio.Channel | None = None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="mTLS and plaintext alternately")
    args = parser.parse_args()
    database_url = await create_database("mxfed_bench_plane")
    results: dict[tuple[str, int, bool], list[Sample]] = {}
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
        held = [HeldPort(), HeldPort()]
        # Both keys processes up at once; measured alternately, so load from
        # elsewhere on the machine falls on both alike.
        targets = [
            Target(
                tls, f"127.0.0.1:{port.port}", start_keys(directory, database_url, port.port, tls)
            )
            for tls, port in zip((True, False), held, strict=True)
        ]
        try:
            request = verify_request(origin)
            for target in targets:
                config = Config(internal_tls=target.tls, internal_tls_dir=internal)
                target.gateway = open_channel(
                    config, "keys", caller=GATEWAY, address=target.address
                )
                target.operator = open_channel(
                    config, "keys", caller=OPERATOR, address=target.address
                )
                health = health_pb2_grpc.HealthStub(target.operator)
                for _ in range(300):  # until it serves
                    try:
                        await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)
                reply = await keys_pb2_grpc.KeysStub(target.gateway).VerifyRequest(request)
                assert reply.ok, reply.error  # fetched the origin's key; cached from now on
            for _ in range(args.rounds):
                for target in targets:
                    server = psutil.Process(target.process.pid)
                    keys = keys_pb2_grpc.KeysStub(target.gateway)
                    health = health_pb2_grpc.HealthStub(target.operator)

                    async def verify(keys: Any = keys) -> None:
                        await keys.VerifyRequest(request)

                    async def check(health: Any = health) -> None:
                        await health.Check(health_pb2.HealthCheckRequest())

                    for name, call in (("VerifyRequest", verify), ("health Check", check)):
                        for concurrency in (1, CONCURRENCY):
                            results.setdefault((name, concurrency, target.tls), []).append(
                                await sample(call, server, args.seconds, concurrency)
                            )
        finally:
            for target in targets:
                for channel in (target.gateway, target.operator):
                    if channel is not None:
                        await channel.close()
                target.process.terminate()
                target.process.wait(20)
            for port in held:
                port.release()
            await origin.stop()
            await drop_database(database_url)
    print(
        f"gRPC calls to the keys service (its own process), median of {args.rounds} rounds "
        f"of {args.seconds:.0f} s, mTLS and plaintext alternately; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"  {'call':14s} {'in flight':>9s} | {'calls/s mTLS':>12s} {'plain':>7s} "
        f"{'ratio':>5s} | {'server CPU µs/call mTLS':>23s} {'plain':>6s} | "
        f"{'client CPU µs mTLS':>18s} {'plain':>6s}"
    )
    for name in ("VerifyRequest", "health Check"):
        for concurrency in (1, CONCURRENCY):
            tls = results[(name, concurrency, True)]
            plain = results[(name, concurrency, False)]

            def median(samples: list[Sample], field: str) -> float:
                return statistics.median(getattr(sample, field) for sample in samples)

            rate_tls = median(tls, "calls_per_second")
            rate_plain = median(plain, "calls_per_second")
            print(
                f"  {name:14s} {concurrency:9d} | {rate_tls:12,.0f} {rate_plain:7,.0f} "
                f"{rate_tls / rate_plain:5.2f} | {median(tls, 'server_cpu_us'):23.0f} "
                f"{median(plain, 'server_cpu_us'):6.0f} | {median(tls, 'client_cpu_us'):18.0f} "
                f"{median(plain, 'client_cpu_us'):6.0f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
