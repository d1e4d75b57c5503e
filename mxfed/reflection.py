"""gRPC server reflection on every part, so generic gRPC tools can list and call methods.

Each part serves ``grpc.reflection.v1alpha.ServerReflection`` (grpcio-reflection)
naming the services of its own API package (``mxfed_api/<part>/v1``, and those
of the services its process hosts: ``Config.hosted_services``, accounts in the
keys process while ``accounts_in_keys`` is on, as
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
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

REFLECTION_SERVICE = reflection.SERVICE_NAME


def api_services(part: str, hosted: Sequence[str] = ()) -> list[str]:
    """Full names of the services of the API packages ``part`` serves, with those of the
    services its process ``hosted`` too (none: no package)."""
    names: list[str] = []
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


def served_services(part: str, hosted: Sequence[str] = ()) -> list[str]:
    """Every service a part's gRPC server serves, as reflection lists them."""
    return [*api_services(part, hosted), health.SERVICE_NAME, REFLECTION_SERVICE]


def enable_reflection(server: grpc.aio.Server, part: str, hosted: Sequence[str] = ()) -> None:
    reflection.enable_server_reflection(served_services(part, hosted), server)
