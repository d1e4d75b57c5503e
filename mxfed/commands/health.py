"""``mxfed health --service NAME``: exit 0 when that part reports SERVING.

A service is asked with the standard gRPC health protocol; the gateway with
``GET /health`` over HTTPS on its federation port. ``--service all`` asks
every part in ``run``. Exit status 0 when every part asked is serving,
1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxfed.config import PART_NAMES, SERVICE_NAMES, Config
from mxfed.internal_identity import CERTIFICATE_FILE, identity_directory
from mxfed.internal_plane import OPERATOR, Caller, client_address, open_channel
from mxfed.probes import gateway_health

TIMEOUT = 3.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("health", help="check whether a part is serving")
    parser.add_argument("--service", choices=(*PART_NAMES, "all"), default="all")
    parser.add_argument(
        "--address", help="host:port to ask (default: the part's address from the config)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per part")
    parser.set_defaults(handler=check_health)


async def check_health(args: argparse.Namespace, config: Config) -> int:
    parts = list(config.run) if args.service == "all" else [args.service]
    if args.address and len(parts) != 1:
        print("mxfed health: --address needs --service NAME", file=sys.stderr)
        return 2
    statuses = await asyncio.gather(*(_status(config, part, args.address) for part in parts))
    for part, status in zip(parts, statuses, strict=True):
        if args.json:
            print(orjson.dumps({"part": part, "status": status}).decode())
        else:
            print(f"{part}: {status}")
    return 0 if all(status == "SERVING" for status in statuses) else 1


async def _status(config: Config, part: str, address: str | None) -> str:
    if part in SERVICE_NAMES:
        return await _service_status(config, part, address)
    return await _gateway_status(config, address)


def _caller(config: Config, service: str) -> Caller:
    """The operator where its certificate is (a workstation, compose's init container);
    in a part's own container, which holds only that part's certificate, the part."""
    operator = identity_directory(config.internal_tls_directory, OPERATOR)
    return OPERATOR if (operator / CERTIFICATE_FILE).exists() else Caller.part(service)


async def _service_status(config: Config, service: str, address: str | None) -> str:
    async with open_channel(
        config,
        service,
        caller=_caller(config, service),
        address=address or config.service_address(service),
    ) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _gateway_status(config: Config, address: str | None) -> str:
    host, _, port = client_address(address or config.gateway_listen).rpartition(":")
    return await gateway_health(host, int(port), TIMEOUT)
