"""Fixtures for the doctor's tests: a CA, federation servers on loopback, a doctor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mxfed.config import Config
from mxfed.federation_client import StaticDnsResolver
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.keys.doctor.servicer import DoctorRpc
from services.keys.servicer import KeysServicer
from services.keys.storage import KeysStorage
from tests.support.federation_doctor import (
    US,
    DoctorUnderTest,
    FakeFederationServer,
    KnownDeliveries,
    KnownRooms,
)
from tests.support.grpc_plane import bind_loopback, make_server
from tests.support.pki import TestCa


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("doctor-pki"))


@pytest.fixture
async def federation_servers(
    test_ca: TestCa,
) -> AsyncIterator[Callable[..., Awaitable[FakeFederationServer]]]:
    started: list[FakeFederationServer] = []

    async def start(
        *cert_names: str, server_name: str = "fed.test", port_in_name: bool = False, **issue: Any
    ) -> FakeFederationServer:
        """A server with a certificate for ``cert_names`` (default: its name's host).

        With ``port_in_name`` its server name becomes ``server_name:<port>``.
        """
        server = FakeFederationServer(
            test_ca.issue(*(cert_names or (server_name,)), **issue), server_name
        )
        started.append(await server.start())
        if port_in_name:
            server.server_name = f"{server_name}:{server.port}"
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
def doctor_under_test(
    tmp_path: Path, test_ca: TestCa, keys_storage: KeysStorage
) -> DoctorUnderTest:
    config = Config(
        server_name=US,
        data_dir=tmp_path,
        federation_ca_file=test_ca.ca_file,
        federation_allowed_ip_ranges=["127.0.0.1/32"],
        federation_connect_timeout=5.0,
    )
    return DoctorUnderTest(
        config,
        keys_storage,
        StaticDnsResolver(hosts={"fed.test": ["127.0.0.1"]}),
        KnownDeliveries(),
        KnownRooms(),
    )


@dataclass
class DoctorService:
    address: str
    rpc: DoctorRpc
    under_test: DoctorUnderTest

    def reload(self) -> None:
        """Take changes made to ``under_test`` since the service started."""
        self.rpc.doctor = self.under_test.doctor()


@pytest.fixture
async def doctor_service(
    doctor_under_test: DoctorUnderTest, make_keys
) -> AsyncIterator[DoctorService]:
    """A keys service on a real gRPC port whose doctor is ``doctor_under_test``."""
    keys = make_keys()
    rpc = DoctorRpc(doctor_under_test.doctor())
    server = make_server("keys")
    keys_pb2_grpc.add_KeysServicer_to_server(KeysServicer(keys.keyring, keys.own_keys, rpc), server)
    address = bind_loopback(server, "keys")
    await server.start()
    yield DoctorService(address, rpc, doctor_under_test)
    await server.stop(grace=None)
