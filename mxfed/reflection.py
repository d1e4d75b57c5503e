"""gRPC server reflection on every part, so generic gRPC tools can list and call methods.

Each part serves ``grpc.reflection.v1alpha.ServerReflection`` (grpcio-reflection)
naming the services of its own API package (``mxfed_api/<part>/v1``, and those
of the packages it hosts: ``HOSTED_API_PACKAGES`` in :mod:`mxfed.config`, as
:mod:`mxfed.protogen` generates them from ``protos/``), the health service and
reflection itself. Reflection is on the internal plane like everything else:
a tool needs a certificate (an actor's from ``mxfed actors add``, or the
operator's) and the authorization table admits every caller to it, e.g.::

    grpcurl -cacert internal/ca.crt -cert internal/actor-NAME/tls.crt \\
        -key internal/actor-NAME/tls.key -authority events.mxfed.internal \\
        127.0.0.1:8101 list
"""

from __future__ import annotations

import importlib
import pkgutil

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from mxfed.config import HOSTED_API_PACKAGES

REFLECTION_SERVICE = reflection.SERVICE_NAME


def api_services(part: str) -> list[str]:
    """Full names of the services of the API packages ``part`` serves (none: no package)."""
    names: list[str] = []
    hosted = [package for package, host in HOSTED_API_PACKAGES.items() if host == part]
    for api in (part, *hosted):
        try:
            package = importlib.import_module(f"mxfed_api.{api}.v1")
        except ModuleNotFoundError:
            continue
        for module_info in pkgutil.iter_modules(package.__path__):
            if module_info.name.endswith("_pb2"):
                module = importlib.import_module(f"{package.__name__}.{module_info.name}")
                names.extend(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    return sorted(names)


def served_services(part: str) -> list[str]:
    """Every service a part's gRPC server serves, as reflection lists them."""
    return [*api_services(part), health.SERVICE_NAME, REFLECTION_SERVICE]


def enable_reflection(server: grpc.aio.Server, part: str) -> None:
    reflection.enable_server_reflection(served_services(part), server)
