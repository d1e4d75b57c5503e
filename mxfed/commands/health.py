"""``mxfed health --service NAME``: exit 0 when that service reports SERVING.

Used by the compose healthchecks; it speaks the standard gRPC health protocol.
"""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mxfed.config import SERVICE_NAMES, Config
from mxfed.internal_plane import Caller, open_channel


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("health", help="check a service's gRPC health")
    parser.add_argument("--service", choices=SERVICE_NAMES, required=True)
    parser.add_argument("--address", help="host:port (default: the service's listen address)")
    parser.set_defaults(handler=check_health)


async def check_health(args: argparse.Namespace, config: Config) -> int:
    address = args.address or config.listen_address(args.service)
    async with open_channel(
        config, args.service, caller=Caller.part(args.service), address=address
    ) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
        except grpc.aio.AioRpcError as exc:
            print(f"{args.service}: {exc.code().name}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.service}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
